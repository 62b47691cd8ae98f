//! Process metrics in the Prometheus text format, without a registry crate: a handful of
//! atomics. `render()` writes what `GET /metrics` serves.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

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
    pub fn inc_by(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
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

/// Bucket counts, sum and count of one histogram series.
pub struct HistogramCore {
    counts: [AtomicU64; 16],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

impl HistogramCore {
    pub const fn new() -> Self {
        HistogramCore {
            counts: [const { AtomicU64::new(0) }; 16],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, seconds: f64) {
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// The series' lines; `labels` is `""` or `k="v",…` without braces.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count());
    }
}

impl Default for HistogramCore {
    fn default() -> Self {
        Self::new()
    }
}

/// A latency histogram in seconds with fixed buckets.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    core: HistogramCore,
}

impl Histogram {
    pub const fn latency(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            core: HistogramCore::new(),
        }
    }
    pub fn observe(&self, seconds: f64) {
        self.core.observe(seconds);
    }
    pub fn count(&self) -> u64 {
        self.core.count()
    }
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        self.core.render(out, self.name, "");
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `k1="v1",k2="v2"` for a series.
fn label_pairs(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A counter over several labels whose values appear at run time (job and outcome, HTTP
/// status). Takes a mutex: for work that is not a per-request hot path.
pub struct CounterVec<const L: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; L],
    values: Mutex<Vec<([String; L], u64)>>,
}

impl<const L: usize> CounterVec<L> {
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; L]) -> Self {
        CounterVec {
            name,
            help,
            labels,
            values: Mutex::new(Vec::new()),
        }
    }
    pub fn inc(&self, values: [&str; L]) {
        self.inc_by(values, 1);
    }
    pub fn inc_by(&self, values: [&str; L], n: u64) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match v
            .iter_mut()
            .find(|(l, _)| l.iter().zip(values).all(|(a, b)| a == b))
        {
            Some((_, count)) => *count += n,
            None => v.push((values.map(str::to_string), n)),
        }
    }
    pub fn get(&self, values: [&str; L]) -> u64 {
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .find(|(l, _)| l.iter().zip(values).all(|(a, b)| a == b))
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (l, n) in v.iter() {
            let _ = writeln!(out, "{}{{{}}} {n}", self.name, label_pairs(&self.labels, l));
        }
    }
}

/// A gauge over several labels, set by whoever knows the value (queue depths by status).
pub struct GaugeVec<const L: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; L],
    values: Mutex<Vec<([String; L], f64)>>,
}

impl<const L: usize> GaugeVec<L> {
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; L]) -> Self {
        GaugeVec {
            name,
            help,
            labels,
            values: Mutex::new(Vec::new()),
        }
    }
    pub fn set(&self, values: [&str; L], value: f64) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match v
            .iter_mut()
            .find(|(l, _)| l.iter().zip(values).all(|(a, b)| a == b))
        {
            Some((_, g)) => *g = value,
            None => v.push((values.map(str::to_string), value)),
        }
    }
    pub fn get(&self, values: [&str; L]) -> Option<f64> {
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .find(|(l, _)| l.iter().zip(values).all(|(a, b)| a == b))
            .map(|(_, g)| *g)
    }
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (l, g) in v.iter() {
            let _ = writeln!(out, "{}{{{}}} {g}", self.name, label_pairs(&self.labels, l));
        }
    }
}

/// A latency histogram over several labels whose values appear at run time. Takes a mutex
/// to find the series: for jobs and external calls, not per-request hot paths.
pub struct HistogramVec<const L: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; L],
    series: Mutex<Vec<([String; L], std::sync::Arc<HistogramCore>)>>,
}

impl<const L: usize> HistogramVec<L> {
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; L]) -> Self {
        HistogramVec {
            name,
            help,
            labels,
            series: Mutex::new(Vec::new()),
        }
    }
    pub fn observe(&self, values: [&str; L], seconds: f64) {
        let core = {
            let mut v = self.series.lock().unwrap_or_else(|e| e.into_inner());
            match v
                .iter()
                .find(|(l, _)| l.iter().zip(values).all(|(a, b)| a == b))
            {
                Some((_, h)) => h.clone(),
                None => {
                    let h = std::sync::Arc::new(HistogramCore::new());
                    v.push((values.map(str::to_string), h.clone()));
                    h
                }
            }
        };
        core.observe(seconds);
    }
    pub fn count(&self, values: [&str; L]) -> u64 {
        let v = self.series.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .find(|(l, _)| l.iter().zip(values).all(|(a, b)| a == b))
            .map(|(_, h)| h.count())
            .unwrap_or(0)
    }
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let v = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (l, h) in v.iter() {
            h.render(out, self.name, &label_pairs(&self.labels, l));
        }
    }
}

/// Request latency per route and method. The series are fixed when the router is built
/// (`init`), so observing one is a short scan and an atomic add: no lock, no allocation.
pub struct RouteHistogram {
    name: &'static str,
    help: &'static str,
    series: OnceLock<Vec<(&'static str, &'static str, HistogramCore)>>,
    unmatched: HistogramCore,
}

impl RouteHistogram {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        RouteHistogram {
            name,
            help,
            series: OnceLock::new(),
            unmatched: HistogramCore::new(),
        }
    }
    /// Registers the `(method, route)` pairs; later calls change nothing.
    pub fn init(&self, routes: impl IntoIterator<Item = (&'static str, &'static str)>) {
        self.series.get_or_init(|| {
            routes
                .into_iter()
                .map(|(m, r)| (m, r, HistogramCore::new()))
                .collect()
        });
    }
    pub fn observe(&self, method: &str, route: &str, seconds: f64) {
        let core = self
            .series
            .get()
            .and_then(|s| {
                s.iter()
                    .find(|(m, r, _)| r.len() == route.len() && *m == method && *r == route)
            })
            .map(|(_, _, h)| h)
            .unwrap_or(&self.unmatched);
        core.observe(seconds);
    }
    pub fn count(&self, method: &str, route: &str) -> u64 {
        self.series
            .get()
            .and_then(|s| s.iter().find(|(m, r, _)| *m == method && *r == route))
            .map(|(_, _, h)| h.count())
            .unwrap_or(0)
    }
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (m, r, h) in self.series.get().into_iter().flatten() {
            // Routes never seen add nothing but noise.
            if h.count() > 0 {
                h.render(
                    out,
                    self.name,
                    &format!("method=\"{m}\",route=\"{}\"", escape(r)),
                );
            }
        }
        if self.unmatched.count() > 0 {
            self.unmatched
                .render(out, self.name, "method=\"\",route=\"unmatched\"");
        }
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

pub static EVENTS_INGESTED: Counter = Counter::new(
    "entitled_events_ingested_total",
    "Track and identify events stored.",
);
pub static EVENTS_DUPLICATE: Counter = Counter::new(
    "entitled_events_duplicate_total",
    "Events dropped because their idempotency key was seen in the last 24 hours.",
);

pub static HTTP_REQUEST_SECONDS: RouteHistogram = RouteHistogram::new(
    "entitled_http_request_duration_seconds",
    "Time from request to response headers, by method and route.",
);
pub static DB_UNAVAILABLE: Counter = Counter::new(
    "entitled_db_unavailable_total",
    "Requests answered 503 because Postgres was unreachable or the pool had no free connection in time.",
);
pub static CHECK_COUNT_FLUSHES: FixedCounter<2> = FixedCounter::new(
    "entitled_insights_check_flushes_total",
    "Flushes of the in-memory per-flag check counts to Postgres, by outcome.",
    "outcome",
    ["ok", "error"],
);

// Hooks for the Stripe, webhook and scheduler code. Defined here so every dashboard has
// one place to look; each is documented with who records it.

/// Stripe inbox rows by status (`pending`, `applied`, `skipped`, `ignored`, `failed`). Set by
/// the inbox code (e.g. after each retry pass, or computed when `/metrics` is scraped).
pub static INBOX_DEPTH: GaugeVec<1> = GaugeVec::new(
    "entitled_stripe_inbox_events",
    "Stripe inbox events by status.",
    ["status"],
);
/// Scheduled job runs by job (`reconcile`, `expire_overrides`, `grant_credits`,
/// `retry_inbox`) and outcome (`ok`, `error`, `skipped` when another replica holds the tick).
/// Recorded by the scheduler around each `run_once`, together with [`JOB_SECONDS`].
pub static JOB_RUNS: CounterVec<2> = CounterVec::new(
    "entitled_job_runs_total",
    "Scheduled job runs by job and outcome.",
    ["job", "outcome"],
);
/// Duration of scheduled job runs by job and outcome.
pub static JOB_SECONDS: HistogramVec<2> = HistogramVec::new(
    "entitled_job_duration_seconds",
    "Duration of scheduled job runs by job and outcome.",
    ["job", "outcome"],
);

/// Records one scheduled job run (the scheduler's side of [`JOB_RUNS`] and [`JOB_SECONDS`]).
pub fn record_job_run(job: &str, outcome: &str, seconds: f64) {
    JOB_RUNS.inc([job, outcome]);
    JOB_SECONDS.observe([job, outcome], seconds);
}

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

/// Objects a reconcile run saw, by object type (`customers`, `products`, `prices`,
/// `subscriptions`) and outcome (`seen`, `created`, `updated`, `deleted`, `error`).
pub static RECONCILE_OBJECTS: CounterVec<2> = CounterVec::new(
    "entitled_stripe_reconcile_objects_total",
    "Stripe objects seen by reconcile runs, by object type and outcome.",
    ["object", "outcome"],
);
/// Finished reconcile runs by trigger (`schedule`, `api`, `cli`) and status.
pub static RECONCILE_RUNS: CounterVec<2> = CounterVec::new(
    "entitled_stripe_reconcile_runs_total",
    "Finished reconcile runs by trigger and status.",
    ["trigger", "status"],
);

/// Everything, in the Prometheus text exposition format. `gauges` are point-in-time values
/// the caller reads (pool use, cache sizes).
pub static WEBHOOK_OUT_DELIVERIES: FixedCounter<3> = FixedCounter::new(
    "entitled_webhook_deliveries_total",
    "Outbound webhook delivery attempts, by result: success, retry (failed, tried again later), failure (given up).",
    "result",
    ["success", "retry", "failure"],
);
pub static WEBHOOK_OUT_SECONDS: Histogram = Histogram::latency(
    "entitled_webhook_delivery_duration_seconds",
    "Time for one outbound webhook delivery attempt.",
);
pub static WEBHOOK_OUT_DISABLED: Counter = Counter::new(
    "entitled_webhook_endpoints_disabled_total",
    "Outbound webhook endpoints disabled by entitled (410 Gone, or 90% failures).",
);

pub fn render(gauges: &[(&str, &str, f64)]) -> String {
    let mut out = String::with_capacity(4096);
    CHECKS.render(&mut out);
    CHECK_SECONDS.render(&mut out);
    HTTP_RESPONSES.render(&mut out);
    CACHE_RELOADS.render(&mut out);
    CACHE_LISTENER_RECONNECTS.render(&mut out);
    WRITES.render(&mut out);
    EVENTS_INGESTED.render(&mut out);
    JOB_RUNS.render(&mut out);
    EVENTS_DUPLICATE.render(&mut out);
    HTTP_REQUEST_SECONDS.render(&mut out);
    DB_UNAVAILABLE.render(&mut out);
    CHECK_COUNT_FLUSHES.render(&mut out);
    INBOX_DEPTH.render(&mut out);
    JOB_SECONDS.render(&mut out);
    WEBHOOK_DELIVERIES.render(&mut out);
    STRIPE_EVENTS.render(&mut out);
    STRIPE_API_REQUESTS.render(&mut out);
    RECONCILE_OBJECTS.render(&mut out);
    RECONCILE_RUNS.render(&mut out);
    WEBHOOK_OUT_DELIVERIES.render(&mut out);
    WEBHOOK_OUT_SECONDS.render(&mut out);
    WEBHOOK_OUT_DISABLED.render(&mut out);
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

    #[test]
    fn labeled_series_render_their_labels() {
        static C: CounterVec<2> = CounterVec::new("t_runs_total", "test", ["job", "outcome"]);
        C.inc(["reconcile", "ok"]);
        C.inc(["reconcile", "ok"]);
        C.inc(["reconcile", "error"]);
        let mut out = String::new();
        C.render(&mut out);
        assert!(
            out.contains("t_runs_total{job=\"reconcile\",outcome=\"ok\"} 2"),
            "{out}"
        );
        assert_eq!(C.get(["reconcile", "error"]), 1);

        static H: HistogramVec<1> = HistogramVec::new("t_job_seconds", "test", ["job"]);
        H.observe(["a\"b"], 0.003);
        let mut out = String::new();
        H.render(&mut out);
        assert!(
            out.contains("t_job_seconds_bucket{job=\"a\\\"b\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("t_job_seconds_count{job=\"a\\\"b\"} 1"),
            "{out}"
        );

        static R: RouteHistogram = RouteHistogram::new("t_http_seconds", "test");
        R.init([("GET", "/a"), ("POST", "/a")]);
        R.observe("POST", "/a", 0.001);
        R.observe("GET", "/nope", 0.001);
        let mut out = String::new();
        R.render(&mut out);
        assert!(
            out.contains("t_http_seconds_count{method=\"POST\",route=\"/a\"} 1"),
            "{out}"
        );
        assert!(!out.contains("method=\"GET\",route=\"/a\""), "{out}");
        assert!(out.contains("route=\"unmatched\""), "{out}");
    }
}
