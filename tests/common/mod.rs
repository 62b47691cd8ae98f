//! Test harness: a fresh Postgres database per test (dropped even when the test panics), the
//! real server on port 0, and an HTTP client. Postgres comes from `ENTITLED_TEST_DATABASE_URL`
//! (default: the local cluster). Beside it: `process` (the `entitled` binary as a child),
//! `proxy` (a Postgres proxy to cut), `python` (the SDK scripts) and `stripe`.
#![allow(dead_code)]

pub mod process;
pub mod proxy;
pub mod python;
pub mod receiver;
pub mod stripe;
pub mod webdriver;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use entitled::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub fn server_url() -> String {
    std::env::var("ENTITLED_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
        .trim_end_matches('/')
        .to_string()
}

/// A database of its own for one test, dropped (`WITH (FORCE)`, so open connections do not
/// keep it) when the guard goes: at the end of the test, and also when it panics.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

/// Creates an empty database; keep the guard for as long as the test uses it.
pub async fn fresh_database() -> TestDb {
    let name = format!(
        "entitled_test_{}",
        entitled::ids::new_id("db").to_lowercase()
    );
    let admin = format!("{}/postgres", server_url());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect to the test Postgres (set ENTITLED_TEST_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("create test database");
    TestDb {
        url: format!("{}/{name}", server_url()),
        name,
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime (the test's) or outside any (a
        // test that built its own): a thread of its own with a runtime of its own works in
        // both. Best effort: a failure here must not turn a passing test into a failing one,
        // nor a panic into an abort.
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let admin = format!("{}/postgres", server_url());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            })
            .map_err(|e| format!("{name}: {e}"))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database not dropped: {e}"),
            Err(_) => eprintln!("test database not dropped: the dropping thread panicked"),
        }
    }
}

/// A config for tests: defaults, then `extra` TOML, pointed at `db_url`, listening on port 0.
pub fn test_config(db_url: &str, extra: &str) -> Config {
    let vars = vec![
        ("DATABASE_URL".to_string(), db_url.to_string()),
        (
            "ENTITLED_SERVER__LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        (
            "ENTITLED_DATABASE__MAX_CONNECTIONS".to_string(),
            "5".to_string(),
        ),
    ];
    Config::from_layers(Some(("test.toml", extra)), &vars).expect("valid test config")
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db_url: String,
    /// A read-write key for the default environment.
    pub key: String,
    pub readonly_key: String,
    pub client: reqwest::Client,
    pub pool: sqlx::PgPool,
    pub config: Config,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The database this server was spawned on, when the app owns it. Last, so that it is
    /// dropped after everything else.
    db: Option<TestDb>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Spawns a server with `extra` configuration TOML on a fresh database.
pub async fn spawn_app_with(extra: &str) -> TestApp {
    let db = fresh_database().await;
    let mut app = spawn_on(&db.url, extra).await;
    app.db = Some(db);
    app
}

/// Spawns a server on an existing database (a second replica, say).
pub async fn spawn_on(db_url: &str, extra: &str) -> TestApp {
    let config = test_config(db_url, extra);
    let pool = entitled::store::db::pool(&config).unwrap();
    entitled::store::db::migrate(&pool).await.unwrap();
    let envs = entitled::store::environments::sync_environments(&pool, &config.environments)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let (_, key) = entitled::store::api_keys::create(&mut conn, &envs[0].id, "test", false)
        .await
        .unwrap();
    let (_, readonly_key) =
        entitled::store::api_keys::create(&mut conn, &envs[0].id, "test-ro", true)
            .await
            .unwrap();
    drop(conn);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(entitled::app::run(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let app = TestApp {
        addr,
        base: format!("http://{addr}"),
        db_url: db_url.to_string(),
        key,
        readonly_key,
        client: reqwest::Client::new(),
        pool,
        config,
        shutdown,
        handle: Some(handle),
        db: None,
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(20), || async {
            let r = self
                .client
                .get(format!("{}/ready", self.base))
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
    }

    /// Sends a request with `key` (or none) and returns the status and JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("X-Schematic-Api-Key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None, Some(&self.key)).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(&body), Some(&self.key))
            .await
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::PUT, path, Some(&body), Some(&self.key))
            .await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::DELETE, path, None, Some(&self.key)).await
    }

    /// POST that must succeed; returns `data`.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (status, json) = self.post(path, body.clone()).await;
        assert!(status.is_success(), "POST {path} {body} → {status}: {json}");
        json["data"].clone()
    }

    /// The Prometheus text of `GET /metrics`.
    #[allow(dead_code)]
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await;
        resp.expect("GET /metrics").text().await.unwrap_or_default()
    }

    /// The sum of the series of `/metrics` whose line starts with `prefix`
    /// (`entitled_checks_total{` adds every outcome).
    #[allow(dead_code)]
    pub async fn metric_sum(&self, prefix: &str) -> u64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Checks a flag for company keys and returns the check result.
    pub async fn check(&self, flag: &str, company: Value) -> Value {
        let (status, json) = self
            .post(
                &format!("/flags/{flag}/check"),
                serde_json::json!({"company": company, "user": null}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "check {flag}: {json}");
        json["data"].clone()
    }

    /// Shuts the server down gracefully (running jobs finish) and drops its database if it
    /// owns one.
    pub async fn stop(mut self) {
        self.stop_server().await;
    }

    /// Shuts the server down gracefully but keeps the app: its pool and its database stay,
    /// for assertions on what the server left behind.
    pub async fn stop_server(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
        // `db` (a field) drops after this, taking the database with it.
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
/// Creates a read-write key for the environment `env_key` and tells running servers, as
/// `entitled api-key create` does. Returns the secret.
#[allow(dead_code)]
pub async fn create_api_key(pool: &sqlx::PgPool, env_key: &str) -> String {
    let env_id: String = sqlx::query_scalar("SELECT id FROM environments WHERE key = $1")
        .bind(env_key)
        .fetch_one(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let (_, key) = entitled::store::api_keys::create(&mut tx, &env_id, env_key, false)
        .await
        .unwrap();
    entitled::changes::Publisher::detached("test")
        .commit(tx, &[entitled::changes::Change::ApiKeys])
        .await
        .unwrap();
    key
}

impl TestApp {
    /// Seeds `fixtures/demo-catalog.toml`, waits until the server's snapshot has it, and
    /// returns the id of its `pro` plan.
    pub async fn seed_demo(&self) -> String {
        self.seed_demo_until("custom-branding").await;
        self.id_of("plans", "pro").await
    }

    /// Seeds `fixtures/demo-catalog.toml` and returns what the seed changed.
    pub async fn seed_demo_catalog(&self) -> entitled::seed::Summary {
        entitled::seed::seed_file(
            &self.pool,
            std::path::Path::new("fixtures/demo-catalog.toml"),
        )
        .await
        .unwrap()
    }

    /// Seeds `fixtures/demo-catalog.toml` and waits until the server's snapshot answers
    /// a check of `flag`.
    pub async fn seed_demo_until(&self, flag: &str) {
        self.seed_demo_catalog().await;
        self.wait_for_flag(flag).await;
    }

    /// Waits (at most two seconds) until `POST /flags/{flag}/check` succeeds: the server's
    /// snapshot has the flag.
    pub async fn wait_for_flag(&self, flag: &str) {
        eventually(Duration::from_secs(2), || async {
            let (s, _) = self
                .post(&format!("/flags/{flag}/check"), serde_json::json!({}))
                .await;
            s.is_success().then_some(())
        })
        .await;
    }

    /// The id of the row of `table` (`plans`, `features`, `flags`, …) with `key`.
    pub async fn id_of(&self, table: &str, key: &str) -> String {
        sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE key = $1"))
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Creates a credit type from `credit` (the `POST /billing/credits` body) and makes Pro's
    /// `ai-tokens` entitlement burn it at `rate` credits a token; returns the credit's id.
    pub async fn pro_ai_tokens_burn_credit(&self, credit: Value, rate: f64) -> String {
        let credit = self.create("/billing/credits", credit).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let ent: String = sqlx::query_scalar(
            "SELECT id FROM plan_entitlements WHERE plan_id = (SELECT id FROM plans WHERE key = 'pro') \
             AND feature_id = (SELECT id FROM features WHERE key = 'ai-tokens')",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap();
        let (s, body) = self
            .put(
                &format!("/plan-entitlements/{ent}"),
                serde_json::json!({"value_type": "credit", "value_credit_id": credit,
                                   "credit_consumption_rate": rate}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        credit
    }
}
