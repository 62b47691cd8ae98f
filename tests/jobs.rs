//! The scheduler and the expire_overrides job: ticks claimed once across replicas, and
//! expired overrides marked and recorded.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use entitled::jobs::{Job, JobContext};
use serde_json::json;

#[tokio::test]
async fn expire_overrides_marks_and_records_expiries() {
    let app = common::spawn_app_with("[schedule]\nexpire_overrides = \"\"\n").await;
    let company = app.create("/companies", json!({"keys": {"id": "x"}})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let feature = app
        .create(
            "/features",
            json!({"name": "Beta", "feature_type": "boolean"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let expires = Utc::now() + chrono::Duration::seconds(60);
    let ov = app
        .create("/company-overrides", json!({"company_id": company, "feature_id": feature, "value_type": "boolean", "value_bool": true, "expiration_date": expires.to_rfc3339()}))
        .await;
    let (state, _l) = entitled::app::build_state(app.config.clone())
        .await
        .unwrap();
    let ctx = JobContext::new(&state, tokio_util::sync::CancellationToken::new());

    // Before its expiration date: nothing to do.
    let s = Job::ExpireOverrides
        .run_once(&ctx, Utc::now())
        .await
        .unwrap();
    assert_eq!(s["expired"], 0);
    // At the expiration date (time injected): marked, recorded, out of live lists.
    let s = Job::ExpireOverrides.run_once(&ctx, expires).await.unwrap();
    assert_eq!(s["expired"], 1);
    let s = Job::ExpireOverrides.run_once(&ctx, expires).await.unwrap();
    assert_eq!(s["expired"], 0, "idempotent");
    let (_, one) = app
        .get(&format!(
            "/company-overrides/{}",
            ov["id"].as_str().unwrap()
        ))
        .await;
    assert!(one["data"]["expired_at"].is_string(), "{one}");
    let (_, live) = app
        .get(&format!(
            "/company-overrides?company_id={company}&without_expired=true"
        ))
        .await;
    assert_eq!(live["data"].as_array().unwrap().len(), 0);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM override_expiries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn two_servers_run_each_tick_once() {
    let every_second =
        "[schedule]\nexpire_overrides = \"* * * * * *\"\ngrant_credits = \"* * * * * *\"\n";
    let a = common::spawn_app_with(every_second).await;
    let b = common::spawn_on(&a.db_url, every_second).await;
    // A company on a plan that grants credits daily: however many ticks and servers, one grant.
    let plan = a
        .create("/plans", json!({"name": "Daily", "plan_type": "plan"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let credit = a
        .create("/billing/credits", json!({"name": "Daily credits"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.create("/billing/credits/plan-grants", json!({"plan_id": plan, "credit_id": credit, "credit_amount": 3, "reset_cadence": "daily", "reset_start": "first_of_month"})).await;
    let company = a
        .create(
            "/companies",
            json!({"keys": {"id": "ticks"}, "base_plan_id": plan}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    // Wait for a few ticks of both jobs.
    common::eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE status = 'succeeded'")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        (n >= 8).then_some(())
    })
    .await;
    let elapsed = started.elapsed().as_secs() as i64 + 2;
    let per_job: Vec<(String, i64)> =
        sqlx::query_as("SELECT job, count(*) FROM job_runs GROUP BY job ORDER BY job")
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(per_job.len(), 2, "{per_job:?}");
    for (job, runs) in per_job {
        // At most one run per second of schedule, though two servers tick every second.
        assert!(runs <= elapsed, "{job}: {runs} runs in ~{elapsed} s");
    }
    let grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_grants WHERE company_id = $1")
            .bind(&company)
            .fetch_one(&a.pool)
            .await
            .unwrap();
    assert_eq!(
        grants, 1,
        "one daily grant, whatever the number of ticks and servers"
    );
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE status = 'failed'")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    b.stop().await;
}
