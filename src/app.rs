//! Application state, the router and the server's lifecycle.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::Auth;
use crate::cache::{self, Cache, Change};
use crate::config::Config;
use crate::insights::{self, CheckCounts};
use crate::{db, error::AppResult};

/// Shared by every handler through `State`.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub cache: Arc<Cache>,
    pub config: Arc<Config>,
    /// Event writers (group commit).
    pub ingestor: crate::ingest::Ingestor,
    /// Checks per environment and flag, counted in memory for insights.
    pub checks: Arc<CheckCounts>,
    /// The Stripe inbox worker's wake-up call and the Stripe API's HTTP client.
    pub stripe: Arc<crate::stripe::Stripe>,
}

impl AppState {
    /// Resolves an API key secret from the snapshot (no database on the hot path).
    pub fn authenticate(&self, secret: &str) -> Option<Auth> {
        let info = self.cache.api_key(&cache::hash_key(secret))?;
        let env = self.cache.env(&info.environment_id)?.clone();
        Some(Auth {
            env,
            key_id: info.id,
            readonly: info.readonly,
        })
    }

    /// What applying Stripe state needs, from this process.
    pub fn sync(&self) -> crate::stripe::SyncContext {
        crate::stripe::SyncContext::from_cache(
            self.pool.clone(),
            self.stripe.clone(),
            self.cache.clone(),
        )
    }

    /// Commits `tx` and refreshes this process's snapshot; other replicas hear of it through
    /// the notifications queued in the transaction.
    pub async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        changes: &[Change],
    ) -> AppResult<()> {
        cache::notify_all(&mut tx, self.cache.origin(), changes).await?;
        tx.commit().await?;
        self.cache.after_commit(changes).await;
        Ok(())
    }
}

/// Connects, migrates (unless disabled), syncs environments and loads the snapshot.
pub async fn build_state(config: Config) -> anyhow::Result<(AppState, sqlx::postgres::PgListener)> {
    let pool = db::pool(&config)?;
    if config.database.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let envs = db::sync_environments(&pool, &config.environments).await?;
    let listener = cache::subscribe(&pool).await?;
    let pairs: Vec<_> = envs
        .into_iter()
        .zip(config.environments.iter().cloned())
        .collect();
    let checks = Arc::new(CheckCounts::new(pairs.iter().map(|(e, _)| e.id.clone())));
    let cache = Cache::load(pool.clone(), &pairs).await?;
    let ingestor = crate::ingest::Ingestor::start(pool.clone(), cache.clone());
    Ok((
        AppState {
            pool,
            cache,
            config: Arc::new(config),
            ingestor,
            checks,
            stripe: Arc::new(crate::stripe::Stripe::default()),
        },
        listener,
    ))
}

/// Serves until `shutdown` is cancelled, then waits for background tasks.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (state, pg_listener) = build_state(config).await?;
    let tracker = TaskTracker::new();
    cache::spawn_listener(state.cache.clone(), pg_listener, shutdown.clone(), &tracker);
    crate::jobs::spawn(
        crate::jobs::JobContext::new(&state, shutdown.clone()),
        shutdown.clone(),
        &tracker,
    );
    insights::spawn_flusher(
        state.clone(),
        std::time::Duration::from_secs(state.config.insights.check_flush_secs),
        shutdown.clone(),
        &tracker,
    );
    // Drains the Stripe inbox, starting with whatever a previous process left pending.
    crate::stripe::worker::spawn(state.clone(), shutdown.clone(), &tracker);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "entitled listening");
    let app = crate::api::router(state.clone());
    let token = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await?;
    shutdown.cancel();
    state.stripe.shutdown.cancel();
    tracker.close();
    state.stripe.tasks.close();
    tracker.wait().await;
    state.stripe.tasks.wait().await;
    state.pool.close().await;
    tracing::info!("entitled stopped");
    Ok(())
}
