//! The fake Stripe API (`tests/fake_stripe/mod.rs`) as a standalone server, populated with a
//! large generated account, for benchmarking a reconciliation job against it.
//!
//! Usage: cargo bench --bench fake_stripe_server -- serve (or the built binary with `serve`;
//! without it, as `cargo test --all-targets` runs it, it exits at once), configured by
//! environment variables: `CUSTOMERS` (default 100000; one active subscription each),
//! `PRODUCTS` (default 5; one monthly price each), `API_KEY` (default `sk_test_bench`),
//! `METERED` (instead of the generated account: a metered one with that many customers, see
//! `FakeStripe::put_metered_account`; the summary then reports the meter events accepted),
//! `PORT` (default 0: any free port), and optionally `FAIL_EVERY` (every nth request answers
//! 429 with `Retry-After: 1`) and `LATENCY_MS` (added to every answer).
//!
//! When ready it prints exactly one line on stdout, `FAKE_STRIPE_URL=http://127.0.0.1:<port>`.
//! Population time and memory go to stderr. On SIGTERM or ctrl-c it prints a summary to
//! stderr (requests in total, per route and per status, and the most requests in any one
//! second) and exits.

#[path = "../tests/fake_stripe/mod.rs"]
mod fake_stripe;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use fake_stripe::{Failure, FakeStripe, Populate};

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

/// This process's resident set size, from /proc (Linux), if readable.
fn rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.trim_start_matches("VmRSS:").trim().to_string())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() != Some("serve") {
        // `cargo test --all-targets` runs bench binaries without arguments: nothing to serve.
        eprintln!("usage: fake_stripe_server serve (configured by CUSTOMERS, PRODUCTS, API_KEY, PORT; run by benches/reconcile.sh)");
        return;
    }
    let customers: usize = var("CUSTOMERS", 100_000);
    let products: usize = var("PRODUCTS", 5);
    let api_key: String = var("API_KEY", "sk_test_bench".to_string());
    let port: u16 = var("PORT", 0);
    let fail_every: usize = var("FAIL_EVERY", 0);
    let latency_ms: u64 = var("LATENCY_MS", 0);
    let metered: usize = var("METERED", 0);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let fake = FakeStripe::new(&api_key);
        let started = Instant::now();
        if metered > 0 {
            fake.put_metered_account(metered);
        } else {
            fake.populate(&Populate {
                customers,
                products,
                ..Populate::default()
            });
        }
        eprintln!(
            "fake_stripe_server: populated {customers} customers, {customers} subscriptions, \
             {products} products and prices in {:.3} s; RSS {}",
            started.elapsed().as_secs_f64(),
            rss().unwrap_or_else(|| "unknown".into())
        );
        if fail_every > 0 {
            fake.fail_every(
                fail_every,
                Failure::RateLimited {
                    retry_after_secs: 1,
                },
            );
        }
        fake.set_latency(Duration::from_millis(latency_ms));
        let fake = fake.serve_on(&format!("127.0.0.1:{port}")).await;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "FAKE_STRIPE_URL={}", fake.base).unwrap();
        stdout.flush().unwrap();

        shutdown_signal().await;

        let log = fake.requests();
        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        for r in &log {
            *statuses.entry(r.status).or_default() += 1;
        }
        eprintln!("fake_stripe_server: {} requests in total", log.len());
        for (route, n) in fake.requests_per_route() {
            eprintln!("  {route}: {n}");
        }
        for (status, n) in statuses {
            eprintln!("  status {status}: {n}");
        }
        eprintln!(
            "  max requests in any 1 s window: {}",
            fake.max_requests_in_any_window(Duration::from_secs(1))
        );
        eprintln!("  RSS {}", rss().unwrap_or_else(|| "unknown".into()));
        let accepted = fake.meter_events();
        if let (Some(first), Some(last)) = (accepted.first(), accepted.last()) {
            let secs = last.at.duration_since(first.at).as_secs_f64().max(1e-3);
            let total: f64 = accepted.iter().map(|e| e.value).sum();
            eprintln!(
                "  meter events accepted: {} (value {total}), {:.0}/s from the first to the last; \
                 overlapping requests refused: {}; duplicate identifiers: {}",
                accepted.len(),
                accepted.len() as f64 / secs,
                fake.meter_overlaps(),
                fake.meter_duplicates()
            );
            println!(
                "METER_EVENTS_ACCEPTED={} METER_VALUE={total} METER_RATE={:.0}",
                accepted.len(),
                accepted.len() as f64 / secs
            );
        }
    });
}
