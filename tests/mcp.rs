//! MCP at `POST /mcp`, driven by an independent client: the official `mcp` Python SDK
//! (`tests/sdk/mcp_client.py`), over the 2026 stateless protocol and the legacy handshake,
//! with a read-write key, a readonly key and an unknown one. `scripts/test.sh` installs the
//! SDK and sets `ENTITLED_SDK_PYTHON`.

mod common;

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn the_python_mcp_client_lists_and_calls_every_tool() {
    let app = common::spawn_app().await;
    entitled::seed::seed_file(&app.pool, Path::new("fixtures/demo-catalog.toml"))
        .await
        .unwrap();
    common::eventually(Duration::from_secs(2), || async {
        let (s, _) = app.post("/flags/api-calls/check", json!({})).await;
        s.is_success().then_some(())
    })
    .await;
    let pro: String = sqlx::query_scalar("SELECT id FROM plans WHERE key = 'pro'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    common::python::run_script(
        &app,
        "tests/sdk/mcp_client.py",
        &[app.readonly_key.clone(), pro],
    )
    .await;
}

#[tokio::test]
async fn mcp_needs_a_key_and_speaks_json_rpc() {
    let app = common::spawn_app().await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let (status, body) = app.send(Method::POST, "/mcp", Some(&init), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("API key"),
        "{body}"
    );

    // With a key: a JSON answer naming the server and its tools capability.
    let resp = app
        .client
        .post(format!("{}/mcp", app.base))
        .header("Authorization", format!("Bearer {}", app.key))
        .header("Accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["result"]["serverInfo"]["name"], "entitled", "{body}");
    assert!(
        body["result"]["capabilities"]["tools"].is_object(),
        "{body}"
    );
}
