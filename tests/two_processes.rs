//! Two `entitled serve` processes on one database: a write through one is visible to checks
//! on the other within a second (LISTEN/NOTIFY), and the CLI's api-key and seed commands
//! reach running servers the same way.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn entitled(db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_entitled"));
    cmd.env("DATABASE_URL", db_url)
        .env("ENTITLED_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG");
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn serve(db_url: &str) -> Server {
    let port = free_port();
    let child = entitled(db_url)
        .arg("serve")
        .env("ENTITLED_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{}/ready", server.base)).send().await {
            if r.status().is_success() {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

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
    let (db_url, _name) = common::fresh_database().await;
    run_ok({
        let mut c = entitled(&db_url);
        c.arg("migrate");
        c
    });
    let a = serve(&db_url).await;
    let b = serve(&db_url).await;

    // A key created by the CLI while both run is accepted by both.
    let out = run_ok({
        let mut c = entitled(&db_url);
        c.args([
            "api-key",
            "create",
            "--environment",
            "development",
            "--name",
            "two",
        ]);
        c
    });
    let key = out.lines().last().unwrap().trim().to_string();
    assert!(key.starts_with("sch_"), "{out}");
    // The seed reaches both too.
    run_ok({
        let mut c = entitled(&db_url);
        c.args(["seed", "fixtures/demo-catalog.toml"]);
        c
    });

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
