//! Credits end to end: types, bundles and plan grants; company grants, burndown by track
//! events, balances and the ledger; the grant_credits job across periods, plan changes and
//! expiry, run twice and from two processes.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use entitled::jobs::{self, Job, JobContext};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Setup {
    app: common::TestApp,
    credit: String,
    pro: String,
    free: String,
}

/// The demo catalog plus a credit type "tokens" that Pro's ai-tokens feature burns at 2 per
/// token.
async fn setup() -> Setup {
    let app = common::spawn_app().await;
    app.seed_demo_catalog().await;
    let credit = app
        .pro_ai_tokens_burn_credit(json!({"name": "Tokens", "description": "AI tokens"}), 2.0)
        .await;
    let pro = app.id_of("plans", "pro").await;
    let free = app.id_of("plans", "free").await;
    app.wait_for_flag("ai-tokens").await;
    Setup {
        app,
        credit,
        pro,
        free,
    }
}

async fn company_on(app: &common::TestApp, key: &str, plan: &str) -> String {
    app.create(
        "/companies",
        json!({"keys": {"id": key}, "base_plan_id": plan}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn grant(
    app: &common::TestApp,
    company: &str,
    credit: &str,
    quantity: f64,
    extra: Value,
) -> Value {
    let mut body = json!({"company_id": company, "credit_id": credit, "quantity": quantity, "reason": "purchased"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.create("/billing/credits/grants/company", body).await
}

async fn track(app: &common::TestApp, company: &str, quantity: i64) {
    app.create(
        "/events",
        json!({"event_type": "track", "body": {"event": "ai_tokens", "company": {"id": company}, "quantity": quantity}}),
    )
    .await;
}

async fn balance(app: &common::TestApp, company: &str) -> Value {
    let (s, b) = app
        .get(&format!("/billing/credits/balance?company_id={company}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["data"][0].clone()
}

/// Σ grants − usage − zero-outs from the ledger, in credits.
async fn ledger_balance(app: &common::TestApp, company: &str) -> f64 {
    let micros: Option<i64> = sqlx::query_scalar(
        "SELECT sum(CASE event_type WHEN 'grant' THEN amount_micros ELSE -amount_micros END)::bigint
         FROM credit_ledger WHERE company_id = $1",
    )
    .bind(company)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    micros.unwrap_or(0) as f64 / 1e6
}

#[tokio::test]
async fn burndown_stops_at_zero_and_every_movement_is_in_the_ledger() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "burn", &pro).await;
    let c = app.check("ai-tokens", json!({"id": "burn"})).await;
    assert_eq!(
        (c["value"].clone(), c["rule_type"].clone()),
        (json!(false), json!("plan_entitlement_usage_exceeded")),
        "no credits yet: {c}"
    );

    grant(&app, &company, &credit, 10.0, json!({})).await;
    let (_, detail) = app.get(&format!("/companies/{company}")).await;
    assert_eq!(
        detail["data"]["billing_credit_balances"][&credit], 10.0,
        "{detail}"
    );
    let c = app.check("ai-tokens", json!({"id": "burn"})).await;
    assert_eq!(c["value"], true, "{c}");
    assert_eq!(
        (
            c["entitlement"]["credit_remaining"].clone(),
            c["entitlement"]["credit_total"].clone()
        ),
        (json!(10.0), json!(10.0))
    );

    track(&app, "burn", 3).await; // 3 tokens × 2 = 6 credits
    let c = app.check("ai-tokens", json!({"id": "burn"})).await;
    assert_eq!(
        (
            c["value"].clone(),
            c["entitlement"]["credit_remaining"].clone(),
            c["entitlement"]["credit_used"].clone()
        ),
        (json!(true), json!(4.0), json!(6.0))
    );
    track(&app, "burn", 2).await; // 4 more: nothing left
    let c = app.check("ai-tokens", json!({"id": "burn"})).await;
    assert_eq!(c["value"], false, "{c}");
    track(&app, "burn", 5).await; // never below zero
    let b = balance(&app, &company).await;
    assert_eq!(
        (
            b["granted"].clone(),
            b["used"].clone(),
            b["remaining"].clone()
        ),
        (json!(10.0), json!(10.0), json!(0.0))
    );
    assert_eq!(b["credit_key"], "tokens");
    assert_eq!(ledger_balance(&app, &company).await, 0.0);
    let (_, ledger) = app
        .get(&format!("/billing/credits/ledger?company_id={company}"))
        .await;
    let rows = ledger["data"].as_array().unwrap();
    assert_eq!(
        rows.iter().filter(|r| r["event_type"] == "usage").count(),
        2,
        "{ledger}"
    );
    assert!(rows.iter().all(|r| r["amount"].as_f64().unwrap() > 0.0));
    assert!(rows
        .iter()
        .filter(|r| r["event_type"] == "usage")
        .all(|r| r["usage_event_id"].as_str().unwrap().starts_with("evnt_")));
}

#[tokio::test]
async fn plan_grants_burn_first_then_soonest_expiring() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "order", &pro).await;
    app.create("/billing/credits/plan-grants", json!({"plan_id": pro, "credit_id": credit, "credit_amount": 4, "reset_cadence": "monthly", "reset_start": "first_of_month"})).await;
    let ctx = job_context(&app).await;
    Job::GrantCredits.run_once(&ctx, Utc::now()).await.unwrap();
    let later = grant(
        &app,
        &company,
        &credit,
        10.0,
        json!({"expires_at": (Utc::now() + chrono::Duration::days(30)).to_rfc3339()}),
    )
    .await;
    let sooner = grant(
        &app,
        &company,
        &credit,
        10.0,
        json!({"expires_at": (Utc::now() + chrono::Duration::days(3)).to_rfc3339()}),
    )
    .await;
    track(&app, "order", 4).await; // 8 credits: 4 from the plan grant, 4 from the sooner grant
    let (_, grants) = app
        .get(&format!(
            "/billing/credits/grants/company/list?company_id={company}"
        ))
        .await;
    let used = |id: &Value| {
        grants["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == *id)
            .unwrap()["quantity_used"]
            .clone()
    };
    let plan_grant = grants["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["source"] == "plan")
        .unwrap()["id"]
        .clone();
    assert_eq!(
        (used(&plan_grant), used(&sooner["id"]), used(&later["id"])),
        (json!(4.0), json!(4.0), json!(0.0)),
        "{grants}"
    );
}

async fn job_context(app: &common::TestApp) -> JobContext {
    let (state, _listener) = entitled::app::build_state(app.config.clone())
        .await
        .unwrap();
    state.job_context(tokio_util::sync::CancellationToken::new())
}

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
}

async fn plan_grants_of(
    app: &common::TestApp,
    company: &str,
) -> Vec<(DateTime<Utc>, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT period_start, granted_micros - used_micros - zeroed_micros, zero_reason FROM credit_grants
         WHERE company_id = $1 AND source = 'plan' ORDER BY period_start",
    )
    .bind(company)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_job_grants_each_period_once_and_stops_on_plan_change() {
    let Setup {
        app,
        credit,
        pro,
        free,
    } = setup().await;
    let company = company_on(&app, "periods", &pro).await;
    app.create("/billing/credits/plan-grants", json!({"plan_id": pro, "credit_id": credit, "credit_amount": 100, "reset_cadence": "monthly", "reset_start": "first_of_month"})).await;
    let ctx = job_context(&app).await;

    // Twice in the same period: one grant.
    let s = Job::GrantCredits
        .run_once(&ctx, at(2026, 3, 15))
        .await
        .unwrap();
    assert_eq!(s["issued"], 1);
    let s = Job::GrantCredits
        .run_once(&ctx, at(2026, 3, 20))
        .await
        .unwrap();
    assert_eq!(s["issued"], 0);
    let g = plan_grants_of(&app, &company).await;
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap());

    // The next month: a new grant; the previous one is zeroed with plan_period_reset.
    let s = Job::GrantCredits
        .run_once(&ctx, at(2026, 4, 1))
        .await
        .unwrap();
    assert_eq!(
        (s["issued"].clone(), s["period_resets"].clone()),
        (json!(1), json!(1)),
        "{s}"
    );
    let g = plan_grants_of(&app, &company).await;
    assert_eq!(g.len(), 2);
    assert_eq!((g[0].1, g[0].2.as_deref()), (0, Some("plan_period_reset")));
    assert_eq!(g[1].1, 100_000_000);

    // Leaving the plan stops the grants: zeroed with plan_change, nothing new issued.
    app.create(
        "/companies",
        json!({"keys": {"id": "periods"}, "base_plan_id": free}),
    )
    .await;
    let s = Job::GrantCredits
        .run_once(&ctx, at(2026, 4, 2))
        .await
        .unwrap();
    assert_eq!(
        (s["issued"].clone(), s["plan_changes"].clone()),
        (json!(0), json!(1)),
        "{s}"
    );
    let g = plan_grants_of(&app, &company).await;
    assert_eq!(g[1].2.as_deref(), Some("plan_change"));
    assert_eq!(ledger_balance(&app, &company).await, 0.0);
}

#[tokio::test]
async fn billing_anchored_and_yearly_periods() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "anchored", &pro).await;
    // A subscription period starting on the 31st anchors the monthly credit periods.
    sqlx::query("UPDATE company_plans SET period_start = $2 WHERE company_id = $1")
        .bind(&company)
        .bind(Utc.with_ymd_and_hms(2026, 1, 31, 9, 30, 0).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    app.create("/billing/credits/plan-grants", json!({"plan_id": pro, "credit_id": credit, "credit_amount": 5, "reset_cadence": "monthly", "reset_start": "billing_period"})).await;
    let ctx = job_context(&app).await;
    Job::GrantCredits
        .run_once(&ctx, at(2026, 2, 27))
        .await
        .unwrap();
    Job::GrantCredits
        .run_once(&ctx, at(2026, 3, 1))
        .await
        .unwrap();
    let g = plan_grants_of(&app, &company).await;
    let starts: Vec<String> = g.iter().map(|x| x.0.to_rfc3339()).collect();
    assert_eq!(
        starts,
        ["2026-01-31T09:30:00+00:00", "2026-02-28T09:30:00+00:00"]
    );

    // Yearly on the calendar.
    let other = company_on(&app, "yearly", &pro).await;
    let (s, _) = app
        .put(
            &format!("/billing/credits/plan-grants/{}", plan_grant_id(&app).await),
            json!({"reset_cadence": "yearly", "reset_start": "first_of_month"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    Job::GrantCredits
        .run_once(&ctx, at(2026, 6, 1))
        .await
        .unwrap();
    Job::GrantCredits
        .run_once(&ctx, at(2026, 12, 31))
        .await
        .unwrap();
    Job::GrantCredits
        .run_once(&ctx, at(2027, 1, 1))
        .await
        .unwrap();
    let starts: Vec<String> = plan_grants_of(&app, &other)
        .await
        .iter()
        .map(|x| x.0.to_rfc3339())
        .collect();
    assert_eq!(
        starts,
        ["2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"]
    );
}

async fn plan_grant_id(app: &common::TestApp) -> String {
    sqlx::query_scalar("SELECT id FROM plan_credit_grants")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_grants_stop_counting_and_the_job_zeroes_them() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "exp", &pro).await;
    let expires = Utc::now() + chrono::Duration::milliseconds(1200);
    grant(
        &app,
        &company,
        &credit,
        10.0,
        json!({"expires_at": expires.to_rfc3339()}),
    )
    .await;
    assert_eq!(
        app.check("ai-tokens", json!({"id": "exp"})).await["value"],
        true
    );
    // From the expiry instant checks ignore it, before any job runs.
    common::eventually(Duration::from_secs(5), || async {
        (app.check("ai-tokens", json!({"id": "exp"})).await["value"] == false).then_some(())
    })
    .await;
    let ctx = job_context(&app).await;
    let s = Job::GrantCredits.run_once(&ctx, Utc::now()).await.unwrap();
    assert_eq!(s["expired"], 1);
    let b = balance(&app, &company).await;
    assert_eq!(
        (b["zeroed"].clone(), b["remaining"].clone()),
        (json!(10.0), json!(0.0))
    );
    assert_eq!(ledger_balance(&app, &company).await, 0.0);
    // Zero-out through the API, and its errors.
    let g = grant(&app, &company, &credit, 3.0, json!({})).await;
    let (s, z) = app
        .put(
            &format!(
                "/billing/credits/grants/{}/zero-out",
                g["id"].as_str().unwrap()
            ),
            json!({"reason": "refund"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{z}");
    assert_eq!(
        (
            z["data"]["quantity_remaining"].clone(),
            z["data"]["zero_reason"].clone()
        ),
        (json!(0.0), json!("refund"))
    );
    let (s, _) = app
        .put("/billing/credits/grants/bcgr_nope/zero-out", json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_tick_runs_once_across_two_processes() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    for i in 0..5 {
        company_on(&app, &format!("tick-{i}"), &pro).await;
    }
    app.create("/billing/credits/plan-grants", json!({"plan_id": pro, "credit_id": credit, "credit_amount": 1, "reset_cadence": "daily", "reset_start": "first_of_month"})).await;
    let a = job_context(&app).await;
    let b = job_context(&app).await;
    let tick = Utc::now();
    let (ra, rb) = tokio::join!(
        jobs::run_tick(&a, Job::GrantCredits, tick),
        jobs::run_tick(&b, Job::GrantCredits, tick)
    );
    assert!(
        ra.unwrap() ^ rb.unwrap(),
        "exactly one process runs the tick"
    );
    // And the job itself is idempotent when run concurrently anyway.
    let (x, y) = tokio::join!(
        Job::GrantCredits.run_once(&a, tick),
        Job::GrantCredits.run_once(&b, tick)
    );
    x.unwrap();
    y.unwrap();
    let grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_grants WHERE source = 'plan'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(grants, 5);
    // The server's own scheduler records ticks too: look at ours only.
    let runs: Vec<(String, String)> = sqlx::query_as(
        "SELECT status, instance FROM job_runs WHERE job = 'grant_credits' AND tick = $1",
    )
    .bind(tick)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, "succeeded");
}

#[tokio::test]
async fn parallel_burns_never_overspend() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "race", &pro).await;
    grant(&app, &company, &credit, 7.0, json!({})).await;
    grant(&app, &company, &credit, 5.0, json!({})).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let url = format!("{}/events", app.base);
        let key = app.key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let r = client.post(&url).header("X-Schematic-Api-Key", &key)
                    .json(&json!({"event_type": "track", "body": {"event": "ai_tokens", "company": {"id": "race"}, "quantity": 1}}))
                    .send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 40 events × 2 credits wanted; 12 granted: exactly 12 burned, none negative.
    let (used, granted, negative): (i64, i64, bool) = sqlx::query_as(
        "SELECT sum(used_micros)::bigint, sum(granted_micros)::bigint, bool_or(used_micros + zeroed_micros > granted_micros)
         FROM credit_grants WHERE company_id = $1",
    )
    .bind(&company)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((used, granted, negative), (12_000_000, 12_000_000, false));
    let ledger_usage: i64 = sqlx::query_scalar("SELECT sum(amount_micros)::bigint FROM credit_ledger WHERE company_id = $1 AND event_type = 'usage'")
        .bind(&company)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(ledger_usage, used);
}

#[tokio::test]
async fn ledger_invariant_holds_after_random_operations() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "prop", &pro).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for step in 0..60 {
        match rng.random_range(0..4) {
            0 => {
                grant(
                    &app,
                    &company,
                    &credit,
                    rng.random_range(1..20) as f64 / 2.0,
                    json!({}),
                )
                .await;
            }
            1 | 2 => track(&app, "prop", rng.random_range(1..6)).await,
            _ => {
                let ids: Vec<String> =
                    sqlx::query_scalar("SELECT id FROM credit_grants WHERE company_id = $1")
                        .bind(&company)
                        .fetch_all(&app.pool)
                        .await
                        .unwrap();
                if !ids.is_empty() {
                    let id = &ids[rng.random_range(0..ids.len())];
                    let (s, _) = app
                        .put(&format!("/billing/credits/grants/{id}/zero-out"), json!({}))
                        .await;
                    assert_eq!(s, StatusCode::OK);
                }
            }
        }
        let b = balance(&app, &company).await;
        if b.is_null() {
            continue;
        }
        let api = b["remaining"].as_f64().unwrap();
        let by_columns = b["granted"].as_f64().unwrap()
            - b["used"].as_f64().unwrap()
            - b["zeroed"].as_f64().unwrap();
        let by_ledger = ledger_balance(&app, &company).await;
        assert!(
            (api - by_ledger).abs() < 1e-9 && (by_columns - by_ledger).abs() < 1e-9,
            "step {step}: api {api}, columns {by_columns}, ledger {by_ledger}"
        );
        assert!(api >= 0.0);
    }
}

#[tokio::test]
async fn bad_credit_input_is_named() {
    let Setup {
        app, credit, pro, ..
    } = setup().await;
    let company = company_on(&app, "bad", &pro).await;
    let cases = [
        (
            "/billing/credits/grants/company",
            json!({"company_id": company, "credit_id": credit, "quantity": -1, "reason": "free"}),
            "quantity",
        ),
        (
            "/billing/credits/grants/company",
            json!({"company_id": company, "credit_id": credit, "quantity": 1, "reason": "gift"}),
            "reason",
        ),
        (
            "/billing/credits/grants/company",
            json!({"company_id": "comp_nope", "credit_id": credit, "quantity": 1, "reason": "free"}),
            "company_id",
        ),
        (
            "/billing/credits/grants/company",
            json!({"company_id": company, "credit_id": "bcrd_nope", "quantity": 1, "reason": "free"}),
            "credit_id",
        ),
        (
            "/billing/credits/grants/company",
            json!({"company_id": company, "credit_id": credit, "quantity": 1, "reason": "free", "expires_at": "2000-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            "/billing/credits/plan-grants",
            json!({"plan_id": pro, "credit_id": credit, "credit_amount": 5, "reset_cadence": "hourly"}),
            "reset_cadence",
        ),
        (
            "/billing/credits/plan-grants",
            json!({"plan_id": "plan_nope", "credit_id": credit, "credit_amount": 5}),
            "plan_id",
        ),
        (
            "/billing/credits/bundles",
            json!({"credit_id": credit, "name": "Pack", "quantity": 0}),
            "quantity",
        ),
        (
            "/billing/credits",
            json!({"description": "no name"}),
            "name",
        ),
    ];
    for (path, body, field) in cases {
        let (s, resp) = app.post(path, body.clone()).await;
        assert!(s.is_client_error(), "{path} {body} → {s}");
        assert!(
            resp["error"].as_str().unwrap().contains(field),
            "{path} {body} → {resp}"
        );
    }
    let (s, resp) = app
        .post(
            "/plan-entitlements",
            json!({"plan_id": pro, "feature_id": "x", "value_type": "credit"}),
        )
        .await;
    assert!(s.is_client_error(), "{resp}");
    // A bundle grants its quantity and expiry.
    let bundle = app
        .create(
            "/billing/credits/bundles",
            json!({"credit_id": credit, "name": "Starter pack", "quantity": 50, "expiry_days": 30}),
        )
        .await;
    let g = app.create("/billing/credits/grants/company", json!({"company_id": company, "credit_id": credit, "reason": "purchased", "bundle_id": bundle["id"]})).await;
    assert_eq!(g["quantity"], 50.0);
    assert!(g["expires_at"].is_string());
    // A credit type in use cannot be deleted.
    let (s, _) = app.delete(&format!("/billing/credits/{credit}")).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

/// A catalog file with credit types, a credit entitlement naming its credit by key, and a
/// plan credit grant: seeded once it creates them (and the job grants the plan's credits),
/// seeded again it changes nothing.
#[tokio::test]
async fn seeding_credits_and_plan_credit_grants() {
    let app = common::spawn_app().await;
    let dir = std::env::temp_dir().join(format!("entitled-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog-with-credits.json");
    std::fs::write(
        &file,
        json!({
            "features": [{"key": "ai-tokens", "name": "AI tokens", "feature_type": "event", "event_subtype": "ai_tokens"}],
            "plans": [{"key": "pro", "name": "Pro", "plan_type": "plan"}],
            "credits": [{"key": "tokens", "name": "Tokens", "description": "AI tokens"}],
            "plan_entitlements": [{"plan": "pro", "feature": "ai-tokens", "value_type": "credit", "value_credit_id": "tokens", "credit_consumption_rate": 2.0}],
            "plan_credit_grants": [{"plan": "pro", "credit": "tokens", "credit_amount": 500, "reset_cadence": "monthly", "reset_start": "first_of_month"}]
        })
        .to_string(),
    )
    .unwrap();
    let first = entitled::seed::seed_file(&app.pool, &file).await.unwrap();
    assert_eq!(
        (first.credits[0], first.plan_credit_grants[0]),
        (1, 1),
        "{first}"
    );
    let again = entitled::seed::seed_file(&app.pool, &file).await.unwrap();
    assert!(!again.changed(), "{again}");
    assert_eq!(
        (again.credits[2], again.plan_credit_grants[2]),
        (1, 1),
        "{again}"
    );

    let (s, credits) = app.get("/billing/credits").await;
    assert_eq!(s, StatusCode::OK, "{credits}");
    let credit = credits["data"][0].clone();
    assert_eq!(credit["name"], "Tokens", "{credits}");
    let credit_id = credit["id"].as_str().unwrap().to_string();
    let (_, ents) = app.get("/plan-entitlements").await;
    assert_eq!(ents["data"][0]["value_type"], "credit", "{ents}");
    assert_eq!(
        ents["data"][0]["value_credit_id"],
        credit_id.as_str(),
        "{ents}"
    );

    // A company on Pro receives the seeded grant from the job.
    let pro = app.id_of("plans", "pro").await;
    let company = company_on(&app, "seeded-co", &pro).await;
    let ctx = job_context(&app).await;
    Job::GrantCredits.run_once(&ctx, Utc::now()).await.unwrap();
    let b = balance(&app, &company).await;
    assert_eq!(b["credit_id"], credit_id.as_str(), "{b}");
    assert_eq!(b["remaining"], 500.0, "{b}");

    // A grant naming a credit that is not in the catalog is refused, naming it.
    std::fs::write(
        &file,
        json!({"plan_credit_grants": [{"plan": "pro", "credit": "nope", "credit_amount": 1}]})
            .to_string(),
    )
    .unwrap();
    let err = entitled::seed::seed_file(&app.pool, &file)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("plan_credit_grants[0]"), "{err}");
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
