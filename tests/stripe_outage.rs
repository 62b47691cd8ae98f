//! Postgres unreachable: a verified webhook answers 503 within 5 s (so Stripe retries),
//! never 2xx without storing and never 500; when Postgres is back, the redelivery is stored
//! and applied.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::proxy::{assert_database_unavailable, PgProxy};
use common::stripe as s;

#[tokio::test]
async fn webhooks_answer_503_while_postgres_is_down() {
    let db = common::fresh_database().await;
    let proxy = PgProxy::start().await;
    let app = common::spawn_on(
        &proxy.url(&db.url),
        &s::config("stripe_refetch_on_webhook = false"),
    )
    .await;
    let event = s::event(
        "customer.created",
        "evt_outage_1",
        s::now(),
        s::customer("cus_outage", "Outage", json!({})),
    );

    proxy.cut();
    let started = Instant::now();
    let (status, body) = app.webhook(&event).await;
    assert_database_unavailable(status, &body, started);

    // Back up: Stripe's redelivery is stored and applied.
    proxy.restore();
    common::eventually(Duration::from_secs(10), || async {
        let (status, _) = app.webhook(&event).await;
        status.is_success().then_some(())
    })
    .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    common::eventually(Duration::from_secs(10), || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = 'evt_outage_1'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        (status.as_deref() == Some("applied")).then_some(())
    })
    .await;
    pool.close().await;
    app.stop().await;
}
