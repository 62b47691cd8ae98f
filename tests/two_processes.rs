//! Two `entitled serve` processes on one database: a write through one is visible to checks
//! on the other within a second (LISTEN/NOTIFY), and the CLI's api-key and seed commands
//! reach running servers the same way.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::process::{self, entitled};

async fn post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let r = client
        .post(format!("{base}{path}"))
        .header("X-Schematic-Api-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let json: serde_json::Value = r.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {json}");
    json
}

#[tokio::test]
async fn two_serve_processes_share_changes_within_a_second() {
    let db = common::fresh_database().await;
    let cli = |args: &[&str]| {
        let mut c = entitled(&db.url);
        c.args(args);
        process::run_ok(c)
    };
    cli(&["migrate"]).await;
    let a = process::serve(entitled(&db.url)).await;
    let b = process::serve(entitled(&db.url)).await;

    // A key created by the CLI while both run is accepted by both.
    let out = cli(&[
        "api-key",
        "create",
        "--environment",
        "development",
        "--name",
        "two",
    ])
    .await;
    let key = out.lines().last().unwrap().trim().to_string();
    assert!(key.starts_with("sch_"), "{out}");
    // The seed reaches both too.
    cli(&["seed", "fixtures/demo-catalog.toml"]).await;

    let client = reqwest::Client::new();
    let check = |base: String| {
        let client = client.clone();
        let key = key.clone();
        async move {
            let r = client
                .post(format!("{base}/flags/sso/check"))
                .header("X-Schematic-Api-Key", &key)
                .json(&json!({"company": {"id": "globex"}}))
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            let body: serde_json::Value = r.json().await.ok()?;
            body["data"]["value"].as_bool()
        }
    };
    common::eventually(Duration::from_secs(1), || async {
        check(b.base.clone()).await.map(|_| ())
    })
    .await;
    assert_eq!(check(b.base.clone()).await, Some(false));

    // Put the company on Enterprise through A; B answers true within a second.
    let plans = client
        .get(format!("{}/plans?q=Enterprise", a.base))
        .header("X-Schematic-Api-Key", &key)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let enterprise = plans["data"][0]["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    post(
        &client,
        &a.base,
        &key,
        "/companies",
        json!({"keys": {"id": "globex"}, "base_plan_id": enterprise}),
    )
    .await;
    common::eventually(Duration::from_secs(1), || async {
        (check(b.base.clone()).await == Some(true)).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
}
