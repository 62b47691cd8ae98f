//! Process metrics in the Prometheus text format, without a registry crate: a handful of
//! atomics. `render()` writes what `GET /metrics` serves.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// A counter with one label, for small label sets known at run time (routes, outcomes).
pub struct LabeledCounter {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Mutex<Vec<(String, u64)>>,
}

impl LabeledCounter {
    pub const fn new(name: &'static str, help: &'static str, label: &'static str) -> Self {
        LabeledCounter {
            name,
            help,
            label,
            values: Mutex::new(Vec::new()),
        }
    }
    pub fn inc(&self, label_value: &str) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match v.iter_mut().find(|(l, _)| l == label_value) {
            Some((_, n)) => *n += 1,
            None => v.push((label_value.to_string(), 1)),
        }
    }
    pub fn get(&self, label_value: &str) -> u64 {
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .find(|(l, _)| l == label_value)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (l, n) in v.iter() {
            let _ = writeln!(
                out,
                "{}{{{}=\"{}\"}} {}",
                self.name,
                self.label,
                escape(l),
                n
            );
        }
    }
}

/// A counter over a fixed label set, lock-free: for hot paths.
pub struct FixedCounter<const N: usize> {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    labels: [&'static str; N],
    values: [AtomicU64; N],
}

impl<const N: usize> FixedCounter<N> {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        labels: [&'static str; N],
    ) -> Self {
        FixedCounter {
            name,
            help,
            label,
            labels,
            values: [const { AtomicU64::new(0) }; N],
        }
    }
    /// Counts one for `label`; unknown labels count under the last one.
    pub fn inc(&self, label: &str) {
        let i = self
            .labels
            .iter()
            .position(|l| *l == label)
            .unwrap_or(N - 1);
        self.values[i].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, label: &str) -> u64 {
        self.labels
            .iter()
            .position(|l| *l == label)
            .map(|i| self.values[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (l, v) in self.labels.iter().zip(&self.values) {
            let n = v.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}{{{}=\"{}\"}} {}", self.name, self.label, l, n);
        }
    }
}

/// A latency histogram in seconds with fixed buckets.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    buckets: &'static [f64],
    counts: [AtomicU64; 16],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

impl Histogram {
    pub const fn latency(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            buckets: LATENCY_BUCKETS,
            counts: [const { AtomicU64::new(0) }; 16],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, seconds: f64) {
        let idx = self
            .buckets
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.buckets.len());
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{}_bucket{{le=\"{}\"}} {}", self.name, b, cumulative);
        }
        cumulative += self.counts[self.buckets.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {}", self.name, cumulative);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{}_sum {}", self.name, sum);
        let _ = writeln!(out, "{}_count {}", self.name, self.count());
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub static CHECKS: FixedCounter<3> = FixedCounter::new(
    "entitled_checks_total",
    "Flag checks answered, by outcome.",
    "outcome",
    ["true", "false", "not_found"],
);
pub static CHECK_SECONDS: Histogram = Histogram::latency(
    "entitled_check_duration_seconds",
    "Time to evaluate one flag check, excluding the network.",
);
pub static HTTP_RESPONSES: FixedCounter<4> = FixedCounter::new(
    "entitled_http_responses_total",
    "HTTP responses by status class.",
    "status",
    ["2xx", "4xx", "5xx", "other"],
);
pub static CACHE_RELOADS: Counter = Counter::new(
    "entitled_cache_reloads_total",
    "Snapshot pieces reloaded from Postgres after a change.",
);
pub static CACHE_LISTENER_RECONNECTS: Counter = Counter::new(
    "entitled_cache_listener_reconnects_total",
    "Times the LISTEN connection was lost and the snapshot fully reloaded.",
);
pub static WRITES: LabeledCounter = LabeledCounter::new(
    "entitled_writes_total",
    "Committed API writes by resource.",
    "resource",
);

pub static WEBHOOK_DELIVERIES: FixedCounter<6> = FixedCounter::new(
    "entitled_stripe_webhook_deliveries_total",
    "Stripe webhook deliveries by outcome.",
    "outcome",
    [
        "accepted",
        "duplicate",
        "invalid_signature",
        "invalid_payload",
        "unavailable",
        "error",
    ],
);
pub static STRIPE_EVENTS: FixedCounter<5> = FixedCounter::new(
    "entitled_stripe_events_total",
    "Stripe events processed from the inbox, by resulting status.",
    "status",
    ["applied", "skipped", "ignored", "failed", "other"],
);
pub static STRIPE_API_REQUESTS: FixedCounter<5> = FixedCounter::new(
    "entitled_stripe_api_requests_total",
    "Requests to the Stripe API by outcome.",
    "outcome",
    ["ok", "not_found", "rate_limited", "error", "other"],
);

/// Everything, in the Prometheus text exposition format. `gauges` are point-in-time values
/// the caller reads (pool use, cache sizes).
pub fn render(gauges: &[(&str, &str, f64)]) -> String {
    let mut out = String::with_capacity(4096);
    CHECKS.render(&mut out);
    CHECK_SECONDS.render(&mut out);
    HTTP_RESPONSES.render(&mut out);
    CACHE_RELOADS.render(&mut out);
    CACHE_LISTENER_RECONNECTS.render(&mut out);
    WRITES.render(&mut out);
    WEBHOOK_DELIVERIES.render(&mut out);
    STRIPE_EVENTS.render(&mut out);
    STRIPE_API_REQUESTS.render(&mut out);
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        static H: Histogram = Histogram::latency("t_seconds", "test");
        H.observe(0.000_2);
        H.observe(0.003);
        H.observe(10.0);
        let mut out = String::new();
        H.render(&mut out);
        assert!(out.contains("t_seconds_bucket{le=\"0.00025\"} 1"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("t_seconds_count 3"));
    }
}
