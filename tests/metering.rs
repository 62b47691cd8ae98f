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
    let total: i64 =
        sqlx::query_scalar("SELECT all_time FROM usage_totals WHERE event_name = 'api_call'")
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

/// A company's counters of one event are one `usage_totals` row: a write for a later window
/// starts that window over, and a write for an earlier one (from a writer whose clock is
/// behind) counts toward all time only.
#[tokio::test]
async fn windows_roll_over_and_late_writes_count_toward_all_time_only() {
    let app = seeded().await;
    on_plan(&app, "acme", "free").await; // reports: 5 per calendar month
    app.create("/events", track("acme", "report_generated", 4))
        .await;
    let month = |app: &common::TestApp| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT all_time, month_count, version FROM usage_totals
                 WHERE event_name = 'report_generated'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(month(&app).await, (4, 4, 1));

    // The stored month is last month's: this write starts the current one over.
    sqlx::query("UPDATE usage_totals SET month_start = month_start - interval '1 month'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.create("/events", track("acme", "report_generated", 1))
        .await;
    assert_eq!(month(&app).await, (5, 1, 2));
    let c = app.check("reports", json!({"id": "acme"})).await;
    assert_eq!(
        (c["feature_usage"].clone(), c["value"].clone()),
        (json!(1), json!(true)),
        "{c}"
    );
    // A replica started now reads the row in its full load and sees the same window.
    let fresh = common::spawn_on(&app.db_url, "").await;
    let c = fresh.check("reports", json!({"id": "acme"})).await;
    assert_eq!(
        (c["feature_usage"].clone(), c["value"].clone()),
        (json!(1), json!(true)),
        "{c}"
    );
    fresh.stop().await;

    // Another writer already counted in next month: this write's month is past.
    sqlx::query(
        "UPDATE usage_totals SET month_start = month_start + interval '1 month', month_count = 100",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.create("/events", track("acme", "report_generated", 2))
        .await;
    assert_eq!(month(&app).await, (7, 100, 3));
}

/// Migration 0011 keeps, per company and event, the all-time count and the newest window of
/// each period from the old one-row-per-window table.
#[tokio::test]
async fn migration_0011_moves_the_newest_windows_into_usage_totals() {
    use sqlx::migrate::Migrator;
    let db = common::fresh_database().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // The migrations before 0011, from a copy of their folder.
    let dir = std::env::temp_dir().join(format!("entitled-migrations-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.as_str() < "0011" {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    Migrator::new(dir.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    sqlx::raw_sql(
        "INSERT INTO environments (id, key, name) VALUES ('env_1', 'development', 'Development');
         INSERT INTO companies (id, environment_id) VALUES ('comp_1', 'env_1'), ('comp_2', 'env_1');
         INSERT INTO usage_counters (company_id, event_name, period, month_reset, window_start, count, version) VALUES
           ('comp_1', 'api_call', 'all_time', 'first_of_month', 'epoch', 50, 9),
           ('comp_1', 'api_call', 'current_day', 'first_of_month', '2026-12-06', 4, 1),
           ('comp_1', 'api_call', 'current_day', 'first_of_month', '2026-12-07', 3, 2),
           ('comp_1', 'api_call', 'current_week', 'first_of_month', '2026-12-06', 10, 3),
           ('comp_1', 'api_call', 'current_month', 'first_of_month', '2026-11-01', 99, 4),
           ('comp_1', 'api_call', 'current_month', 'first_of_month', '2026-12-01', 20, 5),
           ('comp_1', 'api_call', 'current_month', 'billing_cycle', '2026-11-20 08:00:00+00', 7, 6),
           ('comp_1', 'seats', 'all_time', 'first_of_month', 'epoch', 2, 1),
           ('comp_2', 'api_call', 'current_month', 'first_of_month', '2026-12-01', 1, 1);",
    )
    .execute(&pool)
    .await
    .unwrap();

    entitled::store::db::migrate(&pool).await.unwrap();

    // One line per row: company, event, environment, all time, then each window's start
    // and count (day, week, month, billing cycle), then the version.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', company_id, event_name, environment_id, all_time,
                    coalesce(to_char(day_start AT TIME ZONE 'UTC', 'MM-DD\"T\"HH24:MI'), '-'), day_count,
                    coalesce(to_char(week_start AT TIME ZONE 'UTC', 'MM-DD\"T\"HH24:MI'), '-'), week_count,
                    coalesce(to_char(month_start AT TIME ZONE 'UTC', 'MM-DD\"T\"HH24:MI'), '-'), month_count,
                    coalesce(to_char(cycle_start AT TIME ZONE 'UTC', 'MM-DD\"T\"HH24:MI'), '-'), cycle_count,
                    version)
         FROM usage_totals ORDER BY company_id, event_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            "comp_1 api_call env_1 50 12-07T00:00 3 12-06T00:00 10 12-01T00:00 20 11-20T08:00 7 9",
            "comp_1 seats env_1 2 - 0 - 0 - 0 - 0 1",
            "comp_2 api_call env_1 0 - 0 - 0 12-01T00:00 1 - 0 1",
        ]
    );
    let old: Option<String> = sqlx::query_scalar("SELECT to_regclass('usage_counters')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old, None);
    pool.close().await;
}
