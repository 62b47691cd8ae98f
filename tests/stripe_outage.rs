//! Postgres unreachable: a verified webhook answers 503 within 5 s (so Stripe retries),
//! never 2xx without storing and never 500; when Postgres is back, the redelivery is stored
//! and applied.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::stripe as s;

/// Forwards connections to Postgres while `up`; a cut drops every open connection.
async fn proxy(up: Arc<AtomicBool>, cut: watch::Receiver<u64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if !up.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let mut cut = cut.clone();
            cut.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn webhooks_answer_503_while_postgres_is_down() {
    let (db_url, db_name) = common::fresh_database().await;
    let up = Arc::new(AtomicBool::new(true));
    let (cut_tx, cut_rx) = watch::channel(0u64);
    let port = proxy(up.clone(), cut_rx).await;
    let proxied = db_url.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    assert_ne!(
        proxied, db_url,
        "test database URL must point at 127.0.0.1:5432"
    );
    let app = common::spawn_on(&proxied, &s::config("stripe_refetch_on_webhook = false")).await;
    let event = s::event(
        "customer.created",
        "evt_outage_1",
        s::now(),
        s::customer("cus_outage", "Outage", json!({})),
    );

    up.store(false, Ordering::SeqCst);
    cut_tx.send(1).unwrap();
    let started = Instant::now();
    let (status, body) = app.webhook(&event).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );

    // Back up: Stripe's redelivery is stored and applied.
    up.store(true, Ordering::SeqCst);
    common::eventually(Duration::from_secs(10), || async {
        let (status, _) = app.webhook(&event).await;
        status.is_success().then_some(())
    })
    .await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
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
    common::drop_database(db_name);
}
