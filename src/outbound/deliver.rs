//! Delivering one claimed message: sign, POST, record the attempt, decide what comes next.
//!
//! Only a 2xx answer is success; redirects are not followed. `410 Gone` disables the
//! endpoint. `429` and `503` with `Retry-After` are retried after that long; every other
//! failure on the configured schedule (the Standard Webhooks one by default, ±20% jitter),
//! then the message is given up (`failure`). An endpoint that has accepted nothing for 24
//! hours (since its last success, or since it was created, re-enabled or edited), while at
//! least 90% of at least 25 attempts in those 24 hours failed, is disabled, and why is
//! recorded on it: a short outage during a burst is retried, not a reason to give up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;

use super::{sign, Outbound};
use crate::store::webhooks::{self, Attempt, Claimed};

/// How long an endpoint must have accepted nothing before its failure rate disables it.
const DAY_SECS: f64 = 86_400.0;

/// The first bytes of a response kept with its attempt.
const BODY_KEPT: usize = 1024;

impl crate::outbox::Outbox for Outbound {
    type Item = Claimed;

    fn name(&self) -> &'static str {
        "webhooks"
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, crate::store::Error> {
        // The lease outlasts the attempt's timeout, so no other worker takes the message
        // while this one may still be sending it.
        let lease = self.config.timeout_secs as f64 + 30.0;
        webhooks::claim_due(&self.pool, limit as i64, lease).await
    }

    async fn deliver(self: Arc<Self>, c: Claimed) {
        let outcome = self.send(&c).await;
        let retry_after = outcome.retry_after;
        let gone = outcome.code == Some(410);
        let retry_at = if outcome.ok || gone {
            None
        } else {
            self.next_delay(c.attempt_count, retry_after)
                .map(|d| Utc::now() + chrono::Duration::milliseconds(d.as_millis() as i64))
        };
        let attempt = Attempt {
            succeeded: outcome.ok,
            response_code: outcome.code.map(i32::from),
            latency_ms: outcome.latency.as_millis().min(i32::MAX as u128) as i32,
            response_body: outcome.body.as_deref(),
            error: outcome.error.as_deref(),
            retry_at,
        };
        let result = if outcome.ok {
            "success"
        } else if retry_at.is_some() {
            "retry"
        } else {
            "failure"
        };
        crate::metrics::WEBHOOK_OUT_DELIVERIES.inc(result);
        crate::metrics::WEBHOOK_OUT_SECONDS.observe(outcome.latency.as_secs_f64());
        tracing::info!(
            webhook_event_id = %c.id, webhook_id = %c.webhook_id, request_type = %c.request_type,
            attempt = c.attempt_count, code = ?outcome.code, latency_ms = attempt.latency_ms,
            error = ?outcome.error, result, "webhook delivery"
        );
        if let Err(e) = webhooks::finish(&self.pool, &c, &attempt).await {
            // The lease runs out and the message is delivered again: at least once.
            tracing::warn!(webhook_event_id = %c.id, error = %e, "recording a delivery failed");
            return;
        }
        if gone {
            self.disable(&c.webhook_id, "the endpoint answered 410 Gone")
                .await;
        } else if !outcome.ok {
            self.disable_if_failing(&c.webhook_id).await;
        }
    }
}

struct Outcome {
    ok: bool,
    code: Option<u16>,
    latency: Duration,
    body: Option<String>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Outbound {
    async fn send(&self, c: &Claimed) -> Outcome {
        let now = Utc::now();
        let previous = c
            .previous_secret
            .as_deref()
            .filter(|_| c.previous_secret_expires_at.is_some_and(|t| t > now));
        let body = c.payload.as_bytes();
        let mut req = self
            .http
            .post(&c.url)
            .header("content-type", "application/json");
        for (name, value) in
            sign::headers(&c.secret, previous, &c.message_id, now.timestamp(), body)
        {
            req = req.header(name, value);
        }
        let started = Instant::now();
        match req.body(c.payload.clone()).send().await {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|_| code == 429 || code == 503)
                    .map(|s| Duration::from_secs(s.min(86_400)));
                let mut kept = Vec::new();
                while kept.len() < BODY_KEPT {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                kept.truncate(BODY_KEPT);
                Outcome {
                    ok: (200..300).contains(&code),
                    code: Some(code),
                    latency: started.elapsed(),
                    body: Some(String::from_utf8_lossy(&kept).into_owned()),
                    error: None,
                    retry_after,
                }
            }
            Err(e) => Outcome {
                ok: false,
                code: None,
                latency: started.elapsed(),
                body: None,
                error: Some(describe(&e)),
                retry_after: None,
            },
        }
    }

    /// How long until the next attempt after failed attempt number `attempts`; `None` when
    /// the schedule is exhausted.
    fn next_delay(&self, attempts: i32, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self
            .config
            .retry_schedule_secs
            .get(usize::try_from(attempts - 1).ok()?)?;
        if let Some(d) = retry_after {
            return Some(d);
        }
        let jitter = rand::rng().random_range(0.8..=1.2);
        Some(Duration::from_secs_f64(scheduled as f64 * jitter))
    }

    async fn disable_if_failing(&self, webhook_id: &str) {
        match webhooks::recent_failure_rate(&self.pool, webhook_id).await {
            Ok((total, failed, failing_secs))
                if total >= 25 && failed * 10 >= total * 9 && failing_secs >= DAY_SECS =>
            {
                let reason = format!(
                    "no delivery accepted for 24 hours; {failed} of the last {total} attempts failed (at least 90%)"
                );
                self.disable(webhook_id, &reason).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(webhook_id, error = %e, "failure rate not read"),
        }
    }

    async fn disable(&self, webhook_id: &str, reason: &str) {
        match webhooks::disable(&self.pool, webhook_id, reason).await {
            Ok(Some(dropped)) => {
                crate::metrics::WEBHOOK_OUT_DISABLED.inc();
                tracing::warn!(
                    webhook_id,
                    reason,
                    pending_given_up = dropped,
                    "webhook endpoint disabled"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(webhook_id, error = %e, "disabling the endpoint failed"),
        }
    }
}

/// A transport failure in a few words (no URL with credentials in it).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirect not followed"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {cause}")
    }
}
