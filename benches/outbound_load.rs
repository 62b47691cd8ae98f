//! Load generator and receiver for the outbound webhook benchmark (`benches/outbound.sh`).
//!
//! Usage: cargo bench --bench outbound_load -- <entitled url> <api key> <endpoints> <changes> <concurrency> <latency samples>
//!
//! It serves a receiver on a free local port (`POST /hook/{n}` answers 204 and records the
//! message's arrival), then measures, in one run:
//!
//! 1. **Baseline**: this process posting the same signed-size bodies straight to its own
//!    receiver with `concurrency` requests in flight (entitled's `webhooks.concurrency`): what
//!    one sender can push through HTTP on this machine, with no database.
//! 2. **Throughput**: `endpoints` webhooks are created, the receiver is *closed* (it holds
//!    every request it gets without answering), `changes` companies are created (each a
//!    `company.created` message for every endpoint; at most `concurrency` of them are in flight,
//!    held at the closed receiver, the rest wait in the outbox), then the receiver opens;
//!    deliveries per second from the opening to the last delivery received. (Messages are
//!    only written for active endpoints, so holding them at the receiver is how a backlog is
//!    built; `benches/outbound.sh` raises `webhooks.timeout_secs` so held attempts do not
//!    time out.)
//! 3. **Latency at idle**: one endpoint active, `latency samples` company creations one at a
//!    time, 100 ms apart; for each, the delay from the write's answer (its transaction has
//!    committed by then) to the first delivery attempt reaching the receiver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

#[derive(Default)]
struct Received {
    /// While false, requests wait for `opened` before they are answered.
    open: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
    /// Company name → when its first message arrived (latency phase).
    arrivals: Mutex<HashMap<String, Instant>>,
}

async fn hook(
    State(rx): State<Arc<Received>>,
    Path(_n): Path<u32>,
    body: axum::body::Bytes,
) -> StatusCode {
    loop {
        let opened = rx.opened.notified();
        if rx.open.load(Ordering::Acquire) {
            break;
        }
        opened.await;
    }
    let now = Instant::now();
    rx.count.fetch_add(1, Ordering::Relaxed);
    *rx.last.lock().expect("lock") = Some(now);
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        if let Some(name) = v["data"]["name"].as_str() {
            if name.starts_with("lat-") {
                rx.arrivals
                    .lock()
                    .expect("lock")
                    .entry(name.to_string())
                    .or_insert(now);
            }
        }
    }
    StatusCode::NO_CONTENT
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Schematic-Api-Key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_for(rx: &Received, count: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while rx.count.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 6 {
        // `cargo test --all-targets` runs this without arguments: nothing to do.
        eprintln!("usage: outbound_load <url> <api key> <endpoints> <changes> <concurrency> <latency samples> (run by benches/outbound.sh)");
        return;
    }
    let api = Api {
        http: reqwest::Client::new(),
        base: args[0].clone(),
        key: args[1].clone(),
    };
    let endpoints: u32 = args[2].parse().expect("endpoints");
    let changes: u32 = args[3].parse().expect("changes");
    let concurrency: usize = args[4].parse().expect("concurrency");
    let samples: u32 = args[5].parse().expect("latency samples");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(api, endpoints, changes, concurrency, samples));
}

async fn run(api: Api, endpoints: u32, changes: u32, concurrency: usize, samples: u32) {
    let rx = Arc::new(Received::default());
    rx.open.store(true, Ordering::Release);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new()
        .route("/hook/{n}", post(hook))
        .with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
    let hook_url = |n: u32| format!("http://127.0.0.1:{port}/hook/{n}");

    // 1. Baseline: the same number of deliveries, bodies of a message's size, straight to
    //    the receiver with `concurrency` in flight.
    let total = u64::from(endpoints) * u64::from(changes);
    let sample_body = json!({"id": "msg_0", "type": "company.created", "created_at": "2026-12-05T00:00:00Z",
        "environment": "development", "data": {"id": "comp_0", "name": "bench", "keys": {"id": "bench"},
        "traits": {}, "plans": [], "entitlements": [], "metrics": []}})
    .to_string();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, body) = (client.clone(), next.clone(), sample_body.clone());
        let urls: Vec<String> = (0..endpoints).map(hook_url).collect();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let r = client
                    .post(&urls[(i % urls.len() as u64) as usize])
                    .header("Content-Type", "application/json")
                    .header("webhook-id", format!("msg_{i}"))
                    .body(body.clone())
                    .send()
                    .await
                    .expect("baseline post");
                assert!(r.status().is_success());
            }
        }));
    }
    for t in tasks {
        t.await.expect("baseline task");
    }
    let baseline_secs = started.elapsed().as_secs_f64();
    println!(
        "baseline deliveries {total} seconds {baseline_secs:.2} rate {:.0}",
        total as f64 / baseline_secs
    );
    rx.count.store(0, Ordering::Relaxed);

    // 2. Throughput: a backlog built while the receiver is closed, then released at once.
    let mut ids = Vec::new();
    for n in 0..endpoints {
        let v = api
            .send(
                reqwest::Method::POST,
                "/webhooks",
                json!({"name": format!("bench {n}"), "url": hook_url(n), "request_types": ["company.created"]}),
            )
            .await;
        ids.push(v["data"]["id"].as_str().expect("webhook id").to_string());
    }
    // Webhooks created before the baseline's requests stopped counting: close the receiver.
    rx.open.store(false, Ordering::Release);
    let next = Arc::new(AtomicU64::new(0));
    let api = Arc::new(api);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let (api, next) = (api.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(changes) {
                    break;
                }
                api.send(
                    reqwest::Method::POST,
                    "/companies",
                    json!({"keys": {"id": format!("tp-{i}")}, "name": format!("tp-{i}")}),
                )
                .await;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    // Let the writes' outbox wake-ups settle, so the backlog is claimed against a closed door.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let released = Instant::now();
    rx.open.store(true, Ordering::Release);
    rx.opened.notify_waiters();
    let all = wait_for(&rx, total, Duration::from_secs(600)).await;
    let got = rx.count.load(Ordering::Relaxed);
    let last = rx.last.lock().expect("lock").unwrap_or(released);
    let secs = (last - released).as_secs_f64();
    println!(
        "entitled deliveries {got} of {total} seconds {secs:.2} rate {:.0}{}",
        got as f64 / secs,
        if all { "" } else { " (timed out)" }
    );

    // 3. Latency at idle: one endpoint left active.
    for id in &ids[1..] {
        api.send(
            reqwest::Method::DELETE,
            &format!("/webhooks/{id}"),
            Value::Null,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut answered = HashMap::new();
    for i in 0..samples {
        let name = format!("lat-{i}");
        api.send(
            reqwest::Method::POST,
            "/companies",
            json!({"keys": {"id": name}, "name": name}),
        )
        .await;
        answered.insert(name, Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrivals = rx.arrivals.lock().expect("lock").clone();
    let mut delays: Vec<f64> = answered
        .iter()
        .filter_map(|(name, at)| {
            arrivals
                .get(name)
                .map(|got| got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    if delays.is_empty() {
        println!("latency samples 0 of {samples}");
        return;
    }
    println!(
        "latency samples {} of {samples} p50_ms {:.1} p99_ms {:.1} max_ms {:.1}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}
