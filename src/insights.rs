//! Check counts for insights. Checks are answered from memory and must stay cheap, so each
//! one only adds to an atomic counter per (environment, flag); a background task moves the
//! counts into hourly buckets in Postgres (`flag_check_counts`) every
//! `insights.check_flush_secs`, and once more at shutdown. A flush that fails puts its counts
//! back, so they go out with the next one; a process that dies loses at most one interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, DurationRound, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sqlx::PgPool;

pub use crate::store::insights::Drained;

/// Shards per flag: a check adds to its thread's shard (see `metrics::shard`), so the two
/// worker threads answering checks never write the same cache line.
const SHARDS: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    checks: AtomicU64,
    allowed: AtomicU64,
}

#[derive(Default)]
struct FlagCounts {
    shards: [Shard; SHARDS],
}

impl FlagCounts {
    fn add(&self, checks: u64, allowed: u64) {
        let s = &self.shards[crate::metrics::shard() % SHARDS];
        s.checks.fetch_add(checks, Ordering::Relaxed);
        if allowed > 0 {
            s.allowed.fetch_add(allowed, Ordering::Relaxed);
        }
    }

    /// The counts so far, leaving zeros.
    fn take(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(c, a), s| {
            (
                c + s.checks.swap(0, Ordering::Relaxed),
                a + s.allowed.swap(0, Ordering::Relaxed),
            )
        })
    }
}

type FlagMap = HashMap<String, Arc<FlagCounts>>;

struct EnvCounts {
    environment_id: String,
    /// Flag id → counters. Read lock-free on every check; replaced (copy on write) only the
    /// first time a flag is checked in this process.
    flags: ArcSwap<FlagMap>,
    grow: Mutex<()>,
}

/// Per-process check counters, by environment and flag.
pub struct CheckCounts {
    envs: Vec<EnvCounts>,
}

impl CheckCounts {
    pub fn new(environment_ids: impl IntoIterator<Item = String>) -> Self {
        CheckCounts {
            envs: environment_ids
                .into_iter()
                .map(|environment_id| EnvCounts {
                    environment_id,
                    flags: ArcSwap::from_pointee(HashMap::new()),
                    grow: Mutex::new(()),
                })
                .collect(),
        }
    }

    /// Counts one check. No lock and no allocation once the flag has been seen.
    pub fn record(&self, environment_id: &str, flag_id: &str, allowed: bool) {
        self.env(environment_id).record(flag_id, allowed);
    }

    /// The counters of one environment, for a request that checks many flags: the
    /// environment is found and its flag map loaded once.
    pub fn env(&self, environment_id: &str) -> EnvRecorder<'_> {
        let env = self
            .envs
            .iter()
            .find(|e| e.environment_id == environment_id);
        EnvRecorder {
            flags: env.map(|e| (e, e.flags.load())),
        }
    }

    /// Takes every non-zero count, leaving zeros.
    pub fn drain(&self) -> Vec<Drained> {
        let mut out = Vec::new();
        for env in &self.envs {
            for (flag_id, c) in env.flags.load().iter() {
                let (checks, allowed) = c.take();
                if checks > 0 || allowed > 0 {
                    out.push(Drained {
                        environment_id: env.environment_id.clone(),
                        flag_id: flag_id.clone(),
                        checks,
                        allowed,
                    });
                }
            }
        }
        out
    }

    /// Puts drained counts back (after a failed flush).
    pub fn restore(&self, drained: &[Drained]) {
        for d in drained {
            self.env(&d.environment_id)
                .add(&d.flag_id, d.checks, d.allowed);
        }
    }
}

/// See [`CheckCounts::env`]; counts nothing for an environment this process does not serve.
pub struct EnvRecorder<'a> {
    flags: Option<(&'a EnvCounts, arc_swap::Guard<Arc<FlagMap>>)>,
}

impl EnvRecorder<'_> {
    /// Counts one check of `flag_id`.
    pub fn record(&self, flag_id: &str, allowed: bool) {
        self.add(flag_id, 1, u64::from(allowed));
    }

    fn add(&self, flag_id: &str, checks: u64, allowed: u64) {
        let Some((env, flags)) = &self.flags else {
            return;
        };
        match flags.get(flag_id) {
            Some(c) => c.add(checks, allowed),
            None => env.insert(flag_id).add(checks, allowed),
        }
    }
}

impl EnvCounts {
    /// The slow path: the first check of a flag in this process.
    fn insert(&self, flag_id: &str) -> Arc<FlagCounts> {
        let _guard = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.flags.load();
        if let Some(c) = current.get(flag_id) {
            return c.clone();
        }
        let mut next = HashMap::clone(&current);
        let counts = Arc::new(FlagCounts::default());
        next.insert(flag_id.to_string(), counts.clone());
        self.flags.store(Arc::new(next));
        counts
    }
}

/// The hourly bucket `at` falls in.
pub fn bucket_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::TimeDelta::hours(1)).unwrap_or(at)
}

/// Moves the in-memory counts into Postgres; on failure they stay in memory.
pub async fn flush(pool: &PgPool, checks: &CheckCounts) -> crate::store::Result<usize> {
    let drained = checks.drain();
    if drained.is_empty() {
        return Ok(0);
    }
    let result = async {
        crate::store::insights::add_check_counts(pool, bucket_of(Utc::now()), &drained).await
    }
    .await;
    match result {
        Ok(()) => {
            crate::metrics::CHECK_COUNT_FLUSHES.inc("ok");
            Ok(drained.len())
        }
        Err(e) => {
            crate::metrics::CHECK_COUNT_FLUSHES.inc("error");
            checks.restore(&drained);
            Err(e)
        }
    }
}

/// Flushes every `interval` until `shutdown`, then once more.
pub fn spawn_flusher(
    pool: PgPool,
    checks: Arc<CheckCounts>,
    interval: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = flush(&pool, &checks).await {
                tracing::warn!(error = %e, "flushing check counts failed; keeping them for the next flush");
            }
        }
        match flush(&pool, &checks).await {
            Ok(n) => tracing::debug!(flags = n, "check counts flushed at shutdown"),
            Err(e) => tracing::warn!(error = %e, "flushing check counts at shutdown failed; they are lost"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_drain_and_restore() {
        let c = CheckCounts::new(["env_a".to_string(), "env_b".to_string()]);
        c.record("env_a", "flag_1", true);
        c.record("env_a", "flag_1", false);
        c.record("env_b", "flag_1", true);
        c.record("env_unknown", "flag_1", true);
        let mut d = c.drain();
        d.sort_by(|a, b| a.environment_id.cmp(&b.environment_id));
        assert_eq!(
            d.iter()
                .map(|d| (d.environment_id.as_str(), d.checks, d.allowed))
                .collect::<Vec<_>>(),
            vec![("env_a", 2, 1), ("env_b", 1, 1)]
        );
        assert!(c.drain().is_empty(), "drained counts are zeroed");
        c.restore(&d);
        c.record("env_a", "flag_1", false);
        let again = c.drain();
        let a = again.iter().find(|x| x.environment_id == "env_a").unwrap();
        assert_eq!((a.checks, a.allowed), (3, 1));
    }

    #[test]
    fn concurrent_first_checks_lose_nothing() {
        let c = Arc::new(CheckCounts::new(["env".to_string()]));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        c.record("env", &format!("flag_{}", (i + t) % 7), i % 2 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = c.drain().iter().map(|d| d.checks).sum();
        assert_eq!(total, 4000);
    }

    #[test]
    fn buckets_are_hours() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(bucket_of(at).to_rfc3339(), "2026-03-04T05:00:00+00:00");
    }
}
