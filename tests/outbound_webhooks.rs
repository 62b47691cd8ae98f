//! Outbound webhooks end to end: endpoints managed with the official Python SDK, deliveries
//! verified with the official libraries (schematichq and standardwebhooks), retries through
//! refused connections and 500s, a SIGKILL of the real binary mid-delivery, two replicas on
//! one outbox, bad input, secret rotation and 410 Gone. Every receiver is a real HTTP server
//! (`common::receiver`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use entitled::changes::{Change, Publisher};
use entitled::jobs::Job;
use entitled::outbound::Event;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::receiver::{self, Receiver};
use common::{eventually, TestApp};

/// Loopback receivers allowed, and a retry every second (instead of 5 s, 5 min, …).
const FAST_RETRIES: &str = "[webhooks]
allow_private_targets = true
retry_schedule_secs = [1, 1, 1, 1, 1, 1, 1, 1, 1]
";

const WAIT: Duration = Duration::from_secs(30);

async fn create_webhook(app: &TestApp, url: &str, types: &[&str]) -> Value {
    app.create(
        "/webhooks",
        json!({"name": "Receiver", "url": url, "request_types": types}),
    )
    .await
}

/// The endpoint's messages, as `GET /webhook-events` lists them.
async fn events_of(app: &TestApp, webhook_id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!(
            "/webhook-events?webhook_id={webhook_id}&limit=100"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Waits until the endpoint has `n` messages and all of them are `success`.
async fn all_succeeded(app: &TestApp, webhook_id: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let events = events_of(app, webhook_id).await;
        if events.len() == n && events.iter().all(|e| e["status"] == "success") {
            return events;
        }
        if std::time::Instant::now() >= deadline {
            let states: Vec<String> = events
                .iter()
                .map(|e| format!("{} after {} attempts", e["status"], e["attempt_count"]))
                .collect();
            panic!("not {n} messages delivered within {within:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// Every result verified under the secrets expected to verify, and failed under the others.
fn assert_verified(results: &[Value], schematic: &[bool], standard: &[bool]) {
    for r in results {
        assert_eq!(r["schematic"], json!(schematic), "{r}");
        assert_eq!(r["standard"], json!(standard), "{r}");
    }
}

/// Plan changes and overrides (and the SDK's test message) reach an endpoint made with the
/// Python SDK, each once, with Schematic's shapes, and every delivery verifies with both
/// official libraries.
#[tokio::test]
async fn sdk_endpoint_gets_plan_and_override_events_verified_by_both_libraries() {
    let app = common::spawn_app_with(&format!(
        "{FAST_RETRIES}[schedule]\nexpire_overrides = \"\"\n"
    ))
    .await;
    app.seed_demo_catalog().await;
    let receiver = Receiver::start().await;

    let made = common::python::json(
        "tests/sdk/python_webhooks.py",
        vec![
            app.base.clone(),
            app.key.clone(),
            "create".into(),
            receiver.url.clone(),
        ],
    )
    .await;
    let (webhook_id, secret) = (str_of(&made["id"]), str_of(&made["secret"]));

    let pro = app.id_of("plans", "pro").await;
    let sso = app.id_of("features", "sso").await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "name": "Acme"}),
        )
        .await;
    let company_id = str_of(&company["id"]);
    let moved = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "base_plan_id": pro}),
        )
        .await;
    assert_eq!(moved["plan"]["id"], json!(pro), "{moved}");
    let expires = Utc::now() + chrono::Duration::seconds(1);
    let ov = app
        .create(
            "/company-overrides",
            json!({"company_id": company_id, "feature_id": sso, "value_type": "boolean",
                   "value_bool": true, "expiration_date": expires.to_rfc3339()}),
        )
        .await;
    let override_id = str_of(&ov["id"]);
    // The expiry job, run as the scheduler would once the expiration date has passed.
    let (state, _listener) = entitled::app::build_state(app.config.clone())
        .await
        .unwrap();
    let ctx = state.job_context(tokio_util::sync::CancellationToken::new());
    let after = expires + chrono::Duration::milliseconds(1);
    let ran = Job::ExpireOverrides.run_once(&ctx, after).await.unwrap();
    assert_eq!(ran["expired"], 1);

    let expected = [
        "test.send",
        "company.created",
        "company.plan_changed",
        "company.override.created",
        "company.override.expired",
    ];
    all_succeeded(&app, &webhook_id, expected.len(), WAIT).await;
    let deliveries = receiver.deliveries();
    let mut types: Vec<String> = deliveries
        .iter()
        .map(|d| str_of(&d.json()["type"]))
        .collect();
    types.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(types, want, "each event exactly once");

    // Bodies: Schematic's envelope; `webhook-id` is the body's id.
    let mut by_type = HashMap::new();
    for d in &deliveries {
        let body = d.json();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut keys = keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            ["created_at", "data", "environment", "id", "type"],
            "{body}"
        );
        assert_eq!(d.header("webhook-id"), body["id"].as_str(), "{body}");
        assert!(str_of(&body["id"]).starts_with("msg_"), "{body}");
        assert_eq!(body["environment"], "development");
        assert!(
            chrono::DateTime::parse_from_rfc3339(&str_of(&body["created_at"])).is_ok(),
            "{body}"
        );
        assert_eq!(d.header("content-type"), Some("application/json"));
        by_type.insert(str_of(&body["type"]), body);
    }
    assert_eq!(
        by_type["test.send"]["data"],
        json!({"webhook_id": webhook_id, "request_type": "company.plan_changed"})
    );
    assert_eq!(by_type["company.created"]["data"]["id"], json!(company_id));
    let changed = &by_type["company.plan_changed"]["data"];
    assert_eq!(changed["plan"]["id"], json!(pro), "{changed}");
    assert_eq!(changed["previous_plan"], Value::Null, "{changed}");
    assert_eq!(changed["company"]["id"], json!(company_id), "{changed}");
    let created = &by_type["company.override.created"]["data"];
    assert_eq!(created["id"], json!(override_id), "{created}");
    assert_eq!(created["feature_id"], json!(sso), "{created}");
    let expired = &by_type["company.override.expired"]["data"];
    assert_eq!(expired["id"], json!(override_id), "{expired}");
    assert!(expired["expired_at"].is_string(), "{expired}");

    // Signatures: both libraries accept the endpoint's secret and refuse another.
    let other = entitled::outbound::sign::new_secret();
    let results =
        receiver::verify_in_python(&deliveries, &[&secret, &other], &[&secret, &other]).await;
    assert_verified(&results, &[true, false], &[true, false]);

    // The SDK's view of the messages: delivered once each, bodies as sent.
    let listed = common::python::json(
        "tests/sdk/python_webhooks.py",
        vec![
            app.base.clone(),
            app.key.clone(),
            "events".into(),
            webhook_id.clone(),
        ],
    )
    .await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), expected.len(), "{listed:?}");
    for e in listed {
        assert_eq!(e["status"], "success", "{e}");
        assert_eq!(e["attempt_count"], 1, "{e}");
        assert_eq!(e["response_code"], 200, "{e}");
        assert_eq!(e["sent"], true, "{e}");
        let payload = str_of(&e["payload"]);
        assert!(
            deliveries.iter().any(|d| d.body == payload.as_bytes()),
            "the payload listed is the body sent: {payload}"
        );
    }
    assert_eq!(receiver.deliveries().len(), expected.len());
}

/// A receiver that refuses connections during a burst of 30 messages, then answers 500 three
/// times, then 200: every message arrives (the outage does not get the endpoint disabled),
/// with the same id and body on every attempt, spaced by the retry schedule, and the API
/// shows each attempt as the receiver saw it.
#[tokio::test]
async fn refused_connections_and_500s_are_retried_until_delivered() {
    const EVENTS: usize = 30;
    let app = common::spawn_app_with(FAST_RETRIES).await;
    let receiver = Receiver::reserve();
    let hook = create_webhook(&app, &receiver.url, &["company.created"]).await;
    let webhook_id = str_of(&hook["id"]);
    for i in 0..EVENTS {
        app.create("/companies", json!({"keys": {"id": format!("retry-{i}")}}))
            .await;
    }
    // Every message tried at least twice against the closed port.
    eventually(WAIT, || async {
        let events = events_of(&app, &webhook_id).await;
        (events.len() == EVENTS
            && events
                .iter()
                .all(|e| e["attempt_count"].as_i64() >= Some(2)))
        .then_some(())
    })
    .await;
    assert!(receiver.deliveries().is_empty());
    receiver.answer_next(&[500, 500, 500]);
    receiver.open();

    let events = all_succeeded(&app, &webhook_id, EVENTS, WAIT).await;
    let (_, endpoint) = app.get(&format!("/webhooks/{webhook_id}")).await;
    assert_eq!(endpoint["data"]["status"], "active", "{endpoint}");
    let deliveries = receiver.deliveries();
    let statuses: Vec<u16> = deliveries.iter().map(|d| d.status).collect();
    assert_eq!(&statuses[..3], &[500, 500, 500], "{statuses:?}");
    let mut seen: BTreeMap<String, Vec<&receiver::Delivery>> = BTreeMap::new();
    for d in &deliveries {
        seen.entry(d.webhook_id.clone()).or_default().push(d);
    }
    assert_eq!(seen.len(), EVENTS, "every message arrived");
    for e in &events {
        let message_id = str_of(&e["message_id"]);
        let got = &seen[&message_id];
        // Same body on every attempt, a second apart (±20%) at least.
        assert!(got.iter().all(|d| d.body == got[0].body));
        assert_eq!(got[0].json()["id"], json!(message_id));
        for pair in got.windows(2) {
            let gap = pair[1].arrived - pair[0].arrived;
            assert!(gap >= Duration::from_millis(750), "retried after {gap:?}");
        }
        assert_eq!(got.last().unwrap().status, 200);

        let (status, detail) = app
            .get(&format!("/webhook-events/{}", str_of(&e["id"])))
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        let detail = &detail["data"];
        let attempts = detail["attempts"].as_array().unwrap();
        let refused = attempts
            .iter()
            .take_while(|a| a["response_code"].is_null())
            .count();
        assert!(refused >= 2, "{detail}");
        for a in &attempts[..refused] {
            assert_eq!(a["succeeded"], false);
            assert!(
                str_of(&a["error"]).contains("connect"),
                "a refused attempt says so: {a}"
            );
        }
        let codes: Vec<Value> = attempts[refused..]
            .iter()
            .map(|a| a["response_code"].clone())
            .collect();
        let received: Vec<Value> = got.iter().map(|d| json!(d.status)).collect();
        assert_eq!(codes, received, "{detail}");
        assert_eq!(detail["attempt_count"], json!(attempts.len()), "{detail}");
        assert_eq!(e["attempt_count"], json!(refused + got.len()), "{e}");
        assert_eq!(detail["status"], "success");
        assert_eq!(detail["response_code"], 200);
        assert_eq!(detail["webhook"]["id"], json!(webhook_id));
        assert_eq!(attempts.last().unwrap()["succeeded"], true);
    }
    let (_, pending) = app
        .get(&format!(
            "/webhook-events/count?webhook_id={webhook_id}&status=pending"
        ))
        .await;
    assert_eq!(pending["data"]["count"], 0, "{pending}");
}

/// An endpoint that has accepted nothing for a day while its attempts keep failing is
/// disabled, and its pending messages are given up; a fresh one failing as much is not.
#[tokio::test]
async fn a_day_without_an_accepted_delivery_disables_the_endpoint() {
    let app = common::spawn_app_with(FAST_RETRIES).await;
    let receiver = Receiver::reserve(); // never opened: every attempt is refused
    let hook = create_webhook(&app, &receiver.url, &["company.created"]).await;
    let id = str_of(&hook["id"]);
    for i in 0..26 {
        app.create("/companies", json!({"keys": {"id": format!("down-{i}")}}))
            .await;
    }
    let attempts = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM webhook_attempts WHERE webhook_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    eventually(WAIT, || async { (attempts().await >= 26).then_some(()) }).await;
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(got["data"]["status"], "active", "a young outage: {got}");

    // As if the endpoint had been failing since yesterday: its next failure disables it.
    sqlx::query("UPDATE webhooks SET updated_at = now() - interval '25 hours' WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let disabled = eventually(WAIT, || async {
        let (_, got) = app.get(&format!("/webhooks/{id}")).await;
        (got["data"]["status"] == "inactive").then(|| got["data"].clone())
    })
    .await;
    assert!(
        str_of(&disabled["disabled_reason"]).contains("24 hours"),
        "{disabled}"
    );
    let (_, pending) = app
        .get(&format!(
            "/webhook-events/count?webhook_id={id}&status=pending"
        ))
        .await;
    assert_eq!(pending["data"]["count"], 0, "given up: {pending}");
}

/// The real binary, for the SIGKILL test: short retries and a short attempt timeout (a
/// message a dead process held is taken again when its lease, the timeout + 30 s, runs out).
fn binary(db_url: &str) -> tokio::process::Command {
    let mut cmd = common::process::entitled(db_url);
    cmd.env("ENTITLED_LOG__LEVEL", "error")
        .env("ENTITLED_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
        .env(
            "ENTITLED_WEBHOOKS__RETRY_SCHEDULE_SECS",
            "[1, 1, 1, 1, 1, 1, 1, 1, 1]",
        )
        .env("ENTITLED_WEBHOOKS__TIMEOUT_SECS", "3");
    cmd
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client
        .request(method, format!("{base}{path}"))
        .header("X-Schematic-Api-Key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The binary SIGKILLed while deliveries are in flight: after a restart on the same
/// database, every message reaches the receiver and ends `success`.
#[tokio::test]
async fn sigkill_while_delivering_loses_no_message() {
    const EVENTS: usize = 20;
    let db = common::fresh_database().await;
    let db_url = db.url.clone();
    let mut migrate = binary(&db_url);
    migrate.arg("migrate");
    common::process::run_ok(migrate).await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    receiver.delay_each(Duration::from_millis(1500));

    let mut server = common::process::serve(binary(&db_url)).await;
    let key = common::create_api_key(&pool, "development").await;
    eventually(Duration::from_secs(10), || async {
        let (s, _) = call(&client, &server.base, &key, Method::GET, "/webhooks", None).await;
        (s == StatusCode::OK).then_some(())
    })
    .await;
    let (s, hook) = call(
        &client,
        &server.base,
        &key,
        Method::POST,
        "/webhooks",
        Some(json!({"name": "Slow", "url": receiver.url, "request_types": ["feature.created"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{hook}");
    for i in 0..EVENTS {
        let (s, body) = call(
            &client,
            &server.base,
            &key,
            Method::POST,
            "/features",
            Some(json!({"name": format!("Crash {i}"), "feature_type": "boolean"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    eventually(WAIT, || async { (receiver.in_flight() >= 8).then_some(()) }).await;
    server.kill().await; // SIGKILL
    let arrived_before_kill = receiver.deliveries().len();

    let server = common::process::serve(binary(&db_url)).await;
    let events = eventually(Duration::from_secs(90), || async {
        let (s, body) = call(
            &client,
            &server.base,
            &key,
            Method::GET,
            "/webhook-events?limit=100",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let events = body["data"].as_array().cloned().unwrap_or_default();
        (events.len() == EVENTS && events.iter().all(|e| e["status"] == "success"))
            .then_some(events)
    })
    .await;
    let answered: HashSet<String> = receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.answered && d.status == 200)
        .map(|d| d.webhook_id)
        .collect();
    let message_ids: HashSet<String> = events.iter().map(|e| str_of(&e["message_id"])).collect();
    assert_eq!(message_ids.len(), EVENTS);
    let missing: Vec<&String> = message_ids.difference(&answered).collect();
    assert!(missing.is_empty(), "never received: {missing:?}");
    let retried = events
        .iter()
        .filter(|e| e["attempt_count"].as_i64() >= Some(2))
        .count();
    assert!(
        retried >= 1,
        "the deliveries cut off by the kill were attempted again: {events:?}"
    );
    eprintln!(
        "{arrived_before_kill} requests arrived before SIGKILL; {retried} messages attempted again; {} requests in all",
        receiver.deliveries().len()
    );
    drop(server);
    pool.close().await;
    drop(db);
}

/// Two replicas draining one outbox of 50 messages: never the same message twice at once,
/// each delivered once, by both replicas together.
#[tokio::test]
async fn two_replicas_deliver_each_message_once() {
    const EVENTS: usize = 50;
    let config = format!("{FAST_RETRIES}concurrency = 4\n");
    let a = common::spawn_app_with(&config).await;
    let b = common::spawn_on(&a.db_url, &config).await;
    let receiver = Receiver::start().await;
    receiver.delay_each(Duration::from_millis(200));
    let hook = create_webhook(&a, &receiver.url, &["feature.created"]).await;
    let webhook_id = str_of(&hook["id"]);

    // 50 messages queued in one transaction, as a write would, announced to every replica.
    let env_id: String =
        sqlx::query_scalar("SELECT id FROM environments WHERE key = 'development'")
            .fetch_one(&a.pool)
            .await
            .unwrap();
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            Event::new(
                "feature.created",
                json!({"id": format!("feat_{i}"), "n": i}),
            )
        })
        .collect();
    let mut tx = a.pool.begin().await.unwrap();
    let change = entitled::outbound::emit(&mut tx, &env_id, "development", &events)
        .await
        .unwrap();
    assert_eq!(change, Some(Change::Outbox));
    Publisher::detached("test")
        .commit(tx, &[Change::Outbox])
        .await
        .unwrap();

    let listed = all_succeeded(&b, &webhook_id, EVENTS, WAIT).await;
    assert!(listed.iter().all(|e| e["attempt_count"] == 1), "{listed:?}");
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), EVENTS, "each message delivered once");
    let ids: HashSet<&str> = deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), EVENTS);
    assert_eq!(receiver.overlaps(), Vec::<String>::new());
    assert!(
        receiver.max_in_flight() > 4,
        "both replicas delivered at once (each sends at most 4): {}",
        receiver.max_in_flight()
    );
}

/// Bad input answers 400 naming the field; unknown ids 404; a read-only key 403.
#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    // Default configuration: private targets refused.
    let app = common::spawn_app().await;
    let public = "https://93.184.215.14/hook";
    let cases = [
        (
            json!({"name": "x", "url": "ftp://example.com/hook", "request_types": ["company.created"]}),
            "url: ",
        ),
        (
            json!({"name": "x", "url": public, "request_types": ["company.created", "company.exploded"]}),
            "request_types[1]: ",
        ),
        (
            json!({"name": "x", "url": public, "request_types": ["nope"]}),
            "request_types[0]: ",
        ),
        (
            json!({"name": "x", "url": "http://127.0.0.1:9/hook", "request_types": ["company.created"]}),
            "url: ",
        ),
        (
            json!({"name": "x", "url": "http://localhost:9/hook", "request_types": ["company.created"]}),
            "url: ",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/webhooks", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        let error = str_of(&answer["error"]);
        assert!(error.starts_with(field), "{body} → {error}");
    }
    let (_, loopback) = app
        .post(
            "/webhooks",
            json!({"name": "x", "url": "http://127.0.0.1:9/hook", "request_types": ["company.created"]}),
        )
        .await;
    assert!(
        str_of(&loopback["error"]).contains("allow_private_targets"),
        "{loopback}"
    );

    let (status, answer) = app
        .send(
            Method::POST,
            "/webhooks",
            Some(&json!({"name": "x", "url": public, "request_types": ["company.created"]})),
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");

    for (method, path) in [
        (Method::GET, "/webhooks/whk_missing"),
        (Method::PUT, "/webhooks/whk_missing"),
        (Method::DELETE, "/webhooks/whk_missing"),
        (Method::POST, "/webhooks/whk_missing/rotate-secret"),
        (Method::POST, "/webhooks/whk_missing/test"),
        (Method::GET, "/webhook-events/whev_missing"),
    ] {
        let (status, answer) = app
            .send(method.clone(), path, Some(&json!({})), Some(&app.key))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path} → {answer}");
    }
    let (status, answer) = app.get("/webhook-events?status=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(str_of(&answer["error"]).contains("status"), "{answer}");
    let (_, count) = app.get("/webhooks/count").await;
    assert_eq!(count["data"]["count"], 0, "nothing was created: {count}");
}

/// After a rotation both secrets sign the Standard Webhooks header (receivers switch over
/// at their pace); Schematic's header is signed with the new one.
#[tokio::test]
async fn rotated_secret_signs_beside_the_old_one() {
    let app = common::spawn_app_with(FAST_RETRIES).await;
    let receiver = Receiver::start().await;
    let hook = create_webhook(&app, &receiver.url, &["company.created"]).await;
    let (id, old) = (str_of(&hook["id"]), str_of(&hook["secret"]));

    let (status, rotated) = app
        .post(&format!("/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = str_of(&rotated["data"]["secret"]);
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    let (_, got) = app.get(&format!("/webhooks/{id}")).await;
    assert_eq!(got["data"]["secret"], json!(new), "{got}");

    // A test delivery, answered with how its attempt went.
    let (status, tested) = app
        .post(
            &format!("/webhooks/{id}/test"),
            json!({"request_type": "company.created"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tested}");
    assert_eq!(tested["data"]["success"], true, "{tested}");
    assert_eq!(tested["data"]["response_code"], 200, "{tested}");
    assert_eq!(tested["data"]["failure_reason"], Value::Null, "{tested}");
    // And a real event.
    app.create("/companies", json!({"keys": {"id": "rotated"}}))
        .await;
    all_succeeded(&app, &id, 2, WAIT).await;

    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2);
    let types: HashSet<String> = deliveries
        .iter()
        .map(|d| str_of(&d.json()["type"]))
        .collect();
    assert_eq!(
        types,
        HashSet::from(["test.send".to_string(), "company.created".to_string()])
    );
    let results = receiver::verify_in_python(&deliveries, &[&new, &old], &[&old, &new]).await;
    assert_verified(&results, &[true, false], &[true, true]);
}

/// A receiver answering 410 Gone: the endpoint is disabled with the reason, its message
/// fails without retries, and later events are not queued for it.
#[tokio::test]
async fn gone_disables_the_endpoint() {
    let app = common::spawn_app_with(FAST_RETRIES).await;
    let receiver = Receiver::start().await;
    receiver.answer_by_default(410);
    let hook = create_webhook(&app, &receiver.url, &["company.created"]).await;
    let id = str_of(&hook["id"]);
    app.create("/companies", json!({"keys": {"id": "gone-1"}}))
        .await;

    let disabled = eventually(WAIT, || async {
        let (_, got) = app.get(&format!("/webhooks/{id}")).await;
        (got["data"]["status"] == "inactive").then(|| got["data"].clone())
    })
    .await;
    assert!(
        str_of(&disabled["disabled_reason"]).contains("410"),
        "{disabled}"
    );
    assert!(disabled["disabled_at"].is_string(), "{disabled}");
    let events = events_of(&app, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (_, failed) = app
        .get(&format!("/webhook-events?webhook_id={id}&status=failure"))
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(events[0]["status"], "failure");
    assert_eq!(events[0]["attempt_count"], 1);
    assert_eq!(events[0]["response_code"], 410);

    // Later changes are made, but nothing is queued for the endpoint.
    app.create("/companies", json!({"keys": {"id": "gone-2"}}))
        .await;
    assert_eq!(events_of(&app, &id).await.len(), 1);
    let (_, count) = app
        .get(&format!("/webhook-events/count?webhook_id={id}"))
        .await;
    assert_eq!(count["data"]["count"], 1, "{count}");
    assert_eq!(receiver.deliveries().len(), 1, "no retry after 410");

    // Turned back on, it gets messages again and no longer says why it was off.
    receiver.answer_by_default(200);
    let (status, on) = app
        .put(&format!("/webhooks/{id}"), json!({"status": "active"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["data"]["disabled_reason"], Value::Null, "{on}");
    app.create("/companies", json!({"keys": {"id": "gone-3"}}))
        .await;
    let events = eventually(WAIT, || async {
        let events = events_of(&app, &id).await;
        (events.len() == 2 && events[0]["status"] == "success").then_some(events)
    })
    .await;
    assert_eq!(events[0]["response_code"], 200, "{events:?}");
    assert_eq!(receiver.deliveries().len(), 2);
}
