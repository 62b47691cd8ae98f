//! The Stripe API client: retrieving one object (webhook refetch) and paging through lists
//! (reconcile), under one rate limiter per environment, with Stripe's retry rules.
//!
//! Why not async-stripe: its 1.0 is not released (1.0.0-rc.10 is the newest on crates.io).
//! Its rc types do parse `2026-09-30.endive` objects, but its client does not expose
//! `Retry-After` on a 429, which we must honour (its own retry strategy ignores it), and its
//! generated crates add minutes to every clean build on our 2-core machines. reqwest plus
//! serde structs holding only the fields we read (`objects.rs`) parse any API version whose
//! fields keep their meaning.
//!
//! Rate: every request, first attempts and retries alike, first takes a slot from the
//! environment's [`RateLimiter`]: at most `stripe_max_requests_per_sec` requests start in any
//! one-second window. A 429 with `Retry-After` pauses the whole limiter (every task of this
//! environment) for that long. Retries: 429, 409, 5xx and connection failures are retried
//! with jittered exponential backoff unless Stripe says `Stripe-Should-Retry: false`;
//! `Stripe-Should-Retry: true` makes any status retryable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::objects::{Customer, List, Subscription};

/// A little slack on top of the one-second window, for timer and network jitter: requests
/// that leave us exactly one second apart must not arrive closer than that.
const WINDOW_SLACK: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("GET {path}: {source}")]
    Transport {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {path}: Stripe answered {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("GET {path}: unexpected response body: {message}")]
    Body { path: String, message: String },
}

/// How one `POST` ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PostOutcome {
    Accepted,
    /// Worth trying again (429, 409, 5xx, timeouts, connection failures), after `after`
    /// when Stripe said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Stripe refused it for good: its status, error code and message.
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
}

/// What a failed answer says about retrying, counted in the request metrics: whether it
/// was a 429, `Stripe-Should-Retry`, and `Retry-After`.
fn refusal(response: &reqwest::Response) -> (bool, Option<bool>, Option<Duration>) {
    let rate_limited = response.status() == StatusCode::TOO_MANY_REQUESTS;
    crate::metrics::STRIPE_API_REQUESTS.inc(if rate_limited {
        "rate_limited"
    } else {
        "error"
    });
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::trim)
    };
    let should_retry = header("stripe-should-retry").map(|v| v == "true");
    let retry_after = header(reqwest::header::RETRY_AFTER.as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    (rate_limited, should_retry, retry_after)
}

/// How hard one request tries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request: the first plus retries.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured by waiting; a longer one fails the request.
    pub max_retry_after: Duration,
    /// The first backoff; doubled per attempt, with jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Applying a webhook: a few quick tries; the inbox's own backoff takes over after.
    pub const APPLY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        max_retry_after: Duration::from_secs(10),
        base_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(4),
    };
    /// Reconcile: a long run should survive a rate-limit storm or a short Stripe outage.
    pub const RECONCILE: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        max_retry_after: Duration::from_secs(120),
        base_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
    };

    /// The wait before retry number `attempt` (1-based): "equal jitter", half fixed and half
    /// random, so a fleet of clients does not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// At most `per_sec` request starts in any one-second window, shared by every client of one
/// environment in this process; plus a pause that a 429's `Retry-After` sets for all of them.
///
/// It is a sliding-window log: the start times of the last `per_sec` requests. A request may
/// start when fewer than `per_sec` started in the past second, so a window never holds more
/// (no burst above the limit), and a steady stream runs at exactly the limit.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: usize,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    starts: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    /// `per_sec = 0` means no limit.
    pub fn new(per_sec: u32) -> Self {
        RateLimiter {
            per_sec: per_sec as usize,
            state: Mutex::default(),
        }
    }

    /// Waits for a slot, then takes it. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let began = Instant::now();
        loop {
            let wait_until = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let paused = s.paused_until.filter(|t| *t > now);
                if paused.is_none() {
                    s.paused_until = None;
                }
                if self.per_sec > 0 {
                    while s.starts.front().is_some_and(|t| {
                        now.duration_since(*t) >= Duration::from_secs(1) + WINDOW_SLACK
                    }) {
                        s.starts.pop_front();
                    }
                }
                let full = self.per_sec > 0 && s.starts.len() >= self.per_sec;
                match (paused, full) {
                    (None, false) => {
                        if self.per_sec > 0 {
                            s.starts.push_back(now);
                        }
                        return began.elapsed();
                    }
                    (Some(p), false) => p,
                    (p, true) => {
                        let slot = s.starts[0] + Duration::from_secs(1) + WINDOW_SLACK;
                        p.map_or(slot, |p| p.max(slot))
                    }
                }
            };
            tokio::time::sleep_until(wait_until).await;
        }
    }

    /// Stops every request of this environment for `d` (a 429's `Retry-After`).
    pub fn pause(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + d;
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
    }
}

/// One environment's view of the Stripe API.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
    limiter: Arc<RateLimiter>,
    policy: RetryPolicy,
    /// Per request (`stripe_timeout_secs`).
    timeout: Duration,
    /// Requests sent through this client and its clones.
    sent: Arc<AtomicU64>,
}

/// The shared HTTP client: connection pool, connect timeout (each request sets its own
/// total timeout from its environment's `stripe_timeout_secs`).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("entitled/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A page of a list.
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

impl Page<serde_json::Value> {
    /// `starting_after` for the next page: the last object's id, or `None` at the end.
    pub fn next_after(&self) -> Option<String> {
        if !self.has_more {
            return None;
        }
        self.data.last()?["id"].as_str().map(str::to_string)
    }
}

impl StripeClient {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        api_key: &str,
        limiter: Arc<RateLimiter>,
        timeout: Duration,
    ) -> Self {
        StripeClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            limiter,
            policy: RetryPolicy::APPLY,
            timeout,
            sent: Arc::default(),
        }
    }

    /// Sends one request when the rate limit allows, with the client's timeout and key,
    /// counting it in [`StripeClient::requests_sent`].
    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        self.limiter.acquire().await;
        self.sent.fetch_add(1, Ordering::Relaxed);
        request
            .timeout(self.timeout)
            .bearer_auth(&self.api_key)
            .send()
            .await
    }

    /// Requests sent so far through this client and its clones, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The subscription, or `None` when Stripe no longer has it (404).
    #[tracing::instrument(skip(self), fields(stripe.request = "retrieve_subscription"))]
    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, ClientError> {
        self.get(&format!("/v1/subscriptions/{id}"), &[]).await
    }

    /// The customer, or `None` when Stripe does not know it (404). A deleted customer is
    /// returned with `deleted: true`.
    #[tracing::instrument(skip(self), fields(stripe.request = "retrieve_customer"))]
    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, ClientError> {
        self.get(&format!("/v1/customers/{id}"), &[]).await
    }

    /// One page of a list endpoint: `limit=100`, after `starting_after`, with `params`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
        starting_after: Option<&str>,
    ) -> Result<Page<T>, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", "100".into())];
        query.extend(params.iter().cloned());
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_string()));
        }
        let list: List<T> = self
            .get(path, &query)
            .await?
            .ok_or_else(|| ClientError::Status {
                path: path.into(),
                status: 404,
                message: "the list endpoint does not exist".into(),
            })?;
        Ok(Page {
            data: list.data,
            has_more: list.has_more,
        })
    }

    /// One `POST` of a form (no retries here: the caller's outbox retries), through the
    /// environment's rate limiter. A 429's `Retry-After` pauses the whole limiter.
    #[tracing::instrument(skip(self, form), fields(stripe.request = "post"))]
    pub async fn post_form(&self, path: &str, form: &[(String, String)]) -> PostOutcome {
        let url = format!("{}{path}", self.base);
        let body = match serde_urlencoded::to_string(form) {
            Ok(b) => b,
            Err(e) => {
                return PostOutcome::Rejected {
                    status: 0,
                    code: None,
                    message: format!("the form cannot be encoded: {e}"),
                }
            }
        };
        let post = self.http.post(&url).header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        let sent = self.send(post.body(body)).await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                crate::metrics::STRIPE_API_REQUESTS.inc("error");
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                return PostOutcome::Retry {
                    after: None,
                    reason: format!("POST {path}: {what}"),
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            crate::metrics::STRIPE_API_REQUESTS.inc("ok");
            return PostOutcome::Accepted;
        }
        let (rate_limited, should_retry, retry_after) = refusal(&response);
        let retry_after = retry_after.map(|d| d.min(Duration::from_secs(3600)));
        let body = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
        let message = error["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.chars().take(200).collect());
        let code = error["error"]["code"].as_str().map(str::to_string);
        let retryable = rate_limited || status == StatusCode::CONFLICT || status.is_server_error();
        if should_retry.unwrap_or(retryable) {
            if let (true, Some(d)) = (rate_limited, retry_after) {
                // Stripe asked this account to hold off: hold every request.
                self.limiter.pause(d);
            }
            return PostOutcome::Retry {
                after: retry_after,
                reason: format!(
                    "POST {path}: Stripe answered {}: {message}",
                    status.as_u16()
                ),
            };
        }
        PostOutcome::Rejected {
            status: status.as_u16(),
            code,
            message,
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.send(self.http.get(&url).query(query)).await;
            let response = match sent {
                Ok(r) => r,
                Err(e)
                    if attempt < self.policy.max_attempts && (e.is_connect() || e.is_timeout()) =>
                {
                    crate::metrics::STRIPE_API_REQUESTS.inc("error");
                    let wait = self.policy.backoff(attempt);
                    tracing::debug!(path, error = %e, ?wait, "Stripe unreachable; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(source) => {
                    crate::metrics::STRIPE_API_REQUESTS.inc("error");
                    return Err(ClientError::Transport {
                        path: path.into(),
                        source,
                    });
                }
            };
            let status = response.status();
            if status.is_success() {
                crate::metrics::STRIPE_API_REQUESTS.inc("ok");
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|source| ClientError::Transport {
                        path: path.into(),
                        source,
                    })?;
                return serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ClientError::Body {
                        path: path.into(),
                        message: e.to_string(),
                    });
            }
            if status == StatusCode::NOT_FOUND {
                crate::metrics::STRIPE_API_REQUESTS.inc("not_found");
                return Ok(None);
            }
            let (rate_limited, should_retry, retry_after) = refusal(&response);
            let retryable =
                rate_limited || status == StatusCode::CONFLICT || status.is_server_error();
            if attempt < self.policy.max_attempts
                && should_retry.unwrap_or(retryable)
                && retry_after.is_none_or(|d| d <= self.policy.max_retry_after)
            {
                let wait = match retry_after {
                    Some(d) => {
                        // Stripe asked this account to hold off: hold every request, not
                        // only this one.
                        self.limiter.pause(d);
                        d
                    }
                    None => self.policy.backoff(attempt),
                };
                tracing::info!(
                    path,
                    status = status.as_u16(),
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "Stripe asked us to retry"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(ClientError::Status {
                path: path.into(),
                status: status.as_u16(),
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    //! On paused tokio time: the clock only moves when every task waits, and then straight to
    //! the next timer, so start times are exact and the tests take no wall-clock time.

    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    /// How long a full window holds the next request: one second plus the slack.
    const WINDOW: Duration = Duration::from_millis(1005);

    /// Acquires `n` slots from as many concurrent tasks; returns each start, as the time
    /// since `t0`, sorted.
    async fn concurrent_starts(limiter: &Arc<RateLimiter>, n: usize, t0: Instant) -> Vec<Duration> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    limiter.acquire().await;
                    Instant::now() - t0
                })
            })
            .collect();
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        starts.sort();
        starts
    }

    /// The most starts in any half-open window `[t, t + 1 s)`.
    fn most_in_any_second(starts: &[Duration]) -> usize {
        starts
            .iter()
            .map(|t| {
                starts
                    .iter()
                    .filter(|u| **u >= *t && **u < *t + SEC)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_second() {
        let limiter = Arc::new(RateLimiter::new(40));
        let t0 = Instant::now();
        let starts = concurrent_starts(&limiter, 100, t0).await;
        assert_eq!(most_in_any_second(&starts), 40, "{starts:?}");
        // 100 requests at 40/s: 40 at once, 40 when the first window has passed, then 20.
        let expected: Vec<Duration> = (0..100u32).map(|i| WINDOW * (i / 40)).collect();
        assert_eq!(starts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_runs_at_exactly_the_limit() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..23 {
            let waited = limiter.acquire().await;
            let at = Instant::now() - t0;
            // Each start waited exactly as long as the window made it.
            assert_eq!(waited, at - starts.last().copied().unwrap_or_default());
            starts.push(at);
        }
        assert_eq!(most_in_any_second(&starts), 5);
        let expected: Vec<Duration> = (0..23u32).map(|i| WINDOW * (i / 5)).collect();
        assert_eq!(starts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_never_waits() {
        let limiter = Arc::new(RateLimiter::new(0));
        let t0 = Instant::now();
        let starts = concurrent_starts(&limiter, 1000, t0).await;
        assert!(starts.iter().all(Duration::is_zero), "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_for_exactly_that_long() {
        let limiter = Arc::new(RateLimiter::new(0));
        let t0 = Instant::now();
        limiter.pause(Duration::from_millis(300));
        assert_eq!(limiter.acquire().await, Duration::from_millis(300));
        assert_eq!(Instant::now() - t0, Duration::from_millis(300));
        // Over: the next request goes at once.
        assert_eq!(limiter.acquire().await, Duration::ZERO);

        // Every task of the environment waits, then all go at the same instant.
        let t1 = Instant::now();
        limiter.pause(Duration::from_millis(2500));
        let starts = concurrent_starts(&limiter, 8, t1).await;
        assert_eq!(starts, vec![Duration::from_millis(2500); 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_during_a_wait_holds_the_waiters_too() {
        // A full window: 10 went at 0, 5 more wait for 1.005 s. At 0.5 s a 429 says
        // `Retry-After: 3`: the waiters wake at 1.005 s, find the pause, and go at 3.5 s.
        let limiter = Arc::new(RateLimiter::new(10));
        let t0 = Instant::now();
        let first = concurrent_starts(&limiter, 10, t0).await;
        assert_eq!(first, vec![Duration::ZERO; 10]);
        let pauser = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                limiter.pause(Duration::from_secs(3));
            })
        };
        let waiters = concurrent_starts(&limiter, 5, t0).await;
        pauser.await.unwrap();
        assert_eq!(waiters, vec![Duration::from_millis(3500); 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_pause_does_not_cut_a_longer_one() {
        let limiter = RateLimiter::new(0);
        let t0 = Instant::now();
        limiter.pause(Duration::from_secs(2));
        limiter.pause(Duration::from_secs(1));
        limiter.acquire().await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
        // A longer one extends it.
        let t1 = Instant::now();
        limiter.pause(Duration::from_secs(1));
        limiter.pause(Duration::from_secs(4));
        limiter.acquire().await;
        assert_eq!(Instant::now() - t1, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_shorter_than_the_window_waits_for_the_window() {
        let limiter = RateLimiter::new(2);
        let t0 = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        limiter.pause(Duration::from_millis(200));
        limiter.acquire().await;
        assert_eq!(Instant::now() - t0, WINDOW);
    }

    /// The un-jittered wait before retry `attempt`: doubling from the base, capped.
    fn ceiling(p: &RetryPolicy, attempt: u32) -> Duration {
        let mut d = p.base_backoff;
        for _ in 1..attempt {
            d = (d * 2).min(p.max_backoff);
        }
        d.min(p.max_backoff)
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_is_capped() {
        for p in [RetryPolicy::APPLY, RetryPolicy::RECONCILE] {
            for attempt in 1..40 {
                let exp = ceiling(&p, attempt);
                let samples: Vec<Duration> = (0..200).map(|_| p.backoff(attempt)).collect();
                for d in &samples {
                    assert!(
                        *d >= exp / 2 && *d <= exp,
                        "attempt {attempt}: {d:?} outside [{:?}, {exp:?}]",
                        exp / 2
                    );
                }
                // Jittered: 200 uniform draws spanning less than a quarter of the range is
                // all but impossible (about 200 / 4^199).
                let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
                assert!(*hi - *lo > exp / 8, "attempt {attempt}: {lo:?}..{hi:?}");
            }
        }
        // The numbers a reader of the policy expects.
        let p = RetryPolicy::RECONCILE;
        assert_eq!(ceiling(&p, 1), Duration::from_millis(500));
        assert_eq!(ceiling(&p, 4), Duration::from_secs(4));
        assert_eq!(ceiling(&p, 7), Duration::from_secs(30));
        let d = p.backoff(u32::MAX);
        assert!(
            d >= Duration::from_secs(15) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }
}
