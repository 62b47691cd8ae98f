//! The Postgres pool and the migrator.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::Config;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made lazily, so a server can start (and answer `/health`)
/// while Postgres is still coming up; `acquire_timeout` bounds how long a request waits.
pub fn pool(config: &Config) -> anyhow::Result<PgPool> {
    let options = connect_options(config)?;
    Ok(PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(config.database.acquire_timeout_secs))
        .connect_lazy_with(options))
}

/// How to connect to `database.url`, for the pool and the breaker's probe.
pub fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = config
        .database
        .url
        .expose()
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url is not a valid Postgres URL: {e}"))?;
    Ok(options
        .application_name("entitled")
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// Applies pending migrations. Safe to run from several replicas at once: sqlx takes an
/// advisory lock around the run.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
    Ok(())
}

/// True when every migration this binary knows is applied.
pub async fn migrations_applied(pool: &PgPool) -> super::Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(applied.unwrap_or(0) >= latest)
}
