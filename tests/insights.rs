//! Insights over the real HTTP stack: the summary, top features by usage and by checks
//! (counted in memory, flushed to Postgres by the background task), plan growth per day and
//! month, their validation, and environment scoping.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Two environments, and check counts flushed every second.
const CONFIG: &str = r#"
[insights]
check_flush_secs = 1

[[environments]]
key = "development"
name = "Development"

[[environments]]
key = "staging"
name = "Staging"
"#;

struct Setup {
    app: common::TestApp,
    staging_key: String,
}

async fn setup() -> Setup {
    let app = common::spawn_app_with(CONFIG).await;
    entitled::seed::seed_file(&app.pool, Path::new("fixtures/demo-catalog.toml"))
        .await
        .unwrap();
    let staging_key = common::create_api_key(&app.pool, "staging").await;
    // The catalog reload and the new key reach the snapshot. (Each wait counts exactly one
    // successful check of `sso` per environment.)
    common::eventually(Duration::from_secs(5), || async {
        let (s, _) = app.post("/flags/sso/check", json!({})).await;
        s.is_success().then_some(())
    })
    .await;
    common::eventually(Duration::from_secs(5), || async {
        let (s, _) = app
            .send(
                Method::POST,
                "/flags/sso/check",
                Some(&json!({})),
                Some(&staging_key),
            )
            .await;
        s.is_success().then_some(())
    })
    .await;
    Setup { app, staging_key }
}

async fn plan_id(app: &common::TestApp, key: &str) -> String {
    sqlx::query_scalar("SELECT id FROM plans WHERE key = $1")
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn track(app: &common::TestApp, company: &str, event: &str, quantity: i64) {
    app.create(
        "/events",
        json!({"event_type": "track", "body": {"event": event, "company": {"id": company}, "quantity": quantity}}),
    )
    .await;
}

fn ok(status: StatusCode, body: &Value) -> Value {
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn the_summary_counts_the_keys_environment() {
    let Setup { app, staging_key } = setup().await;
    let pro = plan_id(&app, "pro").await;
    let free = plan_id(&app, "free").await;
    app.create(
        "/companies",
        json!({"keys": {"id": "a"}, "base_plan_id": pro}),
    )
    .await;
    app.create(
        "/companies",
        json!({"keys": {"id": "b"}, "base_plan_id": free}),
    )
    .await;
    app.create("/companies", json!({"keys": {"id": "c"}})).await;
    app.create(
        "/users",
        json!({"keys": {"id": "u1"}, "company": {"id": "a"}}),
    )
    .await;
    track(&app, "a", "api_call", 4).await;
    track(&app, "a", "api_call", 1).await;
    app.create(
        "/events",
        json!({"event_type": "identify", "body": {"keys": {"id": "u2"}}}),
    )
    .await;
    let (s, _) = app
        .send(
            Method::POST,
            "/companies",
            Some(&json!({"keys": {"id": "elsewhere"}})),
            Some(&staging_key),
        )
        .await;
    assert!(s.is_success());

    let (status, body) = app.get("/insights/summary").await;
    let d = ok(status, &body);
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM plans")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // identify created user u2.
    assert_eq!(d["total_companies"], 3, "{d}");
    assert_eq!(d["total_users"], 2, "{d}");
    assert_eq!(d["total_plans"], plans, "{d}");
    assert_eq!(d["total_features"], 9, "{d}");
    assert_eq!(
        d["paid_companies"], 2,
        "demo plans are billed through Stripe: {d}"
    );
    assert_eq!(d["companies_without_plan"], 1, "{d}");
    assert_eq!(
        d["events_last_30_days"],
        json!({"total": 3, "track": 2, "identify": 1, "tracked_quantity": 5}),
        "{d}"
    );
    // The SDK's required fields.
    assert_eq!(d["active_credits"], 0.0);
    assert_eq!(d["mrr"], json!([]));
    let pro_row = d["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plan_key"] == "pro")
        .unwrap();
    assert_eq!(pro_row["companies"], 1, "{d}");
    assert_eq!(pro_row["plan_id"], pro.as_str());
    assert_eq!(body["params"], json!({}));

    let (status, body) = app
        .send(Method::GET, "/insights/summary", None, Some(&staging_key))
        .await;
    let d = ok(status, &body);
    assert_eq!(
        (d["total_companies"].as_i64(), d["total_users"].as_i64()),
        (Some(1), Some(0)),
        "{d}"
    );
    assert_eq!(d["events_last_30_days"]["total"], 0);

    let (status, _) = app.send(Method::GET, "/insights/summary", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn top_features_rank_by_usage_and_by_checks() {
    let Setup { app, staging_key } = setup().await;
    let pro = plan_id(&app, "pro").await;
    app.create(
        "/companies",
        json!({"keys": {"id": "a"}, "base_plan_id": pro}),
    )
    .await;
    track(&app, "a", "api_call", 5).await;
    track(&app, "a", "api_call", 5).await;
    track(&app, "a", "report_generated", 3).await;
    // Usage in the window before the default one (30 to 60 days ago).
    let company: String =
        sqlx::query_scalar("SELECT company_id FROM company_keys WHERE value = 'a'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO events (id, environment_id, event_type, event_name, company_id, quantity, body, created_at)
         SELECT 'evnt_old', environment_id, 'track', 'api_call', id, 5, '{}', now() - interval '40 days'
         FROM companies WHERE id = $1",
    )
    .bind(&company)
    .execute(&app.pool)
    .await
    .unwrap();

    let (status, body) = app.get("/insights/top-features?limit=3").await;
    let d = ok(status, &body);
    let f = d["features"].as_array().unwrap();
    assert_eq!(f.len(), 3, "{d}");
    assert_eq!(f[0]["feature_key"], "api-calls");
    assert_eq!(
        (f[0]["usage"].as_i64(), f[0]["prior_usage"].as_i64()),
        (Some(10), Some(5)),
        "{d}"
    );
    assert_eq!(f[0]["change_pct"], 100.0);
    assert_eq!(f[1]["feature_key"], "reports");
    assert_eq!(
        (f[1]["usage"].as_i64(), f[1]["change_pct"].clone()),
        (Some(3), Value::Null)
    );
    assert_eq!(body["params"]["limit"], 3);
    assert_eq!(body["params"]["by"], "usage");

    // Checks are counted in memory and flushed by the background task (sso was checked
    // once more by `setup`).
    for _ in 0..3 {
        app.check("sso", json!({"id": "a"})).await;
    }
    for _ in 0..2 {
        app.check("custom-branding", json!({"id": "a"})).await;
    }
    for _ in 0..2 {
        let (s, _) = app
            .send(
                Method::POST,
                "/flags/audit-log/check",
                Some(&json!({})),
                Some(&staging_key),
            )
            .await;
        assert!(s.is_success());
    }
    let d = common::eventually(Duration::from_secs(10), || async {
        let (status, body) = app.get("/insights/top-features?by=checks&limit=2").await;
        let d = ok(status, &body);
        (d["features"][0]["checks"] == 4 && d["features"][1]["checks"] == 2).then_some(d)
    })
    .await;
    assert_eq!(d["features"][0]["feature_key"], "sso", "{d}");
    assert_eq!(d["features"][0]["allowed_checks"], 0, "Pro has no SSO: {d}");
    assert_eq!(d["features"][1]["feature_key"], "custom-branding", "{d}");
    assert_eq!(d["features"][1]["allowed_checks"], 2, "{d}");
    // Another environment's checks and usage are its own.
    let d = common::eventually(Duration::from_secs(10), || async {
        let (status, body) = app
            .send(
                Method::GET,
                "/insights/top-features?by=checks&limit=1",
                None,
                Some(&staging_key),
            )
            .await;
        let d = ok(status, &body);
        (d["features"][0]["checks"] == 2).then_some(d)
    })
    .await;
    assert_eq!(d["features"][0]["feature_key"], "audit-log", "{d}");
    assert_eq!(d["features"][0]["usage"], 0, "{d}");

    // Bad windows and parameters name themselves.
    for (query, field) in [
        ("by=popularity", "by:"),
        ("limit=0", "limit:"),
        ("limit=ten", "limit:"),
        ("start_time=yesterday", "start_time:"),
        (
            "start_time=2026-02-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
            "start_time: must be before end_time",
        ),
        (
            "start_time=2020-01-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
            "end_time: the window",
        ),
    ] {
        let (status, body) = app.get(&format!("/insights/top-features?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
}

fn day(t: DateTime<Utc>) -> String {
    format!("{}T00:00:00Z", t.date_naive())
}

fn point<'a>(points: &'a [Value], date: &str, plan: &str) -> &'a Value {
    points
        .iter()
        .find(|p| p["date"] == date && p["plan_key"] == plan)
        .unwrap_or_else(|| panic!("no point for {plan} on {date}: {points:?}"))
}

#[tokio::test]
async fn plan_growth_counts_joins_and_leaves_per_day() {
    let Setup { app, staging_key } = setup().await;
    let free = plan_id(&app, "free").await;
    let pro = plan_id(&app, "pro").await;
    let enterprise = plan_id(&app, "enterprise").await;
    // Today: a joins Free, then moves to Pro.
    app.create(
        "/companies",
        json!({"keys": {"id": "a"}, "base_plan_id": free}),
    )
    .await;
    app.create(
        "/companies",
        json!({"keys": {"id": "a"}, "base_plan_id": pro}),
    )
    .await;
    // History: b was on Enterprise from 10 to 5 days ago.
    let b = app.create("/companies", json!({"keys": {"id": "b"}})).await;
    let now = Utc::now();
    let (joined, left) = (now - TimeDelta::days(10), now - TimeDelta::days(5));
    sqlx::query(
        "INSERT INTO company_plans (id, environment_id, company_id, plan_id, is_base, started_at, ended_at)
         SELECT 'cpln_hist', environment_id, id, $2, true, $3, $4 FROM companies WHERE id = $1",
    )
    .bind(b["id"].as_str().unwrap())
    .bind(&enterprise)
    .bind(joined)
    .bind(left)
    .execute(&app.pool)
    .await
    .unwrap();

    let start = now - TimeDelta::days(14);
    let (status, body) = app
        .get(&format!(
            "/insights/plan-growth?start_time={}&end_time={}",
            start.format("%Y-%m-%dT%H:%M:%SZ"),
            now.format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ))
        .await;
    let d = ok(status, &body);
    let points = d["points"].as_array().unwrap();
    // Three plans had members in the window; one point per plan per day (15 days touched).
    let plans: std::collections::BTreeSet<_> = points
        .iter()
        .map(|p| p["plan_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        plans.into_iter().collect::<Vec<_>>(),
        ["enterprise", "free", "pro"]
    );
    assert_eq!(points.len(), 3 * 15, "{d}");
    let e = point(points, &day(joined), "enterprise");
    assert_eq!(
        (
            e["joined"].as_i64(),
            e["left"].as_i64(),
            e["subscribers"].as_i64()
        ),
        (Some(1), Some(0), Some(1)),
        "{e}"
    );
    let mid = point(points, &day(now - TimeDelta::days(7)), "enterprise");
    assert_eq!(mid["subscribers"], 1, "{mid}");
    let e = point(points, &day(left), "enterprise");
    assert_eq!(
        (
            e["joined"].as_i64(),
            e["left"].as_i64(),
            e["subscribers"].as_i64()
        ),
        (Some(0), Some(1), Some(0)),
        "{e}"
    );
    let f = point(points, &day(now), "free");
    assert_eq!(
        (
            f["joined"].as_i64(),
            f["left"].as_i64(),
            f["subscribers"].as_i64()
        ),
        (Some(1), Some(1), Some(0)),
        "{f}"
    );
    let p = point(points, &day(now), "pro");
    assert_eq!(
        (p["joined"].as_i64(), p["subscribers"].as_i64()),
        (Some(1), Some(1)),
        "{p}"
    );
    assert_eq!(p["plan_id"], pro.as_str());
    assert_eq!(p["plan_name"], "Pro");
    assert_eq!(body["params"]["granularity"], "day");

    // The default window (30 days) includes all of it; months give monthly buckets.
    let (status, body) = app.get("/insights/plan-growth").await;
    let d = ok(status, &body);
    assert_eq!(d["points"].as_array().unwrap().len(), 3 * 31, "{d}");
    let (status, body) = app.get("/insights/plan-growth?months=3").await;
    let d = ok(status, &body);
    let monthly = d["points"].as_array().unwrap();
    assert!(monthly.iter().all(|p| p["date"] == p["month"]), "{d}");
    assert!(
        monthly
            .iter()
            .all(|p| p["date"].as_str().unwrap().ends_with("-01T00:00:00Z")),
        "{d}"
    );
    let this_month = monthly.iter().rfind(|p| p["plan_key"] == "pro").unwrap();
    assert_eq!(this_month["subscribers"], 1, "{d}");
    assert_eq!(body["params"]["months"], 3);

    // Another environment has no memberships.
    let (status, body) = app
        .send(
            Method::GET,
            "/insights/plan-growth",
            None,
            Some(&staging_key),
        )
        .await;
    assert_eq!(ok(status, &body)["points"], json!([]));

    for (query, field) in [
        ("granularity=week", "granularity:"),
        ("months=0", "months:"),
        ("months=2&start_time=2026-01-01T00:00:00Z", "months:"),
        ("end_time=2026-01-01", "end_time:"),
        (
            "start_time=2024-01-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
            "end_time:",
        ),
    ] {
        let (status, body) = app.get(&format!("/insights/plan-growth?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
}
