//! A small Stripe API client: what applying webhooks needs (re-reading a subscription, and a
//! customer entitled has not heard of yet).
//!
//! Why not async-stripe: its 1.0 is not released (1.0.0-rc.10 is the newest on crates.io).
//! Its rc types do parse `2026-09-30.endive` subscriptions (checked against Stripe's example
//! object), but its client does not expose `Retry-After` on a 429, which we must honour, and
//! its generated crates add minutes to every clean build on our 2-core machines. reqwest plus
//! serde structs holding only the fields we read (`objects.rs`) parse any API version whose
//! fields keep their meaning. The reconcile milestone may revisit this once 1.0 ships.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::objects::{Customer, Subscription};

/// Attempts per request: the first plus retries of 429 and 5xx answers.
const MAX_ATTEMPTS: u32 = 4;
/// The longest `Retry-After` we wait inside one apply; longer waits fail the event, which
/// is then retried with the inbox's backoff.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

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

/// One environment's view of the Stripe API.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

/// The shared HTTP client: connection pool, timeouts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .user_agent(concat!("entitled/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl StripeClient {
    pub fn new(http: reqwest::Client, base: &str, api_key: &str) -> Self {
        StripeClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
        }
    }

    /// The subscription, or `None` when Stripe no longer has it (404).
    #[tracing::instrument(skip(self), fields(stripe.request = "retrieve_subscription"))]
    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, ClientError> {
        self.get(&format!("/v1/subscriptions/{id}")).await
    }

    /// The customer, or `None` when Stripe does not know it (404). A deleted customer is
    /// returned with `deleted: true`.
    #[tracing::instrument(skip(self), fields(stripe.request = "retrieve_customer"))]
    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, ClientError> {
        self.get(&format!("/v1/customers/{id}")).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.http.get(&url).bearer_auth(&self.api_key).send().await;
            let response = match sent {
                Ok(r) => r,
                Err(e) if attempt < MAX_ATTEMPTS && (e.is_connect() || e.is_timeout()) => {
                    crate::metrics::STRIPE_API_REQUESTS.inc("error");
                    tokio::time::sleep(backoff(attempt)).await;
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
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            crate::metrics::STRIPE_API_REQUESTS.inc(if status == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else {
                "error"
            });
            let should_retry = response
                .headers()
                .get("stripe-should-retry")
                .and_then(|v| v.to_str().ok())
                .map(|v| v == "true");
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            if attempt < MAX_ATTEMPTS
                && should_retry.unwrap_or(retryable)
                && retry_after.is_none_or(|d| d <= MAX_RETRY_AFTER)
            {
                let wait = retry_after.unwrap_or_else(|| backoff(attempt));
                tracing::debug!(
                    path,
                    status = status.as_u16(),
                    ?wait,
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

/// 0.5 s, 1 s, 2 s, …
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt.saturating_sub(1).min(6)))
}
