//! The official `schematichq` Python SDK against a live server: upserts, lookups and
//! `check_flag` for plan, add-on and override cases. `scripts/test.sh` installs the SDK and
//! sets `ENTITLED_SDK_PYTHON`; without it this test uses `python3`, which must have it.

mod common;

use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn python_sdk_checks_flags_and_upserts_companies() {
    let app = common::spawn_app().await;
    entitled::seed::seed_file(&app.pool, Path::new("fixtures/demo-catalog.toml"))
        .await
        .unwrap();
    common::eventually(Duration::from_secs(2), || async {
        let (s, _) = app.post("/flags/sso/check", serde_json::json!({})).await;
        s.is_success().then_some(())
    })
    .await;
    let id = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let pro = id("SELECT id FROM plans WHERE key = 'pro'").await;
    let analytics = id("SELECT id FROM plans WHERE key = 'analytics'").await;
    let audit_log = id("SELECT id FROM features WHERE key = 'audit-log'").await;

    common::python::run_script(
        &app,
        "tests/sdk/python_sdk.py",
        &[pro, analytics, audit_log],
    )
    .await;
}

/// `track()` events flushed through the SDK's buffer to `/batch` move usage, and
/// `check_flag` flips to false at the limit.
#[tokio::test]
async fn python_sdk_track_buffer_moves_usage() {
    let app = common::spawn_app().await;
    entitled::seed::seed_file(&app.pool, Path::new("fixtures/demo-catalog.toml"))
        .await
        .unwrap();
    let free: String = sqlx::query_scalar("SELECT id FROM plans WHERE key = 'free'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    common::eventually(Duration::from_secs(2), || async {
        let (s, _) = app
            .post("/flags/reports/check", serde_json::json!({}))
            .await;
        s.is_success().then_some(())
    })
    .await;
    app.create(
        "/companies",
        serde_json::json!({"keys": {"id": "sdk-track"}, "base_plan_id": free}),
    )
    .await;
    common::python::run_script(&app, "tests/sdk/python_track.py", &[]).await;
}
