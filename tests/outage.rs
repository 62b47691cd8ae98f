//! Postgres going away: checks keep answering from the snapshot, writes answer 503 within
//! 5 s, /ready answers 503 and /health 200; when it comes back, so does everything else.
//! The outage is a TCP proxy between the server and Postgres that we cut.

mod common;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use common::proxy::{assert_database_unavailable, PgProxy};

/// A server reaching Postgres through a proxy the test can cut, with the demo catalog and a
/// company keyed `{"id": company}` on Pro.
async fn behind_proxy(company: &str) -> (common::TestDb, PgProxy, common::TestApp) {
    let db = common::fresh_database().await;
    let proxy = PgProxy::start().await;
    let app = common::spawn_on(&proxy.url(&db.url), "").await;
    let pro = app.seed_demo().await;
    app.create(
        "/companies",
        json!({"keys": {"id": company}, "base_plan_id": pro}),
    )
    .await;
    (db, proxy, app)
}

/// Restores Postgres; waits until a write (company `key`) goes through again, then `/ready`
/// must answer 200.
async fn comes_back(proxy: &PgProxy, app: &common::TestApp, key: &str) {
    proxy.restore();
    common::eventually(Duration::from_secs(10), || async {
        let (s, _) = app.post("/companies", json!({"keys": {"id": key}})).await;
        s.is_success().then_some(())
    })
    .await;
    let (s, _) = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn checks_survive_a_database_outage() {
    let (_db, proxy, app) = behind_proxy("o").await;
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
    assert_database_unavailable(s, &body, started);
    let (s, _) = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = app.send(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);

    // It comes back: writes work again and the listener catches up.
    comes_back(&proxy, &app, "back").await;
    app.stop().await;
}

/// While Postgres is known to be down (the database breaker open), writes and Stripe
/// webhooks answer 503 at once instead of after the pool's acquire timeout; `/ready` says so;
/// checks keep answering from the snapshot; after recovery the breaker closes and writes
/// succeed again.
#[tokio::test]
async fn writes_answer_503_at_once_while_postgres_is_known_down() {
    let (_db, proxy, app) = behind_proxy("b").await;
    // Metrics are per process (shared with the other outage test): count transitions.
    let opened = || async {
        let (_, text) = app.send(Method::GET, "/metrics", None, None).await;
        let text = text.as_str().unwrap().to_string();
        text.lines()
            .find(|l| l.starts_with("entitled_db_breaker_transitions_total{to=\"open\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no breaker transitions in /metrics:\n{text}"))
    };

    proxy.cut();
    app.pool.close().await;
    // The probe finds Postgres gone without any request waiting on the pool.
    common::eventually(Duration::from_secs(5), || async {
        let (s, _) = app.send(Method::GET, "/ready", None, None).await;
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(opened().await >= 1);

    let at_once = |path: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            let started = Instant::now();
            let (s, answer) = app.post(path, body).await;
            let took = started.elapsed();
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {answer}");
            assert!(
                answer["error"].as_str().unwrap().contains("database"),
                "{path}: {answer}"
            );
            assert!(took < Duration::from_secs(1), "{path} took {took:?}");
        }
    };
    at_once("/companies", json!({"keys": {"id": "during"}})).await;
    at_once(
        "/company-traits",
        json!({"keys": {"id": "b"}, "trait": "t", "incr": 1}),
    )
    .await;
    at_once(
        "/batch",
        json!({"events": [{"type": "track", "event": "e", "company": {"id": "b"}}]}),
    )
    .await;
    at_once(
        "/webhooks/stripe",
        json!({"id": "evt_1", "type": "customer.updated"}),
    )
    .await;
    // Checks answer from the snapshot, one flag or all of them.
    assert_eq!(
        app.check("custom-branding", json!({"id": "b"})).await["value"],
        true
    );
    let (s, all) = app
        .post(
            "/flags/check-bulk",
            json!({"contexts": [{"company": {"id": "b"}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(all["data"]["data"][0]["flags"].as_array().unwrap().len(), 9);

    // Postgres comes back: the probe closes the breaker and writes go through again.
    comes_back(&proxy, &app, "after").await;
    app.stop().await;
}
