//! Usage events end to end: track and identify, idempotency, batches applied whole or not at
//! all, event-based entitlements flipping at the limit, and exact counts under concurrency.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn seeded() -> common::TestApp {
    let app = common::spawn_app().await;
    app.seed_demo_until("reports").await;
    app
}

async fn on_plan(app: &common::TestApp, company: &str, plan_key: &str) -> String {
    let plan = app.id_of("plans", plan_key).await;
    let c = app
        .create(
            "/companies",
            json!({"keys": {"id": company}, "base_plan_id": plan}),
        )
        .await;
    c["id"].as_str().unwrap().to_string()
}

fn track(company: &str, event: &str, quantity: i64) -> Value {
    json!({"event_type": "track", "body": {"event": event, "company": {"id": company}, "quantity": quantity}})
}

#[tokio::test]
async fn tracked_usage_flips_the_check_at_the_limit() {
    let app = seeded().await;
    on_plan(&app, "acme", "free").await; // reports: 5 per month
    let acme = json!({"id": "acme"});
    let c = app.check("reports", acme.clone()).await;
    assert_eq!(
        (
            c["value"].clone(),
            c["feature_usage"].clone(),
            c["feature_allocation"].clone()
        ),
        (json!(true), json!(0), json!(5))
    );

    let e = app
        .create("/events", track("acme", "report_generated", 4))
        .await;
    assert!(e["event_id"].as_str().unwrap().starts_with("evnt_"));
    let c = app.check("reports", acme.clone()).await;
    assert_eq!(
        (c["value"].clone(), c["feature_usage"].clone()),
        (json!(true), json!(4))
    );
    // quantity null means 1.
    app.create("/events", json!({"event_type": "track", "body": {"event": "report_generated", "company": {"id": "acme"}, "quantity": null}})).await;
    let c = app.check("reports", acme.clone()).await;
    assert_eq!(c["value"], false, "{c}");
    assert_eq!(c["rule_type"], "plan_entitlement_usage_exceeded");
    assert_eq!(c["feature_usage"], 5);
    assert_eq!(c["entitlement"]["usage"], 5);
    assert_eq!(c["feature_usage_period"], "current_month");

    // A correction with a negative quantity brings it back under.
    app.create("/events", track("acme", "report_generated", -1))
        .await;
    assert_eq!(app.check("reports", acme.clone()).await["value"], true);

    // Feature usage and company detail agree.
    let (s, fu) = app.get("/feature-usage?company_keys[id]=acme").await;
    assert_eq!(s, StatusCode::OK, "{fu}");
    let reports = fu["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["feature"]["key"] == "reports")
        .unwrap()
        .clone();
    assert_eq!(
        (
            reports["usage"].clone(),
            reports["allocation"].clone(),
            reports["access"].clone()
        ),
        (json!(4), json!(5), json!(true))
    );
    assert_eq!(reports["entitlement_type"], "plan_entitlement");
    assert_eq!(reports["period"], "current_month");
    assert!(reports["metric_reset_at"].is_string());
    let (_, detail) = app.get("/companies/lookup?keys[id]=acme").await;
    let metric = detail["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["event_subtype"] == "report_generated" && m["period"] == "all_time")
        .unwrap()
        .clone();
    assert_eq!(metric["value"], 4);
    let (s, _) = app.get("/feature-usage?company_id=comp_nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = app.get("/feature-usage").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn idempotency_keys_drop_duplicates() {
    let app = seeded().await;
    on_plan(&app, "i", "free").await;
    let mut ev = track("i", "report_generated", 2);
    ev["idempotency_key"] = json!("k-1");
    let first = app.create("/events", ev.clone()).await;
    let second = app.create("/events", ev.clone()).await;
    assert_eq!(first["event_id"], second["event_id"]);
    assert_eq!(second["duplicate"], true);
    // Within one batch too.
    let batch = app
        .create("/event-batch", json!({"events": [ev.clone(), ev.clone()]}))
        .await;
    assert!(batch["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event_id"] == first["event_id"]));
    assert_eq!(
        app.check("reports", json!({"id": "i"})).await["feature_usage"],
        2
    );
    let (_, list) = app.get("/events?idempotency_key=k-1").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (s, one) = app
        .get(&format!("/events/{}", first["event_id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            one["data"]["type"].clone(),
            one["data"]["subtype"].clone(),
            one["data"]["quantity"].clone()
        ),
        (json!("track"), json!("report_generated"), json!(2))
    );
    assert!(
        one["data"]["feature_ids"].as_array().unwrap().len() == 1,
        "{one}"
    );
}

#[tokio::test]
async fn bad_events_are_named_and_a_rejected_batch_applies_nothing() {
    let app = seeded().await;
    on_plan(&app, "b", "free").await;
    let cases = [
        (
            json!({"event_type": "flag_check", "body": {}}),
            "event_type",
        ),
        (
            json!({"event_type": "track", "body": {"company": {"id": "b"}}}),
            "event",
        ),
        (
            json!({"event_type": "track", "body": {"event": "x"}}),
            "body.company",
        ),
        (
            json!({"event_type": "track", "body": {"event": "x", "company": {"id": "b"}, "quantity": 2_000_000_000i64}}),
            "body.quantity",
        ),
        (
            json!({"event_type": "track", "body": {"event": "x", "company": {"id": "b"}, "quantity": 1.5}}),
            "body.quantity",
        ),
        (
            json!({"event_type": "track", "body": {"event": "x", "company": {"id": true}}}),
            "body.company.id",
        ),
        (json!({"event_type": "identify", "body": {}}), "body.keys"),
        (json!({"event_type": "track", "body": [1]}), "body"),
    ];
    for (body, field) in cases {
        let (s, resp) = app.post("/events", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {resp}");
        assert!(
            resp["error"].as_str().unwrap().contains(field),
            "{body} → {resp}"
        );
    }
    // One bad event rejects the whole batch: nothing stored, no usage.
    let (s, resp) = app
        .post("/event-batch", json!({"events": [track("b", "report_generated", 1), {"event_type": "track", "body": {"event": ""}}]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        resp["error"].as_str().unwrap().starts_with("events[1]"),
        "{resp}"
    );
    let (_, list) = app.get("/events").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    assert_eq!(
        app.check("reports", json!({"id": "b"})).await["feature_usage"],
        0
    );
    // Over the batch limit.
    let many: Vec<Value> = (0..1001).map(|_| track("b", "x", 1)).collect();
    let (s, resp) = app.post("/event-batch", json!({"events": many})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        resp["error"].as_str().unwrap().contains("at most 1000"),
        "{resp}"
    );
    // Readonly keys may not send events.
    let (s, _) = app
        .send(
            Method::POST,
            "/events",
            Some(&track("b", "x", 1)),
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn identify_and_track_create_what_they_name() {
    let app = seeded().await;
    app.create(
        "/events",
        json!({"event_type": "identify", "body": {
        "keys": {"email": "ada@newco.test"}, "name": "Ada", "traits": {"role": "admin"},
        "company": {"keys": {"id": "newco"}, "name": "NewCo", "traits": {"seats_used": 3}}}}),
    )
    .await;
    let (s, c) = app.get("/companies/lookup?keys[id]=newco").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            c["data"]["name"].clone(),
            c["data"]["traits"]["seats_used"].clone(),
            c["data"]["user_count"].clone()
        ),
        (json!("NewCo"), json!(3), json!(1))
    );
    let (_, u) = app.get("/users/lookup?keys[email]=ada@newco.test").await;
    assert_eq!(u["data"]["name"], "Ada");
    assert_eq!(
        u["data"]["company_memberships"][0]["company_id"],
        c["data"]["id"]
    );
    // A track event for a company nobody created yet creates it, and counts.
    app.create("/events", json!({"event_type": "track", "body": {"event": "api_call", "company": {"id": "ghost"}, "user": {"email": "g@ghost.test"}}})).await;
    let (s, g) = app.get("/companies/lookup?keys[id]=ghost").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(g["data"]["user_count"], 1);
    let (_, ev) = app
        .get(&format!(
            "/events?company_id={}",
            g["data"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ev["data"][0]["subtype"], "api_call");
}

#[tokio::test]
async fn capture_batches_in_the_sdk_format() {
    let app = seeded().await;
    on_plan(&app, "sdk", "free").await;
    let body = json!({"events": [
        {"api_key": app.key, "type": "track", "body": {"event": "report_generated", "company": {"id": "sdk"}, "quantity": 2, "traits": null, "user": null}},
        {"type": "track", "body": {"event": "report_generated", "company": {"id": "sdk"}, "quantity": null, "traits": null, "user": null}, "sent_at": "2026-11-21T10:00:00Z"},
        {"api_key": app.key, "type": "identify", "body": {"keys": {"uid": "u1"}, "company": {"keys": {"id": "sdk"}}, "name": null, "traits": null}},
    ]});
    // Key in the header for the event without one.
    let (s, resp) = app
        .send(Method::POST, "/batch", Some(&body), Some(&app.key))
        .await;
    assert_eq!(s, StatusCode::OK, "{resp}");
    assert_eq!(
        app.check("reports", json!({"id": "sdk"})).await["feature_usage"],
        3
    );
    // No key anywhere → 401 and nothing applied; a readonly key → 403.
    let (s, _) = app.send(Method::POST, "/batch", Some(&json!({"events": [{"type": "track", "body": {"event": "report_generated", "company": {"id": "sdk"}}}]})), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.send(Method::POST, "/batch", Some(&json!({"events": [{"api_key": app.readonly_key, "type": "track", "body": {"event": "report_generated", "company": {"id": "sdk"}}}]})), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        app.check("reports", json!({"id": "sdk"})).await["feature_usage"],
        3
    );
}

#[tokio::test]
async fn eight_parallel_clients_lose_no_update() {
    let app = seeded().await;
    on_plan(&app, "busy", "pro").await;
    let per_client = 1250;
    let batch = 50;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let url = format!("{}/event-batch", app.base);
        let key = app.key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client / batch {
                let events: Vec<Value> = (0..batch).map(|_| track("busy", "api_call", 1)).collect();
                let r = client
                    .post(&url)
                    .header("X-Schematic-Api-Key", &key)
                    .json(&json!({"events": events}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = app.check("api-calls", json!({"id": "busy"})).await;
    assert_eq!(c["feature_usage"], 10_000, "{c}");
    let total: i64 = sqlx::query_scalar(
        "SELECT count FROM usage_counters WHERE event_name = 'api_call' AND period = 'all_time'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(total, 10_000);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 10_000);
}

#[tokio::test]
async fn another_replica_sees_usage_within_a_second() {
    let a = seeded().await;
    let b = common::spawn_on(&a.db_url, "").await;
    on_plan(&a, "rep", "free").await;
    common::eventually(Duration::from_secs(1), || async {
        let (_, c) = b
            .post("/flags/reports/check", json!({"company": {"id": "rep"}}))
            .await;
        (c["data"]["feature_allocation"] == 5).then_some(())
    })
    .await;
    a.create("/events", track("rep", "report_generated", 5))
        .await;
    common::eventually(Duration::from_secs(1), || async {
        let (_, c) = b
            .post("/flags/reports/check", json!({"company": {"id": "rep"}}))
            .await;
        (c["data"]["value"] == false && c["data"]["feature_usage"] == 5).then_some(())
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn usage_earned_under_an_expired_override_is_kept() {
    let app = seeded().await;
    let company = on_plan(&app, "ov", "free").await;
    let reports = app.id_of("features", "reports").await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    app.create("/company-overrides", json!({"company_id": company, "feature_id": reports, "value_type": "numeric",
        "value_numeric": 10, "metric_period": "current_month", "expiration_date": expires.to_rfc3339()})).await;
    app.create("/events", track("ov", "report_generated", 8))
        .await;
    let c = app.check("reports", json!({"id": "ov"})).await;
    assert_eq!(
        (c["value"].clone(), c["rule_type"].clone()),
        (json!(true), json!("company_override"))
    );
    // The override lapses at its expiration date; the 8 reports stay counted against Free's 5.
    let c = common::eventually(Duration::from_secs(5), || async {
        let c = app.check("reports", json!({"id": "ov"})).await;
        (c["rule_type"] != "company_override").then_some(c)
    })
    .await;
    assert_eq!(
        (
            c["value"].clone(),
            c["rule_type"].clone(),
            c["feature_usage"].clone()
        ),
        (
            json!(false),
            json!("plan_entitlement_usage_exceeded"),
            json!(8)
        )
    );
}

/// A dozen track events with distinct 255-character event names for one company: every
/// counter of the batch goes out in notifications of under 8,000 bytes (Postgres refuses
/// larger ones, which used to fail the whole batch), so the batch commits and another
/// replica's snapshot gets every counter.
#[tokio::test]
async fn long_event_names_commit_and_reach_every_replica() {
    let a = seeded().await;
    let b = common::spawn_on(&a.db_url, "").await;
    let company = on_plan(&a, "long-names", "free").await;
    let names: Vec<String> = (0..12)
        .map(|i| format!("{i:02}{}", "n".repeat(253)))
        .collect();
    let last = names[11].clone();
    let feature = a
        .create(
            "/features",
            json!({"key": "long-event", "name": "Long event", "feature_type": "event", "event_subtype": last}),
        )
        .await;
    a.create(
        "/company-overrides",
        json!({"company_id": company, "feature_id": feature["id"], "value_type": "numeric", "value_numeric": 3}),
    )
    .await;
    let events: Vec<Value> = names
        .iter()
        .map(|n| track("long-names", n, if *n == last { 3 } else { 1 }))
        .collect();
    let (s, body) = a.post("/event-batch", json!({"events": events})).await;
    assert!(s.is_success(), "{s}: {body}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE company_id = $1")
        .bind(&company)
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(stored, 12);
    // The other replica hears of the counters (it never reads them from Postgres for this).
    common::eventually(Duration::from_secs(2), || async {
        let (_, c) = b
            .post(
                "/flags/long-event/check",
                json!({"company": {"id": "long-names"}}),
            )
            .await;
        (c["data"]["feature_usage"] == 3 && c["data"]["value"] == false).then_some(())
    })
    .await;
    b.stop().await;
}
