//! Operability: `/metrics` in the Prometheus text format with per-route latency, checks,
//! events, pool use and the hooks other subsystems record into; JSON logs where every line
//! of a request carries its span with the route and the key's environment.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn metrics(app: &common::TestApp) -> String {
    let resp = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

/// The value of the sample line starting with `series ` (the series with its labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_cover_requests_checks_events_the_pool_and_the_hooks() {
    // Logs as `log.format = "json"` writes them, captured for the assertions below.
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("info")
        .with_writer(logs.clone())
        .init();

    let app = common::spawn_app().await;
    let route =
        "entitled_http_request_duration_seconds_count{method=\"POST\",route=\"/companies\"}";
    let before = sample(&metrics(&app).await, route).unwrap_or(0.0);
    app.create("/companies", json!({"keys": {"id": "m1"}, "name": "M"}))
        .await;
    app.create(
        "/events",
        json!({"event_type": "track", "body": {"event": "e", "company": {"id": "m1"}}}),
    )
    .await;
    let (status, _) = app
        .post("/flags/nope/check", json!({"company": {"id": "m1"}}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let text = metrics(&app).await;
    assert!(sample(&text, route).unwrap() >= before + 1.0, "{text}");
    assert!(
        text.contains("entitled_http_request_duration_seconds_bucket{method=\"POST\",route=\"/companies\",le=\"+Inf\"}"),
        "{text}"
    );
    assert!(sample(&text, "entitled_checks_total{outcome=\"not_found\"}").unwrap() >= 1.0);
    assert!(sample(&text, "entitled_events_ingested_total").unwrap() >= 1.0);
    assert!(sample(&text, "entitled_writes_total{resource=\"companies\"}").unwrap() >= 1.0);
    let max = sample(&text, "entitled_db_pool_max").unwrap();
    let open = sample(&text, "entitled_db_pool_connections").unwrap();
    let in_use = sample(&text, "entitled_db_pool_in_use").unwrap();
    assert_eq!(max, 5.0, "the test pool's size");
    assert!(open <= max && in_use <= open, "{text}");
    for family in [
        "entitled_check_duration_seconds histogram",
        "entitled_stripe_webhook_deliveries_total counter",
        "entitled_stripe_inbox_events gauge",
        "entitled_job_runs_total counter",
        "entitled_job_duration_seconds histogram",
        "entitled_stripe_api_requests_total counter",
        "entitled_insights_check_flushes_total counter",
        "entitled_db_unavailable_total counter",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family}: {text}"
        );
    }

    // The hooks render what their callers record.
    entitled::metrics::record_job_run("expire_overrides", "ok", 0.004);
    let text = metrics(&app).await;
    for line in [
        "entitled_job_runs_total{job=\"expire_overrides\",outcome=\"ok\"} 1",
        "entitled_job_duration_seconds_count{job=\"expire_overrides\",outcome=\"ok\"} 1",
        "entitled_stripe_inbox_events{status=\"failed\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}: {text}");
    }

    // Every log line of a request carries the request span: method, route and environment.
    let lines: Vec<Value> = String::from_utf8(logs.0.lock().unwrap().clone())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let upserted = lines
        .iter()
        .find(|l| l["message"] == "company upserted")
        .unwrap_or_else(|| panic!("no upsert log line in {lines:?}"));
    let request = &upserted["spans"][0];
    assert_eq!(request["name"], "request", "{upserted}");
    assert_eq!(request["method"], "POST", "{upserted}");
    assert_eq!(request["route"], "/companies", "{upserted}");
    assert_eq!(request["env"], "development", "{upserted}");
}

#[tokio::test]
async fn operations_routes_need_no_key() {
    let app = common::spawn_app().await;
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let (status, _) = app.send(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

/// What schemathesis found: NUL characters, which Postgres text and jsonb cannot hold, got
/// 500s from the query string, the path and JSON bodies. They are 400s now.
#[tokio::test]
async fn nul_characters_are_client_errors() {
    let app = common::spawn_app().await;
    let (status, body) = app.get("/companies?plan_ids=a%00b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"],
        "query parameter plan_ids: must not contain NUL (%00) characters"
    );
    let (status, body) = app.get("/flags/flag_%00").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for body in [
        json!({"keys": {"id": "a\u{0}b"}}),
        json!({"keys": {"id": "ok"}, "traits": {"t": "x\u{0}"}}),
    ] {
        let (status, resp) = app.post("/companies", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {resp}");
        assert!(resp["error"].as_str().unwrap().contains("NUL"), "{resp}");
    }
    let (status, resp) = app
        .post(
            "/company-traits",
            json!({"keys": {"id": "ok"}, "trait": "t", "set": "\u{0}"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
}
