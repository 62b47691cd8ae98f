//! The scheduler and the expire_overrides job: ticks claimed once across replicas, and
//! expired overrides marked and recorded.

mod common;
mod fake_stripe;

use std::time::Duration;

use chrono::Utc;
use entitled::jobs::Job;
use serde_json::json;

/// Every job off: the tests that call `run_once` themselves leave the scheduler's metrics
/// (process-wide) to `two_servers_run_each_tick_once`.
const UNSCHEDULED: &str = "[schedule]\nreconcile = \"\"\nexpire_overrides = \"\"\n\
                           grant_credits = \"\"\nretry_inbox = \"\"\n";

#[tokio::test]
async fn expire_overrides_marks_and_records_expiries() {
    let app = common::spawn_app_with(UNSCHEDULED).await;
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
    let ctx = state.job_context(tokio_util::sync::CancellationToken::new());

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
    // Every job every second, reconcile included (against the fake Stripe).
    let fake = fake_stripe::FakeStripe::start(common::stripe::API_KEY).await;
    for i in 0..5 {
        fake.put(common::stripe::customer(
            &format!("cus_tick_{i}"),
            &format!("Tick {i}"),
            json!({}),
        ));
    }
    let every_second = format!(
        "{}[schedule]\nreconcile = \"* * * * * *\"\nexpire_overrides = \"* * * * * *\"\n\
         grant_credits = \"* * * * * *\"\nretry_inbox = \"* * * * * *\"\n",
        common::stripe::config(&format!(
            "stripe_api_key = \"{}\"\nstripe_api_base = \"{}\"",
            common::stripe::API_KEY,
            fake.base
        ))
    );
    let mut a = common::spawn_app_with(&every_second).await;
    let b = common::spawn_on(&a.db_url, &every_second).await;
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
    // Wait for a few ticks of every job.
    common::eventually(Duration::from_secs(15), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT job) FILTER (WHERE n >= 3) FROM
                 (SELECT job, count(*) AS n FROM job_runs WHERE status = 'succeeded' GROUP BY job) j",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap();
        (n == 4).then_some(())
    })
    .await;
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

    // Both servers stop gracefully: a tick under way finishes and records its outcome.
    b.stop().await;
    a.stop_server().await;
    let failed: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT job, error FROM job_runs WHERE status = 'failed'")
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(failed, []);
    // Each tick ran once: across both servers (one process, so one set of metrics), the
    // job bodies that ran are exactly the ticks recorded as run, and no tick is left
    // half-done. A tick run by both servers would count twice here.
    let per_job: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT job, count(*) FILTER (WHERE status = 'running'),
                count(*) FILTER (WHERE status <> 'running' AND NOT coalesce(summary ? 'skipped', false))
         FROM job_runs GROUP BY job ORDER BY job",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(per_job.len(), 4, "{per_job:?}");
    for (job, running, ran) in per_job {
        assert_eq!(running, 0, "{job}: a tick left running");
        let name = entitled::jobs::JOBS
            .iter()
            .map(|j| j.name())
            .find(|n| *n == job)
            .expect("a known job");
        let executed = entitled::metrics::JOB_RUNS.get([name, "ok"])
            + entitled::metrics::JOB_RUNS.get([name, "error"]);
        assert_eq!(executed, ran as u64, "{job}: bodies run vs ticks run");
    }
    // Every reconcile tick that ran (rather than finding the previous run still going) made
    // exactly one run.
    let ran: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_runs WHERE job = 'reconcile' AND NOT coalesce(summary ? 'skipped', false)",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stripe_reconcile_runs WHERE trigger = 'schedule'")
            .fetch_one(&a.pool)
            .await
            .unwrap();
    assert_eq!(ran, runs);
    assert!(runs >= 3, "{runs}");
    assert_eq!(
        a.count("SELECT count(*) FROM companies").await,
        6,
        "five Stripe customers and the test's own company, each once"
    );
}

#[tokio::test]
async fn retry_inbox_applies_failed_events_once_their_backoff_passed() {
    let fake = fake_stripe::FakeStripe::start(common::stripe::API_KEY).await;
    let config = format!(
        "{}{UNSCHEDULED}",
        common::stripe::config(&format!(
            "stripe_api_key = \"{}\"\nstripe_api_base = \"{}\"",
            common::stripe::API_KEY,
            fake.base
        ))
    );
    let app = common::spawn_app_with(&config).await;
    // Stripe refuses the refetch and says not to retry: the event fails.
    let sub = common::stripe::subscription(
        "sub_retry",
        "cus_retry",
        "active",
        &[common::stripe::Item {
            id: "si_retry",
            price: "price_x",
            product: "prod_x",
            quantity: 1,
        }],
    );
    fake.put(sub.clone());
    fake.put(common::stripe::customer("cus_retry", "Retry", json!({})));
    // Until told otherwise, every request fails.
    fake.fail_every(1, fake_stripe::Failure::ServerErrorNoRetry);
    let event = common::stripe::event(
        "customer.subscription.updated",
        "evt_retry_job",
        common::stripe::now(),
        sub,
    );
    assert_eq!(app.deliver(&event).await, "failed");

    let (state, _l) = entitled::app::build_state(app.config.clone())
        .await
        .unwrap();
    let ctx = state.job_context(tokio_util::sync::CancellationToken::new());
    // Its backoff has not passed: nothing to do.
    let s = Job::RetryInbox.run_once(&ctx, Utc::now()).await.unwrap();
    assert_eq!(s["processed"], 0);
    assert_eq!(
        app.event_status("evt_retry_job").await.as_deref(),
        Some("failed")
    );
    // Once Stripe answers again and the backoff has passed, the job applies it.
    fake.fail_every(0, fake_stripe::Failure::ServerErrorNoRetry);
    sqlx::query("UPDATE stripe_events SET next_attempt_at = now() WHERE id = 'evt_retry_job'")
        .execute(&app.pool)
        .await
        .unwrap();
    let s = Job::RetryInbox.run_once(&ctx, Utc::now()).await.unwrap();
    assert_eq!(s["processed"], 1);
    assert_eq!(
        app.event_status("evt_retry_job").await.as_deref(),
        Some("applied")
    );
}
