//! Process metrics on prometheus-client: labelled families registered in one [`Registry`],
//! encoded by its Prometheus text encoder. `render()` writes what `GET /metrics` serves.
//!
//! Callers record through the statics below (`metrics::WRITES.inc("plans")`). Series with a
//! fixed set of label values are created up front and their handles kept, so recording one
//! is an atomic add with no lock and no lookup; the check path's metrics are sharded per
//! thread (see [`sharded`]).
//!
//! The family types below wrap prometheus-client's `Family` and implement `EncodeMetric`
//! themselves: a bare `Family` with no series yet reports `is_empty`, and the registry then
//! leaves out its HELP and TYPE lines, which dashboards and tests look for from the start.
//!
//! Counters are registered without `_total`: the encoder appends it, so
//! `entitled_checks` is exposed as `entitled_checks_total`. Help texts have no final period:
//! the registry adds one.

mod sharded;

use std::fmt::Debug;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

pub use sharded::{shard, ShardedCounter, ShardedHistogram};

/// A series' labels: `(name, value)` pairs, all known at compile time.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// What a [`FixedCounter`] counts with: prometheus-client's `Counter`, or [`ShardedCounter`]
/// on the check path.
pub trait CounterSeries:
    EncodeMetric + TypedMetric + Clone + Default + Debug + Send + Sync + 'static
{
    fn add(&self, n: u64);
    fn value(&self) -> u64;
}

impl CounterSeries for Counter {
    fn add(&self, n: u64) {
        self.inc_by(n);
    }
    fn value(&self) -> u64 {
        self.get()
    }
}

impl CounterSeries for ShardedCounter {
    fn add(&self, n: u64) {
        self.inc_by(n);
    }
    fn value(&self) -> u64 {
        self.get()
    }
}

/// A counter over one label with a fixed set of values, every series created (and shown, at
/// zero) from the start. Counting is a short scan of the values and an atomic add.
#[derive(Clone, Debug)]
pub struct FixedCounter<const N: usize, C = Counter> {
    values: [&'static str; N],
    series: [C; N],
    family: Family<Labels<1>, C>,
}

impl<const N: usize, C: CounterSeries> FixedCounter<N, C> {
    pub fn new(label: &'static str, values: [&'static str; N]) -> Self {
        let family = Family::<Labels<1>, C>::default();
        let series = values.map(|v| family.get_or_create_owned(&[(label, v)]));
        FixedCounter {
            values,
            series,
            family,
        }
    }

    /// Counts one for `value`; values outside the set count under the last one.
    pub fn inc(&self, value: &str) {
        self.add(value, 1);
    }

    /// Counts `n` for `value` at once (an all-flags check counts its answers per outcome).
    pub fn add(&self, value: &str, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.values.iter().position(|v| *v == value);
        self.series[i.unwrap_or(N - 1)].add(n);
    }

    /// Counts `n` for `value`, like [`FixedCounter::inc`].
    pub fn inc_by(&self, value: &str, n: u64) {
        let i = self.values.iter().position(|v| *v == value);
        self.series[i.unwrap_or(N - 1)].add(n);
    }

    pub fn get(&self, value: &str) -> u64 {
        let i = self.values.iter().position(|v| *v == value);
        i.map_or(0, |i| self.series[i].value())
    }
}

impl<const N: usize, C: CounterSeries> TypedMetric for FixedCounter<N, C> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<const N: usize, C: CounterSeries> EncodeMetric for FixedCounter<N, C> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A counter over labels whose values appear at run time (job and outcome). Finds its
/// series under a read lock: for work that is not the check path.
#[derive(Clone, Debug)]
pub struct CounterVec<const N: usize> {
    labels: [&'static str; N],
    family: Family<Labels<N>, Counter>,
}

impl<const N: usize> CounterVec<N> {
    pub fn new(labels: [&'static str; N]) -> Self {
        CounterVec {
            labels,
            family: Family::default(),
        }
    }

    pub fn inc(&self, values: [&'static str; N]) {
        self.inc_by(values, 1);
    }

    pub fn inc_by(&self, values: [&'static str; N], n: u64) {
        self.family.get_or_create(&self.key(values)).inc_by(n);
    }

    pub fn get(&self, values: [&'static str; N]) -> u64 {
        self.family.get(&self.key(values)).map_or(0, |c| c.get())
    }

    fn key(&self, values: [&'static str; N]) -> Labels<N> {
        std::array::from_fn(|i| (self.labels[i], values[i]))
    }
}

impl<const N: usize> TypedMetric for CounterVec<N> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<const N: usize> EncodeMetric for CounterVec<N> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A [`CounterVec`] over one label, counted with the bare value: `WRITES.inc("plans")`.
#[derive(Clone, Debug)]
pub struct LabeledCounter(CounterVec<1>);

impl LabeledCounter {
    pub fn new(label: &'static str) -> Self {
        LabeledCounter(CounterVec::new([label]))
    }
    pub fn inc(&self, value: &'static str) {
        self.0.inc([value]);
    }
    pub fn get(&self, value: &'static str) -> u64 {
        self.0.get([value])
    }
}

impl TypedMetric for LabeledCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for LabeledCounter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge over labels whose values come from data (inbox depth by status), set by
/// whoever knows the value.
#[derive(Clone, Debug)]
pub struct GaugeVec<const N: usize> {
    labels: [&'static str; N],
    family: Family<[(&'static str, String); N], Gauge>,
}

impl<const N: usize> GaugeVec<N> {
    pub fn new(labels: [&'static str; N]) -> Self {
        GaugeVec {
            labels,
            family: Family::default(),
        }
    }

    pub fn set(&self, values: [&str; N], value: i64) {
        self.family.get_or_create(&self.key(values)).set(value);
    }

    pub fn get(&self, values: [&str; N]) -> Option<i64> {
        self.family.get(&self.key(values)).map(|g| g.get())
    }

    /// Moves the gauge by `delta` (open connections, subscriptions).
    pub fn add(&self, values: [&str; N], delta: i64) {
        self.family.get_or_create(&self.key(values)).inc_by(delta);
    }

    fn key(&self, values: [&str; N]) -> [(&'static str, String); N] {
        std::array::from_fn(|i| (self.labels[i], values[i].to_owned()))
    }
}

impl<const N: usize> TypedMetric for GaugeVec<N> {
    const TYPE: MetricType = MetricType::Gauge;
}

impl<const N: usize> EncodeMetric for GaugeVec<N> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Builds a family's histograms over its own bucket bounds.
#[derive(Clone, Copy, Debug)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// A histogram of seconds over labels whose values appear at run time (job runs). Finds its
/// series under a read lock and observes under the series' mutex: not for the check path.
#[derive(Clone, Debug)]
pub struct HistogramVec<const N: usize> {
    labels: [&'static str; N],
    family: Family<Labels<N>, Histogram, Buckets>,
}

impl<const N: usize> HistogramVec<N> {
    pub fn new(labels: [&'static str; N], buckets: &'static [f64]) -> Self {
        HistogramVec {
            labels,
            family: Family::new_with_constructor(Buckets(buckets)),
        }
    }

    pub fn observe(&self, values: [&'static str; N], seconds: f64) {
        let key: Labels<N> = std::array::from_fn(|i| (self.labels[i], values[i]));
        self.family.get_or_create(&key).observe(seconds);
    }
}

impl<const N: usize> TypedMetric for HistogramVec<N> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl<const N: usize> EncodeMetric for HistogramVec<N> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Request latency by method and route. The router resolves each route's series once, when
/// it is built ([`RouteHistogram::series`]), and observes into that handle: no lookup per
/// request. Routes never requested are left out of the output (noise otherwise), and
/// requests no route took (404, 405) go to `method="",route="unmatched"`.
#[derive(Clone, Debug)]
pub struct RouteHistogram {
    bounds: &'static [f64],
    routes: Arc<OnceLock<Vec<(Labels<2>, ShardedHistogram)>>>,
    unmatched: ShardedHistogram,
}

impl RouteHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        RouteHistogram {
            bounds,
            routes: Arc::default(),
            unmatched: ShardedHistogram::new(bounds),
        }
    }

    /// Creates the `(method, route)` series; later calls change nothing.
    pub fn init(&self, routes: impl IntoIterator<Item = (&'static str, &'static str)>) {
        self.routes.get_or_init(|| {
            routes
                .into_iter()
                .map(|(m, r)| {
                    let labels = [("method", m), ("route", r)];
                    (labels, ShardedHistogram::new(self.bounds))
                })
                .collect()
        });
    }

    /// The series of `method route`, for the router to keep; the unmatched series for a
    /// pair [`init`](Self::init) did not create.
    pub fn series(&'static self, method: &str, route: &str) -> &'static ShardedHistogram {
        self.routes
            .get()
            .and_then(|s| s.iter().find(|(l, _)| l[0].1 == method && l[1].1 == route))
            .map_or(&self.unmatched, |(_, h)| h)
    }

    pub fn unmatched(&'static self) -> &'static ShardedHistogram {
        &self.unmatched
    }

    pub fn count(&self, method: &str, route: &str) -> u64 {
        self.routes
            .get()
            .and_then(|s| s.iter().find(|(l, _)| l[0].1 == method && l[1].1 == route))
            .map_or(0, |(_, h)| h.count())
    }
}

impl TypedMetric for RouteHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for RouteHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let unmatched = [("method", ""), ("route", "unmatched")];
        let routes = self.routes.get().into_iter().flatten().map(|(l, h)| (l, h));
        for (labels, h) in routes.chain([(&unmatched, &self.unmatched)]) {
            if h.count() > 0 {
                h.encode(encoder.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

// Bucket bounds, in seconds, per kind of duration.

/// HTTP requests: 50µs (a check answered from the snapshot) to 5s (a write stuck behind the
/// database pool's acquire timeout).
const HTTP_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// One check's evaluation, without the network: a few microseconds from the snapshot, so
/// the buckets start at 5µs (a 50µs first bucket would hold nearly every check); up to 5s
/// like requests, for `POST /flags/check` over a large catalog.
const CHECK_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
];
/// Scheduled job runs: 0.1s (an expiry pass with nothing to do) to 2h (a full reconcile at
/// the rate limit: 100k customers and subscriptions are minutes to an hour).
const JOB_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

// The check path: recorded on every `POST /flags/{key}/check` by every worker thread, so
// sharded per thread rather than prometheus-client's shared atomic and per-histogram mutex
// (see `sharded` for what `benches/checks.sh` and a microbenchmark showed).

/// Flag checks answered, by outcome.
pub static CHECKS: LazyLock<FixedCounter<3, ShardedCounter>> =
    LazyLock::new(|| FixedCounter::new("outcome", ["true", "false", "not_found"]));
/// Time to evaluate one flag check (or all flags), without the network.
pub static CHECK_SECONDS: LazyLock<ShardedHistogram> =
    LazyLock::new(|| ShardedHistogram::new(CHECK_BUCKETS));
/// HTTP responses by status class.
pub static HTTP_RESPONSES: LazyLock<FixedCounter<4, ShardedCounter>> =
    LazyLock::new(|| FixedCounter::new("status", ["2xx", "4xx", "5xx", "other"]));
/// Request latency by method and route.
pub static HTTP_REQUEST_SECONDS: LazyLock<RouteHistogram> =
    LazyLock::new(|| RouteHistogram::new(HTTP_BUCKETS));

pub static CACHE_RELOADS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static CACHE_LISTENER_RECONNECTS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Committed API writes by resource.
pub static WRITES: LazyLock<LabeledCounter> = LazyLock::new(|| LabeledCounter::new("resource"));
pub static EVENTS_INGESTED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static EVENTS_DUPLICATE: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static DB_UNAVAILABLE: LazyLock<Counter> = LazyLock::new(Counter::default);
/// 1 while the database breaker is open (Postgres known to be down), else 0.
pub static DB_BREAKER_OPEN: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Breaker transitions, by the state entered.
pub static DB_BREAKER_TRANSITIONS: LazyLock<FixedCounter<2>> =
    LazyLock::new(|| FixedCounter::new("to", ["open", "closed"]));
/// Requests answered 503 at once because the breaker was open.
pub static DB_BREAKER_REJECTED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static CHECK_COUNT_FLUSHES: LazyLock<FixedCounter<2>> =
    LazyLock::new(|| FixedCounter::new("outcome", ["ok", "error"]));

/// Stripe inbox rows by status (`pending`, `applied`, `skipped`, `ignored`, `failed`), read
/// when `/metrics` is scraped.
pub static INBOX_DEPTH: LazyLock<GaugeVec<1>> = LazyLock::new(|| GaugeVec::new(["status"]));
/// Scheduled job runs by job (`reconcile`, `expire_overrides`, `grant_credits`,
/// `retry_inbox`) and outcome (`ok`, `error`, `skipped` when another replica holds the tick).
/// Recorded by the scheduler around each `run_once`, together with [`JOB_SECONDS`].
pub static JOB_RUNS: LazyLock<CounterVec<2>> =
    LazyLock::new(|| CounterVec::new(["job", "outcome"]));
/// Duration of scheduled job runs by job and outcome.
pub static JOB_SECONDS: LazyLock<HistogramVec<2>> =
    LazyLock::new(|| HistogramVec::new(["job", "outcome"], JOB_BUCKETS));

/// Records one scheduled job run (the scheduler's side of [`JOB_RUNS`] and [`JOB_SECONDS`]).
pub fn record_job_run(job: &'static str, outcome: &'static str, seconds: f64) {
    JOB_RUNS.inc([job, outcome]);
    JOB_SECONDS.observe([job, outcome], seconds);
}

pub static WEBHOOK_DELIVERIES: LazyLock<FixedCounter<6>> = LazyLock::new(|| {
    FixedCounter::new(
        "outcome",
        [
            "accepted",
            "duplicate",
            "invalid_signature",
            "invalid_payload",
            "unavailable",
            "error",
        ],
    )
});
pub static STRIPE_EVENTS: LazyLock<FixedCounter<5>> = LazyLock::new(|| {
    FixedCounter::new(
        "status",
        ["applied", "skipped", "ignored", "failed", "other"],
    )
});
/// Inbox batches by how they were applied: `set_wise` (one transaction) or `fallback` (the
/// set-wise apply failed; its events were applied one per transaction).
pub static STRIPE_BATCHES: LazyLock<FixedCounter<2>> =
    LazyLock::new(|| FixedCounter::new("mode", ["set_wise", "fallback"]));
pub static STRIPE_API_REQUESTS: LazyLock<FixedCounter<5>> = LazyLock::new(|| {
    FixedCounter::new(
        "outcome",
        ["ok", "not_found", "rate_limited", "error", "other"],
    )
});
/// Objects a reconcile run saw, by object type (`customers`, `products`, `prices`,
/// `subscriptions`) and outcome (`seen`, `created`, `updated`, `deleted`, `error`).
pub static RECONCILE_OBJECTS: LazyLock<CounterVec<2>> =
    LazyLock::new(|| CounterVec::new(["object", "outcome"]));
/// Finished reconcile runs by trigger (`schedule`, `api`, `cli`) and status.
pub static RECONCILE_RUNS: LazyLock<CounterVec<2>> =
    LazyLock::new(|| CounterVec::new(["trigger", "status"]));

/// Outbound webhook delivery attempts by result: `success`, `retry` (failed, tried again
/// later), `failure` (given up).
pub static WEBHOOK_OUT_DELIVERIES: LazyLock<FixedCounter<3>> =
    LazyLock::new(|| FixedCounter::new("result", ["success", "retry", "failure"]));
/// One outbound delivery attempt: 5ms (a local receiver) to the 15s default timeout and
/// beyond (the timeout is configurable up to 300s).
const WEBHOOK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 300.0,
];
pub static WEBHOOK_OUT_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(WEBHOOK_BUCKETS.iter().copied()));
/// Endpoints disabled by entitled (410 Gone, a day of failures).
pub static WEBHOOK_OUT_DISABLED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Meter-event send attempts by result: `sent` (Stripe has it), `retry`, `failed` (refused
/// with a 4xx), `expired` (older than Stripe's 35 days, not sent).
/// Console pages served, by page and status class.
pub static CONSOLE_REQUESTS: LazyLock<CounterVec<2>> =
    LazyLock::new(|| CounterVec::new(["page", "status"]));
/// Console sign-ins by outcome.
pub static CONSOLE_SIGN_INS: LazyLock<FixedCounter<6>> = LazyLock::new(|| {
    FixedCounter::new(
        "outcome",
        [
            "success",
            "wrong_password",
            "locked",
            "disabled",
            "rate_limited",
            "unknown_user",
        ],
    )
});

pub static METER_EVENTS: LazyLock<FixedCounter<4>> =
    LazyLock::new(|| FixedCounter::new("result", ["sent", "retry", "failed", "expired"]));
/// From the billable track event's commit to Stripe's acceptance of its meter event.
const METER_LAG_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
pub static METER_EVENT_LAG_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(METER_LAG_BUCKETS.iter().copied()));

/// Open datastream connections (`GET /datastream`).
pub static DATASTREAM_CONNECTIONS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Datastream subscriptions by entity: `flags`, `company`, `user`.
pub static DATASTREAM_SUBSCRIPTIONS: LazyLock<GaugeVec<1>> =
    LazyLock::new(|| GaugeVec::new(["entity"]));
/// Datastream messages sent, by message type.
pub static DATASTREAM_MESSAGES: LazyLock<FixedCounter<4>> =
    LazyLock::new(|| FixedCounter::new("type", ["full", "partial", "delete", "error"]));
/// Datastream connections closed or refused by the server, by reason.
pub static DATASTREAM_DROPS: LazyLock<FixedCounter<3>> = LazyLock::new(|| {
    FixedCounter::new("reason", ["slow_consumer", "connection_limit", "protocol"])
});
/// Flag checks the SDKs evaluated locally and reported (`flag_check` events on `/batch`).
pub static SDK_FLAG_CHECKS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Every metric above under its exposed name (counters without `_total`), in the order
/// `/metrics` has always listed them.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r = Registry::default();
    r.register(
        "entitled_checks",
        "Flag checks answered, by outcome",
        CHECKS.clone(),
    );
    r.register(
        "entitled_check_duration_seconds",
        "Time to evaluate one flag check, excluding the network",
        CHECK_SECONDS.clone(),
    );
    r.register(
        "entitled_http_responses",
        "HTTP responses by status class",
        HTTP_RESPONSES.clone(),
    );
    r.register(
        "entitled_cache_reloads",
        "Snapshot pieces reloaded from Postgres after a change",
        CACHE_RELOADS.clone(),
    );
    r.register(
        "entitled_cache_listener_reconnects",
        "Times the LISTEN connection was lost and the snapshot fully reloaded",
        CACHE_LISTENER_RECONNECTS.clone(),
    );
    r.register(
        "entitled_writes",
        "Committed API writes by resource",
        WRITES.clone(),
    );
    r.register(
        "entitled_events_ingested",
        "Track and identify events stored",
        EVENTS_INGESTED.clone(),
    );
    r.register(
        "entitled_job_runs",
        "Scheduled job runs by job and outcome",
        JOB_RUNS.clone(),
    );
    r.register(
        "entitled_events_duplicate",
        "Events dropped because their idempotency key was seen in the last 24 hours",
        EVENTS_DUPLICATE.clone(),
    );
    r.register(
        "entitled_http_request_duration_seconds",
        "Time from request to response headers, by method and route",
        HTTP_REQUEST_SECONDS.clone(),
    );
    r.register(
        "entitled_db_unavailable",
        "Requests answered 503 because Postgres was unreachable or the pool had no free connection in time",
        DB_UNAVAILABLE.clone(),
    );
    r.register(
        "entitled_db_breaker_open",
        "1 while Postgres is known to be down (writes and webhooks answer 503 at once), else 0",
        DB_BREAKER_OPEN.clone(),
    );
    r.register(
        "entitled_db_breaker_transitions",
        "Database breaker transitions, by the state entered",
        DB_BREAKER_TRANSITIONS.clone(),
    );
    r.register(
        "entitled_db_breaker_rejected",
        "Requests answered 503 at once because the database breaker was open",
        DB_BREAKER_REJECTED.clone(),
    );
    r.register(
        "entitled_insights_check_flushes",
        "Flushes of the in-memory per-flag check counts to Postgres, by outcome",
        CHECK_COUNT_FLUSHES.clone(),
    );
    r.register(
        "entitled_stripe_inbox_events",
        "Stripe inbox events by status",
        INBOX_DEPTH.clone(),
    );
    r.register(
        "entitled_job_duration_seconds",
        "Duration of scheduled job runs by job and outcome",
        JOB_SECONDS.clone(),
    );
    r.register(
        "entitled_stripe_webhook_deliveries",
        "Stripe webhook deliveries by outcome",
        WEBHOOK_DELIVERIES.clone(),
    );
    r.register(
        "entitled_stripe_events",
        "Stripe events processed from the inbox, by resulting status",
        STRIPE_EVENTS.clone(),
    );
    r.register(
        "entitled_stripe_inbox_batches",
        "Stripe inbox batches by how they were applied: set_wise, or fallback (one event per transaction)",
        STRIPE_BATCHES.clone(),
    );
    r.register(
        "entitled_stripe_api_requests",
        "Requests to the Stripe API by outcome",
        STRIPE_API_REQUESTS.clone(),
    );
    r.register(
        "entitled_stripe_reconcile_objects",
        "Stripe objects seen by reconcile runs, by object type and outcome",
        RECONCILE_OBJECTS.clone(),
    );
    r.register(
        "entitled_stripe_reconcile_runs",
        "Finished reconcile runs by trigger and status",
        RECONCILE_RUNS.clone(),
    );
    r.register(
        "entitled_webhook_deliveries",
        "Outbound webhook delivery attempts by result: success, retry (failed, tried again later), failure (given up)",
        WEBHOOK_OUT_DELIVERIES.clone(),
    );
    r.register(
        "entitled_webhook_delivery_duration_seconds",
        "Time for one outbound webhook delivery attempt",
        WEBHOOK_OUT_SECONDS.clone(),
    );
    r.register(
        "entitled_stripe_meter_events",
        "Meter-event send attempts by result: sent, retry, failed (refused by Stripe), expired (older than 35 days)",
        METER_EVENTS.clone(),
    );
    r.register(
        "entitled_stripe_meter_event_lag_seconds",
        "Time from a billable track event's commit to Stripe accepting its meter event",
        METER_EVENT_LAG_SECONDS.clone(),
    );
    r.register(
        "entitled_webhook_endpoints_disabled",
        "Outbound webhook endpoints disabled by entitled (410 Gone, or a day of failures)",
        WEBHOOK_OUT_DISABLED.clone(),
    );
    r.register(
        "entitled_console_requests",
        "Console pages served, by page and status",
        CONSOLE_REQUESTS.clone(),
    );
    r.register(
        "entitled_console_sign_ins",
        "Console sign-in attempts by outcome",
        CONSOLE_SIGN_INS.clone(),
    );
    r.register(
        "entitled_datastream_connections",
        "Open datastream connections",
        DATASTREAM_CONNECTIONS.clone(),
    );
    r.register(
        "entitled_datastream_subscriptions",
        "Datastream subscriptions by entity: flags, company, user",
        DATASTREAM_SUBSCRIPTIONS.clone(),
    );
    r.register(
        "entitled_datastream_messages",
        "Datastream messages sent, by type: full, partial, delete, error",
        DATASTREAM_MESSAGES.clone(),
    );
    r.register(
        "entitled_datastream_drops",
        "Datastream connections closed or refused, by reason: slow_consumer, connection_limit, protocol",
        DATASTREAM_DROPS.clone(),
    );
    r.register(
        "entitled_sdk_flag_checks",
        "Flag checks the SDKs evaluated locally and reported as flag_check events",
        SDK_FLAG_CHECKS.clone(),
    );
    r
});

/// Everything, in the Prometheus text exposition format (version 0.0.4). `gauges` are
/// point-in-time values the caller reads (pool use, cache sizes): name, help, value.
pub fn render(gauges: &[(&str, &str, f64)]) -> String {
    let mut scrape = Registry::default();
    for (name, help, value) in gauges {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(*value);
        scrape.register(*name, help.strip_suffix('.').unwrap_or(help), gauge);
    }
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a `String` does not fail, and no metric here returns an error of its own.
    let _ = prometheus_text::encode(&mut out, &REGISTRY);
    let _ = prometheus_text::encode(&mut out, &scrape);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(name: &str, metric: impl prometheus_client::registry::Metric) -> String {
        let mut registry = Registry::default();
        registry.register(name, "test", metric);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn labelled_counters_render_under_their_total_name() {
        let runs = CounterVec::new(["job", "outcome"]);
        let text = encode("t_runs", runs.clone());
        assert!(text.contains("# TYPE t_runs_total counter\n"), "{text}");
        runs.inc(["reconcile", "ok"]);
        runs.inc(["reconcile", "ok"]);
        runs.inc_by(["reconcile", "error"], 3);
        let text = encode("t_runs", runs.clone());
        assert!(text.contains("# HELP t_runs_total test.\n"), "{text}");
        assert!(
            text.contains("t_runs_total{job=\"reconcile\",outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert_eq!(runs.get(["reconcile", "error"]), 3);

        let fixed = FixedCounter::<3, ShardedCounter>::new("outcome", ["a", "b\"c", "other"]);
        fixed.inc("b\"c");
        fixed.inc("unknown");
        let text = encode("t_fixed", fixed.clone());
        for line in [
            "t_fixed_total{outcome=\"a\"} 0",
            "t_fixed_total{outcome=\"b\\\"c\"} 1",
            "t_fixed_total{outcome=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }

    #[test]
    fn histograms_render_cumulative_buckets_of_their_own() {
        let jobs = HistogramVec::new(["job"], JOB_BUCKETS);
        // A twelve-minute reconcile lands in a bucket, not in +Inf only.
        jobs.observe(["reconcile"], 720.0);
        jobs.observe(["reconcile"], 0.05);
        let text = encode("t_job_seconds", jobs);
        for line in [
            "# TYPE t_job_seconds histogram",
            "t_job_seconds_bucket{job=\"reconcile\",le=\"0.1\"} 1",
            "t_job_seconds_bucket{job=\"reconcile\",le=\"600\"} 1",
            "t_job_seconds_bucket{job=\"reconcile\",le=\"1200\"} 2",
            "t_job_seconds_bucket{job=\"reconcile\",le=\"7200\"} 2",
            "t_job_seconds_bucket{job=\"reconcile\",le=\"+Inf\"} 2",
            "t_job_seconds_count{job=\"reconcile\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }

        let checks = ShardedHistogram::new(CHECK_BUCKETS);
        checks.observe(0.000_003);
        checks.observe(0.000_2);
        checks.observe(10.0);
        let text = encode("t_check_seconds", checks);
        for line in [
            "t_check_seconds_bucket{le=\"5e-06\"} 1",
            "t_check_seconds_bucket{le=\"0.00025\"} 2",
            "t_check_seconds_bucket{le=\"5\"} 2",
            "t_check_seconds_bucket{le=\"+Inf\"} 3",
            "t_check_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
        assert!(text.contains("t_check_seconds_sum 10.0002"), "{text}");
    }

    #[test]
    fn routes_render_once_requested_and_the_rest_as_unmatched() {
        static R: LazyLock<RouteHistogram> = LazyLock::new(|| RouteHistogram::new(HTTP_BUCKETS));
        R.init([("GET", "/a"), ("POST", "/a")]);
        R.series("POST", "/a").observe(0.001);
        R.series("GET", "/nope").observe(0.001);
        let text = encode("t_http_seconds", R.clone());
        assert!(
            text.contains("t_http_seconds_count{method=\"POST\",route=\"/a\"} 1"),
            "{text}"
        );
        assert!(!text.contains("method=\"GET\",route=\"/a\""), "{text}");
        assert!(
            text.contains("t_http_seconds_count{method=\"\",route=\"unmatched\"} 1"),
            "{text}"
        );
        assert_eq!(R.count("POST", "/a"), 1);
    }

    #[test]
    fn every_family_is_exposed_under_its_name_before_anything_is_recorded() {
        let text = render(&[("entitled_db_pool_max", "Configured maximum.", 5.0)]);
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            families,
            [
                "entitled_checks_total counter",
                "entitled_check_duration_seconds histogram",
                "entitled_http_responses_total counter",
                "entitled_cache_reloads_total counter",
                "entitled_cache_listener_reconnects_total counter",
                "entitled_writes_total counter",
                "entitled_events_ingested_total counter",
                "entitled_job_runs_total counter",
                "entitled_events_duplicate_total counter",
                "entitled_http_request_duration_seconds histogram",
                "entitled_db_unavailable_total counter",
                "entitled_db_breaker_open gauge",
                "entitled_db_breaker_transitions_total counter",
                "entitled_db_breaker_rejected_total counter",
                "entitled_insights_check_flushes_total counter",
                "entitled_stripe_inbox_events gauge",
                "entitled_job_duration_seconds histogram",
                "entitled_stripe_webhook_deliveries_total counter",
                "entitled_stripe_events_total counter",
                "entitled_stripe_inbox_batches_total counter",
                "entitled_stripe_api_requests_total counter",
                "entitled_stripe_reconcile_objects_total counter",
                "entitled_stripe_reconcile_runs_total counter",
                "entitled_webhook_deliveries_total counter",
                "entitled_webhook_delivery_duration_seconds histogram",
                "entitled_stripe_meter_events_total counter",
                "entitled_stripe_meter_event_lag_seconds histogram",
                "entitled_webhook_endpoints_disabled_total counter",
                "entitled_console_requests_total counter",
                "entitled_console_sign_ins_total counter",
                "entitled_datastream_connections gauge",
                "entitled_datastream_subscriptions gauge",
                "entitled_datastream_messages_total counter",
                "entitled_datastream_drops_total counter",
                "entitled_sdk_flag_checks_total counter",
                "entitled_db_pool_max gauge",
            ]
        );
        assert!(
            text.contains("# HELP entitled_db_pool_max Configured maximum.\n"),
            "{text}"
        );
        assert!(text.contains("\nentitled_db_pool_max 5"), "{text}");
    }
}
