//! The composition root: builds the state from the configuration, starts the background
//! tasks (database probe, snapshot listener, scheduler, check-count flusher, outbound webhook
//! delivery, Stripe inbox workers) and
//! serves until shutdown. Nothing imports this module but the CLI.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::cache::Cache;
use crate::changes::{self, Publisher};
use crate::config::Config;
use crate::datastream::Datastream;
use crate::insights::{self, CheckCounts};
use crate::jobs;
use crate::store;
use crate::stripe::{self, Stripe};

/// Connects, migrates (unless disabled), syncs environments and loads the snapshot.
pub async fn build_state(config: Config) -> anyhow::Result<(AppState, sqlx::postgres::PgListener)> {
    let pool = store::db::pool(&config)?;
    if config.database.migrate_on_start {
        store::db::migrate(&pool).await?;
    }
    let envs = store::environments::sync_environments(&pool, &config.environments).await?;
    let listener = changes::subscribe(&pool).await?;
    let pairs: Vec<_> = envs
        .into_iter()
        .zip(config.environments.iter().cloned())
        .collect();
    let checks = Arc::new(CheckCounts::new(pairs.iter().map(|(e, _)| e.id.clone())));
    let cache = Cache::load(pool.clone(), &pairs).await?;
    let publisher = Publisher::new(cache.clone());
    let ingestor = crate::ingest::Ingestor::start(
        pool.clone(),
        cache.clone(),
        publisher.clone(),
        config.webhooks.limit_warning_percent,
    );
    let stripe = Arc::new(Stripe::new(&config.stripe));
    let breaker = store::breaker::Breaker::new(store::db::connect_options(&config)?);
    let datastream = Datastream::new(cache.clone(), publisher.clone(), config.datastream.clone());
    Ok((
        AppState::new(crate::api::state::Shared {
            pool,
            cache,
            config: Arc::new(config),
            changes: publisher,
            ingestor,
            checks,
            stripe,
            db: Arc::new(breaker),
            datastream,
        }),
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
    // Probes Postgres, so requests answer 503 at once while it is down.
    tracker.spawn({
        let (breaker, shutdown) = (state.db.clone(), shutdown.clone());
        async move { breaker.run(shutdown).await }
    });
    changes::spawn_listener(
        state.cache.clone(),
        state.changes.clone(),
        pg_listener,
        shutdown.clone(),
        &tracker,
    );
    jobs::spawn(
        state.job_context(shutdown.clone()),
        shutdown.clone(),
        &tracker,
    );
    insights::spawn_flusher(
        state.pool.clone(),
        state.checks.clone(),
        std::time::Duration::from_secs(state.config.insights.check_flush_secs),
        shutdown.clone(),
        &tracker,
    );
    // Delivers outbound webhooks, starting with whatever is due.
    crate::outbound::Outbound::new(state.pool.clone(), state.config.webhooks.clone()).spawn(
        state.changes.outbox_wake(),
        shutdown.clone(),
        &tracker,
    );
    // Sends billable usage to Stripe's meters, starting with whatever is due.
    stripe::meters::MeterSender::new(
        state.pool.clone(),
        state.stripe.clone(),
        state.sync().environments.as_ref().clone(),
    )
    .spawn(state.changes.meter_wake(), shutdown.clone(), &tracker);
    // Drains the Stripe inbox, starting with whatever a previous process left pending.
    stripe::worker::spawn(
        state.sync(),
        state.config.database.max_connections,
        shutdown.clone(),
        &tracker,
    );
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "entitled listening");
    let app = crate::api::router(state.clone()).merge(crate::console::router(state.clone()));
    let token = shutdown.clone();
    // Checks straight to their handlers, the rest through the router with each client's
    // address (the console rate-limits sign-ins per address).
    let app = crate::api::front::MakeFront::new(app, state.clone());
    let datastream = state.datastream.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            token.cancelled().await;
            // Upgraded connections are not the server's to wait for: close them (1001).
            datastream.shutdown().await;
        })
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
