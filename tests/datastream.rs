//! `GET /datastream` over a real WebSocket, as the SDKs speak it: start and stop, errors for
//! keys that match nothing, full then partial messages as the company changes, deletes,
//! usage as partial metric updates, the per-key connection limit, slow consumers dropped,
//! and the close on shutdown.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `entitled_checks_total` is one counter for the whole test binary: a test that asserts it did
/// not move holds this while it measures, and the other tests' REST checks wait for it.
static REST_CHECKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn seeded(extra: &str) -> common::TestApp {
    let app = common::spawn_app_with(extra).await;
    app.seed_demo_catalog().await;
    let _counted = REST_CHECKS.lock().await;
    app.wait_for_flag("sso").await;
    app
}

async fn connect_with(app: &common::TestApp, key: &str) -> Result<Ws, StatusCode> {
    let mut req = format!("ws://{}/datastream", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("X-Schematic-Api-Key", key.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Err(StatusCode::from_u16(resp.status().as_u16()).unwrap())
        }
        Err(e) => panic!("connect: {e}"),
    }
}

async fn connect(app: &common::TestApp) -> Ws {
    connect_with(app, &app.key).await.expect("upgraded")
}

async fn request(ws: &mut Ws, action: &str, entity_type: &str, keys: Option<Value>) {
    let mut data = json!({"action": action, "entity_type": entity_type});
    if let Some(k) = keys {
        data["keys"] = k;
    }
    ws.send(Message::text(json!({ "data": data }).to_string()))
        .await
        .unwrap();
}

/// Starts the company with `keys` and returns the answer.
async fn start_company(ws: &mut Ws, keys: Value) -> Value {
    request(ws, "start", "rulesengine.Company", Some(keys)).await;
    next(ws).await
}

/// An override turning `sso` on for the company `company_id`.
async fn override_sso(app: &common::TestApp, company_id: &str) {
    let sso = app.id_of("features", "sso").await;
    app.create(
        "/company-overrides",
        json!({"company_id": company_id, "feature_id": sso, "value_type": "boolean", "value_bool": true}),
    )
    .await;
}

/// Reads past whatever is still queued until the close frame (within ten seconds); its code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The next data message (pings skipped), within five seconds.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("connection open")
            .expect("valid frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

/// Company `acme` on the Pro plan; returns its id.
async fn acme(app: &common::TestApp) -> String {
    let pro = app.id_of("plans", "pro").await;
    let c = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "name": "Acme", "base_plan_id": pro, "traits": {"seats_used": 2}}),
        )
        .await;
    c["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn start_answers_flags_and_companies_and_errors_for_unknown_keys() {
    let app = seeded("").await;
    let acme_id = acme(&app).await;

    // No key, a wrong key: refused before the upgrade.
    assert_eq!(
        connect_with(&app, "sch_wrong").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    let mut ws = connect(&app).await;
    request(&mut ws, "start", "rulesengine.Flags", None).await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["entity_type"].clone(), m["message_type"].clone()),
        (json!("rulesengine.Flags"), json!("full"))
    );
    let flags = m["data"].as_array().unwrap();
    let keys: Vec<&str> = flags.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert!(
        keys.contains(&"sso") && keys.contains(&"api-calls"),
        "{keys:?}"
    );
    let api = flags.iter().find(|f| f["key"] == "api-calls").unwrap();
    let pro = app.id_of("plans", "pro").await;
    assert!(
        api["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule_type"] == "plan_entitlement"
                && r["conditions"][0]["resource_ids"] == json!([pro])),
        "{api}"
    );

    let m = start_company(&mut ws, json!({"id": "acme"})).await;
    assert_eq!(m["message_type"], "full");
    assert_eq!(m["entity_type"], "rulesengine.Company");
    assert_eq!(m["entity_id"], acme_id.as_str());
    assert_eq!(m["data"]["id"], acme_id.as_str());
    assert_eq!(m["data"]["keys"], json!({"id": "acme"}));
    assert_eq!(m["data"]["plan_ids"], json!([pro]));
    assert_eq!(m["data"]["base_plan_id"], pro.as_str());

    // Keys that match nothing: an error at once, carrying what was asked.
    let m = start_company(&mut ws, json!({"id": "nobody"})).await;
    assert_eq!(m["message_type"], "error");
    assert_eq!(m["data"]["keys"], json!({"id": "nobody"}));
    assert_eq!(m["data"]["entity_type"], "rulesengine.Company");
    assert!(m["data"]["error"].as_str().unwrap().contains("no company"));
    request(
        &mut ws,
        "start",
        "rulesengine.User",
        Some(json!({"email": "x@y"})),
    )
    .await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["message_type"].clone(), m["data"]["entity_type"].clone()),
        (json!("error"), json!("rulesengine.User"))
    );
    // A malformed request names what is wrong.
    ws.send(Message::text(
        "{\"data\": {\"action\": \"go\", \"entity_type\": \"rulesengine.Flags\"}}",
    ))
    .await
    .unwrap();
    let m = next(&mut ws).await;
    assert!(
        m["data"]["error"].as_str().unwrap().contains("action"),
        "{m}"
    );

    // After stop, the company's changes no longer come; the flags' still do.
    request(
        &mut ws,
        "stop",
        "rulesengine.Company",
        Some(json!({"id": "acme"})),
    )
    .await;
    override_sso(&app, &acme_id).await;
    let flag_id = app.id_of("flags", "sso").await;
    let (s, body) = app
        .put(&format!("/flags/{flag_id}"), json!({"default_value": true}))
        .await;
    assert!(s.is_success(), "{s} {body}");
    let m = next(&mut ws).await;
    assert_eq!(
        (m["entity_type"].clone(), m["message_type"].clone()),
        (json!("rulesengine.Flags"), json!("full")),
        "{m}"
    );
    let sso_flag = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "sso")
        .unwrap()
        .clone();
    assert_eq!(sso_flag["default_value"], true);
    app.stop().await;
}

#[tokio::test]
async fn changes_arrive_as_partials_and_deletes() {
    let app = seeded("").await;
    let acme_id = acme(&app).await;
    let mut ws = connect(&app).await;
    let full = start_company(&mut ws, json!({"id": "acme"})).await;
    assert_eq!(full["message_type"], "full");
    let overrides = |m: &Value| -> Vec<Value> {
        m["data"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["rule_type"] == "company_override")
            .cloned()
            .collect()
    };
    assert!(overrides(&full).is_empty(), "{full}");

    // An override: a partial carrying the company's rules.
    override_sso(&app, &acme_id).await;
    let m = next(&mut ws).await;
    assert_eq!(m["message_type"], "partial", "{m}");
    assert_eq!(m["entity_id"], acme_id.as_str());
    let rules = overrides(&m);
    assert_eq!(rules.len(), 1, "{m}");
    assert_eq!(rules[0]["rule_type"], "company_override");
    assert_eq!(rules[0]["value"], true);
    assert!(m["data"].get("keys").is_none(), "only what changed: {m}");

    // Usage from a track event: a partial with the metric's new value only.
    let (s, body) = app
        .post(
            "/events",
            json!({"event_type": "track", "body": {"event": "api_call", "company": {"id": "acme"}, "quantity": 3}}),
        )
        .await;
    assert!(s.is_success(), "{s} {body}");
    // (The usage may come with other fields' changes, never as a full message.)
    let m = next(&mut ws).await;
    assert_eq!(m["message_type"], "partial", "{m}");
    let metrics = m["data"]["metrics"].as_array().unwrap();
    assert!(
        metrics
            .iter()
            .all(|x| x["event_subtype"] == "api_call" && x["value"] == 3),
        "{m}"
    );
    assert!(!metrics.is_empty());
    assert!(m["data"].get("rules").is_none(), "{m}");

    // The company is deleted: a delete message with the company.
    let (s, _) = app.delete(&format!("/companies/{acme_id}")).await;
    assert!(s.is_success());
    let m = next(&mut ws).await;
    assert_eq!(m["message_type"], "delete", "{m}");
    assert_eq!(m["entity_id"], acme_id.as_str());
    assert_eq!(m["data"]["keys"], json!({"id": "acme"}));

    let text = app.metrics_text().await;
    // (Metrics are per process, shared by this file's tests.)
    let open: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("entitled_datastream_connections "))
        .and_then(|v| v.parse().ok())
        .expect("connections gauge");
    assert!(open >= 1, "{text}");
    assert!(
        text.contains("entitled_datastream_messages_total{type=\"partial\"}"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_keys_limit_are_refused_with_429() {
    let app = seeded("[datastream]\nmax_connections_per_key = 2\nsend_queue = 1024\n").await;
    let a = connect(&app).await;
    let mut b = connect(&app).await;
    assert_eq!(
        connect_with(&app, &app.key).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    // Another key has its own allowance.
    let other = common::create_api_key(&app.pool, "development").await;
    let _c = common::eventually(Duration::from_secs(2), || async {
        connect_with(&app, &other).await.ok()
    })
    .await;
    // A closed connection frees its slot.
    b.close(None).await.unwrap();
    while b.next().await.is_some() {}
    let _d = common::eventually(Duration::from_secs(2), || async {
        connect_with(&app, &app.key).await.ok()
    })
    .await;
    drop(a);
    app.stop().await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_closed_with_1008() {
    let app = seeded("[datastream]\nmax_connections_per_key = 10\nsend_queue = 2\n").await;
    acme(&app).await;
    let mut ws = connect(&app).await;
    // Ask for far more than the socket and a two-message queue hold, reading nothing.
    for _ in 0..400 {
        request(&mut ws, "start", "rulesengine.Flags", None).await;
    }
    let drops = || async {
        app.metrics_text()
            .await
            .lines()
            .any(|l| l == "entitled_datastream_drops_total{reason=\"slow_consumer\"} 1")
            .then_some(())
    };
    common::eventually(Duration::from_secs(10), drops).await;
    // Reading now, the consumer finds what was sent, then the close.
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    app.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let app = seeded("").await;
    let mut ws = connect(&app).await;
    request(&mut ws, "start", "rulesengine.Flags", None).await;
    assert_eq!(next(&mut ws).await["message_type"], "full");
    let stopping = tokio::spawn(app.stop());
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops once its connections are closed")
        .unwrap();
}

/// The SDKs report local evaluations as `flag_check` events on `/batch`: counted in the
/// insights' check figures and `entitled_sdk_flag_checks_total`, not as checks this server
/// answered, no usage; a mixed batch keeps its track events.
#[tokio::test]
async fn batch_accepts_flag_check_events_beside_track_events() {
    let app = seeded("[insights]\ncheck_flush_secs = 1\n").await;
    acme(&app).await;
    let counted = REST_CHECKS.lock().await;
    let (answered, reported) = (
        app.metric_sum("entitled_checks_total{").await,
        app.metric_sum("entitled_sdk_flag_checks_total").await,
    );
    let check = |value: bool| {
        json!({"type": "flag_check", "body": {"flag_key": "audit-log", "value": value, "reason": "local",
               "company_id": null, "req_company": {"id": "acme"}}})
    };
    let (s, body) = app
        .post(
            "/batch",
            json!({"events": [
                check(true),
                {"type": "track", "body": {"event": "report_generated", "company": {"id": "acme"}, "quantity": 2}},
                check(false),
                check(false),
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["events"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    assert_eq!(
        app.metric_sum("entitled_sdk_flag_checks_total").await - reported,
        3
    );
    assert_eq!(
        app.metric_sum("entitled_checks_total{").await,
        answered,
        "not checks this server answered"
    );
    drop(counted);
    // The track event counted usage.
    let c = app.check("reports", json!({"id": "acme"})).await;
    assert_eq!(c["feature_usage"], 2, "{c}");
    // Insights count the reported checks once flushed.
    let d = common::eventually(Duration::from_secs(10), || async {
        let (_, body) = app.get("/insights/top-features?by=checks&limit=5").await;
        let f = body["data"]["features"].as_array()?.clone();
        let audit = f.into_iter().find(|x| x["feature_key"] == "audit-log")?;
        (audit["checks"] == 3).then_some(audit)
    })
    .await;
    assert_eq!(d["allowed_checks"], 1, "{d}");
    // A flag_check naming no flag is refused, naming the field; nothing of the batch applies.
    let (s, body) = app
        .post(
            "/batch",
            json!({"events": [{"type": "flag_check", "body": {"value": true}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("events[0].body.flag_key"),
        "{body}"
    );
    app.stop().await;
}

/// A change committed on one replica reaches the connections of another (LISTEN/NOTIFY)
/// within a second; an override that expires is withdrawn at its expiration, no write needed.
#[tokio::test]
async fn other_replicas_push_and_expiry_needs_no_write() {
    let a = seeded("").await;
    let acme_id = acme(&a).await;
    let b = common::spawn_on(&a.db_url, "").await;
    let mut ws = connect(&b).await;
    assert_eq!(
        start_company(&mut ws, json!({"id": "acme"})).await["message_type"],
        "full"
    );

    let sso = a.id_of("features", "sso").await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let started = std::time::Instant::now();
    a.create(
        "/company-overrides",
        json!({"company_id": acme_id, "feature_id": sso, "value_type": "boolean", "value_bool": true,
               "expiration_date": expires.to_rfc3339()}),
    )
    .await;
    let m = next(&mut ws).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(m["message_type"], "partial", "{m}");
    let has_override = |m: &Value| {
        m["data"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule_type"] == "company_override")
    };
    assert!(has_override(&m), "{m}");

    // Nothing is written at the expiration; the timer withdraws the rule.
    let m = next(&mut ws).await;
    let late = chrono::Utc::now() - expires;
    assert!(!has_override(&m), "{m}");
    assert!(
        late >= chrono::Duration::zero() && late < chrono::Duration::seconds(1),
        "withdrawn {late:?} after the expiration"
    );
    b.stop().await;
    a.stop().await;
}
