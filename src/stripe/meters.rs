//! The meter-event sender: drains the `meter_events` outbox (`store::meter_events`) into
//! `POST /v1/billing/meter_events`, in every `serve` process.
//!
//! Each row is claimed under a lease with `SKIP LOCKED` ([`crate::outbox`]), never while
//! another row of the same (customer, meter) is in flight (Stripe's rule), and sent with its
//! own `identifier` every time: a resend after a crash or a lost answer is dropped by Stripe
//! (which answers `resource_already_exists`, counted here as sent). Requests go through the
//! environment's rate limiter. 429, 409, 5xx, timeouts and connection failures are retried
//! with exponential backoff (honouring `Retry-After`); any other 4xx marks the row `failed`
//! with Stripe's message; a row older than Stripe's 35-day window ends `expired` unsent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::PostOutcome;
use super::Stripe;
use crate::config::EnvironmentConfig;
use crate::store::meter_events::{self as store, Claimed, Outcome};

/// Requests in flight per process (each for a different customer and meter).
const CONCURRENCY: usize = 16;
/// How often due rows are looked for without a wake-up (retries, closed windows).
const POLL: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_BACKOFF_SECS: f64 = 600.0;

/// Stripe's error code for an identifier it has seen in the last 24 hours.
const DUPLICATE_CODE: &str = "resource_already_exists";

pub struct MeterSender {
    pool: PgPool,
    stripe: Arc<Stripe>,
    /// Environment id → configuration.
    environments: HashMap<String, EnvironmentConfig>,
    /// How long a claim holds a row (and its customer and meter).
    lease_secs: f64,
}

impl MeterSender {
    pub fn new(
        pool: PgPool,
        stripe: Arc<Stripe>,
        environments: HashMap<String, EnvironmentConfig>,
    ) -> Self {
        // The lease outlasts a request's timeout plus a wait for the rate limiter behind
        // every other claimed row, so no other sender takes the row (or its customer and
        // meter) while this one may still be sending it; and it is short, because a crashed
        // sender's rows wait for it to run out.
        let lease_secs = environments
            .values()
            .map(|e| {
                e.stripe_timeout_secs as f64
                    + 10.0
                    + CONCURRENCY as f64 / f64::from(e.stripe_max_requests_per_sec.max(1))
            })
            .fold(15.0, f64::max);
        MeterSender {
            pool,
            stripe,
            environments,
            lease_secs,
        }
    }

    /// Runs the sender until `shutdown`, starting with whatever is due.
    pub fn spawn(self, wake: Arc<Notify>, shutdown: CancellationToken, tracker: &TaskTracker) {
        crate::outbox::spawn(Arc::new(self), wake, CONCURRENCY, POLL, shutdown, tracker);
    }

    async fn send(&self, c: &Claimed) -> Outcome {
        let now = Utc::now();
        if c.timestamp < now - chrono::Duration::days(store::MAX_AGE_DAYS) {
            return Outcome::Expired(format!(
                "timestamp {} is older than Stripe's {}-day window for meter events",
                c.timestamp.to_rfc3339(),
                store::MAX_AGE_DAYS
            ));
        }
        let client = self
            .environments
            .get(&c.environment_id)
            .and_then(|config| self.stripe.client(config));
        let Some(client) = client else {
            return self.retry(
                c,
                None,
                "the environment has no stripe_api_key; set it to send meter events".into(),
            );
        };
        let form = vec![
            ("event_name".to_string(), c.event_name.clone()),
            ("identifier".to_string(), c.identifier.clone()),
            ("timestamp".to_string(), c.timestamp.timestamp().to_string()),
            (
                format!("payload[{}]", c.customer_payload_key),
                c.stripe_customer_id.clone(),
            ),
            (
                format!("payload[{}]", c.value_payload_key),
                c.value.to_string(),
            ),
        ];
        match client.post_form("/v1/billing/meter_events", &form).await {
            PostOutcome::Accepted => Outcome::Sent,
            PostOutcome::Rejected {
                code: Some(code), ..
            } if code == DUPLICATE_CODE => {
                // An earlier attempt got through (its answer was lost): Stripe has it.
                Outcome::Sent
            }
            PostOutcome::Rejected {
                status, message, ..
            } => Outcome::Failed(format!("Stripe answered {status}: {message}")),
            PostOutcome::Retry { after, reason } => self.retry(c, after, reason),
        }
    }

    /// Tries again after `after` (Stripe's `Retry-After`) or an exponential, jittered
    /// backoff by attempt: 1 s, 2 s, 4 s, … up to 10 minutes.
    fn retry(&self, c: &Claimed, after: Option<Duration>, error: String) -> Outcome {
        let wait = after.unwrap_or_else(|| {
            let base = 2f64.powi(c.attempts.clamp(1, 20) - 1).min(MAX_BACKOFF_SECS);
            Duration::from_secs_f64(base * rand::rng().random_range(0.8..=1.2))
        });
        Outcome::Retry {
            at: Utc::now() + chrono::Duration::milliseconds(wait.as_millis() as i64),
            error,
        }
    }
}

impl crate::outbox::Outbox for MeterSender {
    type Item = Claimed;

    fn name(&self) -> &'static str {
        "meter_events"
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, crate::store::Error> {
        store::claim_due(&self.pool, limit as i64, self.lease_secs).await
    }

    #[tracing::instrument(skip_all, fields(meter_event_id = %c.id, meter = %c.meter_id, attempt = c.attempts))]
    async fn deliver(self: Arc<Self>, c: Claimed) {
        let outcome = self.send(&c).await;
        let result = match &outcome {
            Outcome::Sent => "sent",
            Outcome::Retry { .. } => "retry",
            Outcome::Failed(_) => "failed",
            Outcome::Expired(_) => "expired",
        };
        crate::metrics::METER_EVENTS.inc(result);
        match &outcome {
            Outcome::Sent => {
                let lag = (Utc::now() - c.created_at).num_milliseconds().max(0) as f64 / 1000.0;
                crate::metrics::METER_EVENT_LAG_SECONDS.observe(lag);
                tracing::debug!(value = c.value, lag_secs = lag, "meter event sent");
            }
            Outcome::Retry { error, at } => {
                tracing::info!(error = %error, retry_at = %at, "meter event not accepted yet; retrying")
            }
            Outcome::Failed(e) | Outcome::Expired(e) => {
                tracing::warn!(error = %e, result, "meter event given up")
            }
        }
        match store::finish(&self.pool, &c, &outcome).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("the lease ran out before the outcome was recorded"),
            // The lease runs out and the row is sent again, with the same identifier.
            Err(e) => tracing::warn!(error = %e, "recording a meter event's outcome failed"),
        }
    }
}
