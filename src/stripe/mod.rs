//! Stripe in: webhook signatures (`signature`), the durable inbox (`inbox`), applying events
//! to companies, billing products and memberships (`apply`), the API client used to re-read
//! subscriptions (`client`), and the worker that drains the inbox (`worker`).
//!
//! The path of an event: the webhook handler verifies the signature over the raw body,
//! stores the event in `stripe_events` and commits, answers 2xx, and wakes the worker. A
//! worker claims due events with `FOR UPDATE SKIP LOCKED` and applies each in one transaction
//! with its inbox status and cache notifications. A crash between acknowledging and applying
//! leaves the row pending; every worker drains pending rows on start.

pub mod apply;
pub mod client;
pub mod inbox;
pub mod objects;
pub mod signature;
pub mod worker;

use tokio::sync::Notify;

use crate::config::EnvironmentConfig;
use client::StripeClient;

/// Per-process Stripe machinery, shared through `AppState`.
pub struct Stripe {
    http: reqwest::Client,
    wake: Notify,
}

impl Default for Stripe {
    fn default() -> Self {
        Stripe {
            http: client::http_client(),
            wake: Notify::new(),
        }
    }
}

impl Stripe {
    /// Tells a waiting worker that an event was stored.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The API client of an environment, when it has an API key.
    pub fn client(&self, config: &EnvironmentConfig) -> Option<StripeClient> {
        (!config.stripe_api_key.is_empty()).then(|| {
            StripeClient::new(
                self.http.clone(),
                &config.stripe_api_base,
                config.stripe_api_key.expose(),
            )
        })
    }
}
