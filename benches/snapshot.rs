//! The snapshot's scale: heap per company and the full-reload time, with checks answered
//! from the old snapshot while a reload runs. `benches/snapshot.sh` fills a database with
//! companies and runs this against it.
//!
//! Usage: DATABASE_URL=… cargo bench --bench snapshot -- <companies> <checkers>
//!
//! Heap is measured with a counting allocator (live bytes, and the peak during a load), so
//! the figures are the snapshot's own, not the allocator's slack; RSS is reported beside. It
//! counts over mimalloc, the allocator the `entitled` binary ships with, so load times are
//! the binary's.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entitled::cache::Cache;
use entitled::config::Config;
use entitled::store;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to mimalloc unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = if new_size >= layout.size() {
                LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size()
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed) - layout.size()
                    + new_size
            };
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(expected), Some(checkers)) = (args.first(), args.get(1)) else {
        // `cargo test --all-targets` runs this without arguments: nothing to measure.
        eprintln!("usage: snapshot <companies> <checker-threads> (run by benches/snapshot.sh)");
        return Ok(());
    };
    let expected: usize = expected.parse()?;
    let checkers: usize = checkers.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(expected, checkers))
}

async fn run(expected: usize, checkers: usize) -> anyhow::Result<()> {
    let config = Config::load(None)?;
    let pool = store::db::pool(&config)?;
    let envs = store::environments::sync_environments(&pool, &config.environments).await?;
    let pairs: Vec<_> = envs
        .into_iter()
        .zip(config.environments.iter().cloned())
        .collect();

    // 1. The first load: what a replica holds, and what it takes to get there.
    let (live0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    PEAK.store(live0, Ordering::Relaxed);
    let started = Instant::now();
    let cache = Cache::load(pool.clone(), &pairs).await?;
    let load_time = started.elapsed();
    let (live1, rss1, peak) = (
        LIVE.load(Ordering::Relaxed),
        rss_bytes(),
        PEAK.load(Ordering::Relaxed),
    );
    let env = cache.default_env().expect("an environment").clone();
    let companies = env.company_count();
    anyhow::ensure!(
        companies == expected,
        "loaded {companies} companies, expected {expected}"
    );
    let per_company = (live1 - live0) as f64 / companies as f64;

    // 2. A full reload while checks run: every check must answer (from the old snapshot
    // until the swap), and none may wait on the reload.
    let catalog = cache.catalog();
    let flag = catalog
        .flags_by_key
        .get("bench-flag-1")
        .expect("benches/bench-catalog.toml seeded")
        .clone();
    drop(catalog);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..checkers)
        .map(|t| {
            let (cache, env, flag) = (cache.clone(), env.clone(), flag.clone());
            let (stop, answered, wrong, slowest_us) = (
                stop.clone(),
                answered.clone(),
                wrong.clone(),
                slowest_us.clone(),
            );
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let keys = vec![("id".to_string(), format!("co-{}", i % expected + 1))];
                    let started = Instant::now();
                    let catalog = cache.catalog();
                    let o = env.check(&catalog, &flag, &keys, &Vec::new(), chrono::Utc::now());
                    let took = started.elapsed().as_micros() as u64;
                    slowest_us.fetch_max(took, Ordering::Relaxed);
                    answered.fetch_add(1, Ordering::Relaxed);
                    if !o.evaluation.value || o.company_id.is_none() {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    i += checkers;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = answered.load(Ordering::Relaxed);
    slowest_us.store(0, Ordering::Relaxed);
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let started = Instant::now();
    cache.reload_all().await?;
    let reload_time = started.elapsed();
    let reload_peak = PEAK.load(Ordering::Relaxed);
    let during = answered.load(Ordering::Relaxed) - before;
    let slowest = slowest_us.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let wrong = wrong.load(Ordering::Relaxed);

    println!("| companies | heap per company | snapshot heap | RSS growth | peak heap during load | first load | full reload | checks during reload | slowest check during reload |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {companies} | {per_company:.0} B | {} | {} | {} | {:.2} s | {:.2} s | {during} ({:.0}/s, {wrong} wrong) | {:.1} ms |",
        mib(live1 - live0),
        mib(rss1.saturating_sub(rss0)),
        mib(peak - live0),
        load_time.as_secs_f64(),
        reload_time.as_secs_f64(),
        during as f64 / reload_time.as_secs_f64(),
        slowest as f64 / 1000.0,
    );
    eprintln!(
        "peak heap during the reload (old and new snapshot): {}",
        mib(reload_peak)
    );
    anyhow::ensure!(
        checkers == 0 || during > 0,
        "no check answered during the reload"
    );
    anyhow::ensure!(
        wrong == 0,
        "{wrong} checks answered wrong during the reload"
    );
    Ok(())
}
