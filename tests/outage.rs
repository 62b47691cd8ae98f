//! Postgres going away: checks keep answering from the snapshot, writes answer 503 within
//! 5 s, /ready answers 503 and /health 200; when it comes back, so does everything else.
//! The outage is a TCP proxy between the server and Postgres that we cut.

mod common;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use common::proxy::PgProxy;

#[tokio::test]
async fn checks_survive_a_database_outage() {
    let db = common::fresh_database().await;
    let proxy = PgProxy::start().await;
    let app = common::spawn_on(&proxy.url(&db.url), "").await;
    entitled::seed::seed_file(
        &app.pool,
        std::path::Path::new("fixtures/demo-catalog.toml"),
    )
    .await
    .unwrap();
    let pro: String = sqlx::query_scalar("SELECT id FROM plans WHERE key = 'pro'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    common::eventually(Duration::from_secs(2), || async {
        let (s, _) = app.post("/flags/custom-branding/check", json!({})).await;
        s.is_success().then_some(())
    })
    .await;
    app.create(
        "/companies",
        json!({"keys": {"id": "o"}, "base_plan_id": pro}),
    )
    .await;
    assert_eq!(
        app.check("custom-branding", json!({"id": "o"})).await["value"],
        true
    );

    // Postgres goes away.
    proxy.cut();
    app.pool.close().await; // the test's own pool goes through the proxy too

    // Checks keep answering from the snapshot.
    for _ in 0..20 {
        let c = app.check("custom-branding", json!({"id": "o"})).await;
        assert_eq!(c["value"], true);
    }
    // Writes answer 503 within 5 s, with our error body.
    let started = Instant::now();
    let (s, body) = app.post("/companies", json!({"keys": {"id": "new"}})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let (s, _) = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = app.send(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);

    // It comes back: writes work again and the listener catches up.
    proxy.restore();
    common::eventually(Duration::from_secs(10), || async {
        let (s, _) = app
            .post("/companies", json!({"keys": {"id": "back"}}))
            .await;
        s.is_success().then_some(())
    })
    .await;
    let (s, _) = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK);
    app.stop().await;
}
