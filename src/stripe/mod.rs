//! Stripe in: webhook signatures (`signature`), the durable inbox (`inbox`), applying events
//! and listed objects to companies, billing products and prices, and memberships (`apply`),
//! the rate-limited API client (`client`), the worker that drains the inbox (`worker`), and
//! the full reconciliation that lists everything Stripe holds (`reconcile`). And Stripe out:
//! billable usage sent to Billing Meters from the `meter_events` outbox (`meters`).
//!
//! The path of an event: the webhook handler verifies the signature over the raw body,
//! stores the event in `stripe_events` (concurrent deliveries share one insert and commit:
//! [`inbox::Writer`]), answers 2xx once that committed, and wakes the workers. A worker
//! claims a batch of due events with `FOR UPDATE SKIP LOCKED`, keeps the newest event per
//! object, and applies the batch in one transaction with its inbox statuses and cache
//! notifications (`worker`). A crash between acknowledging and applying
//! leaves the row pending; every worker drains pending rows on start, and the `retry_inbox`
//! job drains due ones on its schedule.

pub mod apply;
pub mod batch;
pub mod client;
pub mod inbox;
pub mod messages;
pub mod meters;
pub mod objects;
pub mod reconcile;
pub mod signature;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::changes::Publisher;
use crate::config::EnvironmentConfig;
use client::{RateLimiter, StripeClient};

/// Per-process Stripe machinery, shared through `AppState`.
pub struct Stripe {
    http: reqwest::Client,
    wake: Notify,
    /// One limiter per Stripe account (environment key) in this process.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
    /// Reconcile runs started through the API: shutdown stops them at a safe point and
    /// waits for them.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Inbox events a worker claims and applies in one transaction (`stripe.batch_size`).
    pub batch_size: usize,
    /// Inbox workers per process (`stripe.workers`), before the pool's cap.
    pub workers: usize,
    /// Group commit of the webhook handler's inbox inserts, started on first use.
    inbox_writer: std::sync::OnceLock<inbox::Writer>,
}

impl Default for Stripe {
    fn default() -> Self {
        Stripe {
            http: client::http_client(),
            wake: Notify::new(),
            limiters: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            workers: DEFAULT_WORKERS,
            inbox_writer: std::sync::OnceLock::new(),
        }
    }
}

/// `stripe.batch_size` in the embedded defaults.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// `stripe.workers` in the embedded defaults.
pub const DEFAULT_WORKERS: usize = 2;

impl Stripe {
    pub fn new(config: &crate::config::StripeConfig) -> Self {
        Stripe {
            batch_size: config.batch_size,
            workers: config.workers,
            ..Stripe::default()
        }
    }

    /// The inbox's group-commit writer, started on first use (inside the runtime).
    pub fn inbox_writer(&self, pool: &PgPool) -> &inbox::Writer {
        self.inbox_writer
            .get_or_init(|| inbox::Writer::start(pool.clone()))
    }

    /// Tells a waiting worker that an event was stored.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The API client of an environment, when it has an API key. Every client of one
    /// environment shares its rate limiter.
    pub fn client(&self, config: &EnvironmentConfig) -> Option<StripeClient> {
        if config.stripe_api_key.is_empty() {
            return None;
        }
        let limiter = self
            .limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(config.key.clone())
            .or_insert_with(|| Arc::new(RateLimiter::new(config.stripe_max_requests_per_sec)))
            .clone();
        Some(StripeClient::new(
            self.http.clone(),
            &config.stripe_api_base,
            config.stripe_api_key.expose(),
            limiter,
            std::time::Duration::from_secs(config.stripe_timeout_secs),
        ))
    }
}

/// What applying Stripe state needs, in `serve` (worker, jobs, API) and in the `reconcile`
/// command alike.
#[derive(Clone)]
pub struct SyncContext {
    pub pool: PgPool,
    pub stripe: Arc<Stripe>,
    /// Environment id → its configuration.
    pub environments: Arc<HashMap<String, EnvironmentConfig>>,
    /// Publishes what each commit changed (and, in `serve`, refreshes the snapshot).
    pub changes: Publisher,
}

impl SyncContext {
    pub fn new(
        pool: PgPool,
        stripe: Arc<Stripe>,
        environments: impl IntoIterator<Item = (String, EnvironmentConfig)>,
        changes: Publisher,
    ) -> Self {
        SyncContext {
            pool,
            stripe,
            environments: Arc::new(environments.into_iter().collect()),
            changes,
        }
    }

    pub fn environment(&self, id: &str) -> Option<&EnvironmentConfig> {
        self.environments.get(id)
    }
}
