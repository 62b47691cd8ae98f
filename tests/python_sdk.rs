//! The official `schematichq` Python SDK against a live server: upserts, lookups and
//! `check_flag` for plan, add-on and override cases. `scripts/test.sh` installs the SDK and
//! sets `ENTITLED_SDK_PYTHON`; without it this test uses `python3`, which must have it.

mod common;

#[tokio::test]
async fn python_sdk_checks_flags_and_upserts_companies() {
    let app = common::spawn_app().await;
    app.seed_demo_until("sso").await;
    let pro = app.id_of("plans", "pro").await;
    let analytics = app.id_of("plans", "analytics").await;
    let audit_log = app.id_of("features", "audit-log").await;

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
    app.seed_demo_until("reports").await;
    let free = app.id_of("plans", "free").await;
    app.create(
        "/companies",
        serde_json::json!({"keys": {"id": "sdk-track"}, "base_plan_id": free}),
    )
    .await;
    common::python::run_script(&app, "tests/sdk/python_track.py", &[]).await;
}
