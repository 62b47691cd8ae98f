//! What every handler shares through `State`.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::api::auth::Auth;
use crate::api::error::AppResult;
use crate::cache::Cache;
use crate::changes::{Change, Publisher};
use crate::config::Config;
use crate::ingest::Ingestor;
use crate::insights::CheckCounts;
use crate::jobs::JobContext;
use crate::store;
use crate::stripe::{Stripe, SyncContext};

/// Shared by every handler through `State`: one `Arc`, so the clones axum makes per request
/// (the handler service, the `State` extractor) are one reference count each, not one per
/// field. With ten fields each clone and drop touched ten counters shared by every worker
/// thread; `benches/checks.sh` with `PERF_DIR` put that at ≈4% of a check's samples.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub pool: PgPool,
    pub cache: Arc<Cache>,
    pub config: Arc<Config>,
    /// Publishes what each write changed (notify, commit, refresh).
    pub changes: Publisher,
    /// Event writers (group commit).
    pub ingestor: Ingestor,
    /// Checks per environment and flag, counted in memory for insights.
    pub checks: Arc<CheckCounts>,
    /// The Stripe inbox worker's wake-up call and the Stripe API's HTTP client.
    pub stripe: Arc<Stripe>,
    /// Whether Postgres is known to be down: routes that need it answer 503 at once.
    pub db: Arc<store::breaker::Breaker>,
    /// `GET /datastream`: the SDKs' local-evaluation connections.
    pub datastream: Arc<crate::datastream::Datastream>,
}

impl AppState {
    /// Resolves an API key secret from the snapshot (no database on the hot path).
    pub fn authenticate(&self, secret: &str) -> Option<Auth> {
        self.cache
            .api_key(&store::api_keys::hash_key(secret))
            .map(Auth::new)
    }

    /// What applying Stripe state needs, from this process.
    pub fn sync(&self) -> SyncContext {
        self.job_context(CancellationToken::new()).sync()
    }

    /// What the scheduler's jobs need, from this process.
    pub fn job_context(&self, shutdown: CancellationToken) -> JobContext {
        JobContext {
            pool: self.pool.clone(),
            cache: self.cache.clone(),
            config: self.config.clone(),
            stripe: self.stripe.clone(),
            changes: self.changes.clone(),
            shutdown,
        }
    }

    /// Whether an outbound webhook of the key's environment wants `request_type` (so the
    /// handler builds the message's views only then).
    pub fn wants(&self, auth: &Auth, request_type: &str) -> bool {
        self.cache.webhooks_want(auth.env_id(), request_type)
    }

    /// Writes outbound webhook messages for `events` in `tx` (the transaction of the change
    /// they report). Returns the change to commit with, when anything was written.
    pub async fn emit(
        &self,
        tx: &mut store::Conn,
        auth: &Auth,
        events: &[crate::outbound::Event],
    ) -> AppResult<Option<Change>> {
        if events.is_empty() {
            return Ok(None);
        }
        Ok(crate::outbound::emit(tx, auth.env_id(), &auth.env.environment.key, events).await?)
    }

    /// Begins a transaction for a handler that writes through several store functions.
    pub async fn begin(&self) -> AppResult<store::Tx> {
        Ok(store::begin(&self.pool).await?)
    }

    /// Commits `tx` and refreshes this process's snapshot; other replicas hear of it through
    /// the notifications queued in the transaction.
    pub async fn commit(&self, tx: store::Tx, changes: &[Change]) -> AppResult<()> {
        Ok(self.changes.commit(tx, changes).await?)
    }
}
