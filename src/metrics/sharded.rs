//! A counter and a histogram for the check path, sharded per thread.
//!
//! prometheus-client's `Counter` is one shared `AtomicU64` and its `Histogram` takes a mutex
//! per observation. A check request records a status count, a route latency and a check
//! latency: with those types every worker thread would write the same few cache lines (and
//! take the same locks) on every request. Here each thread adds to a shard of its own, on
//! cache lines of its own, and a scrape sums the shards. Both types implement
//! prometheus-client's `EncodeMetric`, so they are registered and encoded like its own.
//!
//! What that buys, measured on the 2-core development machine:
//! - Two threads recording in a tight loop (a throwaway microbenchmark of these types
//!   against prometheus-client's, release build): an observation costs 40-47 ns per thread
//!   with the library's `Histogram` and 12-13 ns with [`ShardedHistogram`]; an increment
//!   13-14 ns with its `Counter` and 5-6 ns with [`ShardedCounter`]. With one thread the
//!   two are equal. A check records two of each: about 0.1 µs saved per request at most.
//! - `benches/checks.sh` (wrk against release builds, adapted to run, in turn, this build,
//!   the same code on the library's types, and the build before prometheus-client; 10
//!   rounds of 10 s) cannot resolve that: one binary ranged from 46k to 77k checks/s between
//!   rounds, more than the spread of the means (this build 59k, library types 64k, before
//!   67k checks/s; the baseline handler 68k-119k). This build's lower mean is not explained
//!   by 0.1 µs per request and was not ruled out either. So the sharding is kept for the
//!   contention the library types add per operation (above), which grows with worker
//!   threads, not for an end-to-end gain that benchmark has shown.

use std::iter;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards per metric. Threads past this many share shards, which stays correct and is no
/// worse than one shared atomic.
const SHARDS: usize = 16;

/// The calling thread's shard, fixed at its first use: tokio's workers are long-lived, so
/// consecutive workers get different shards. Other per-thread counters (insights) use it too.
pub fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS);
    SHARD.with(|s| *s)
}

/// Sixteen slots on 128 bytes of their own: two cache lines, since x86 prefetches lines in
/// pairs.
#[repr(align(128))]
#[derive(Default)]
struct Line([AtomicU64; 16]);

/// `slots` atomics per shard, shard after shard, no two shards on one line.
struct Slots {
    slots: usize,
    lines: Box<[Line]>,
}

impl Slots {
    fn new(slots: usize) -> Self {
        let per_shard = slots.div_ceil(16);
        Slots {
            slots,
            lines: (0..per_shard * SHARDS).map(|_| Line::default()).collect(),
        }
    }

    /// Slot `i` of this thread's shard.
    fn local(&self, i: usize) -> &AtomicU64 {
        let line = shard() * self.slots.div_ceil(16) + i / 16;
        &self.lines[line].0[i % 16]
    }

    /// Slot `i` summed over the shards.
    fn total(&self, i: usize) -> u64 {
        let per_shard = self.slots.div_ceil(16);
        (0..SHARDS)
            .map(|s| self.lines[s * per_shard + i / 16].0[i % 16].load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A monotonic counter. Cheap to clone: clones count into the same shards.
#[derive(Clone)]
pub struct ShardedCounter(Arc<Slots>);

impl Default for ShardedCounter {
    fn default() -> Self {
        ShardedCounter(Arc::new(Slots::new(1)))
    }
}

impl ShardedCounter {
    pub fn inc_by(&self, n: u64) {
        self.0.local(0).fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.total(0)
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram of seconds over fixed bucket bounds. Per shard: one count per bucket (the
/// last one past every bound) and the sum in nanoseconds; the total count is the sum of the
/// buckets, so an observation is two atomic adds on the thread's own lines.
#[derive(Clone)]
pub struct ShardedHistogram {
    bounds: &'static [f64],
    slots: Arc<Slots>,
}

impl ShardedHistogram {
    /// `bounds`: the buckets' upper bounds, finite and ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        ShardedHistogram {
            bounds,
            slots: Arc::new(Slots::new(bounds.len() + 2)),
        }
    }

    pub fn observe(&self, seconds: f64) {
        // The first bucket whose bound is at or above the value (`le` is inclusive).
        let bucket = self.bounds.partition_point(|b| *b < seconds);
        self.slots.local(bucket).fetch_add(1, Relaxed);
        // Negative and NaN durations (which a monotonic clock does not give) add nothing.
        let nanos = (seconds * 1e9) as u64;
        self.slots
            .local(self.bounds.len() + 1)
            .fetch_add(nanos, Relaxed);
    }

    pub fn count(&self) -> u64 {
        (0..=self.bounds.len()).map(|i| self.slots.total(i)).sum()
    }
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedHistogram")
            .field("bounds", &self.bounds)
            .field("count", &self.count())
            .finish()
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket (not cumulative) counts, the last one `+Inf`, as the encoder takes them.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, bound)| (bound, self.slots.total(i)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.slots.total(self.bounds.len() + 1) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_across_threads() {
        let counter = ShardedCounter::default();
        let histogram = ShardedHistogram::new(&[0.001, 0.01]);
        std::thread::scope(|s| {
            for _ in 0..(SHARDS + 3) {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.inc_by(1);
                        histogram.observe(0.005);
                    }
                });
            }
        });
        assert_eq!(counter.get(), (SHARDS as u64 + 3) * 1000);
        assert_eq!(histogram.count(), (SHARDS as u64 + 3) * 1000);
        assert_eq!(histogram.slots.total(0), 0);
        assert_eq!(histogram.slots.total(1), histogram.count());
    }

    #[test]
    fn bounds_are_inclusive_and_the_rest_is_overflow() {
        let h = ShardedHistogram::new(&[0.001, 0.01]);
        h.observe(0.001);
        h.observe(0.0011);
        h.observe(5.0);
        h.observe(-1.0);
        assert_eq!(
            (0..3).map(|i| h.slots.total(i)).collect::<Vec<_>>(),
            [2, 1, 1]
        );
        assert_eq!(h.slots.total(3), 5_002_100_000);
    }
}
