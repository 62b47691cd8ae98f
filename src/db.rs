//! The Postgres pool, the migrator, and syncing configured environments into the database.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::{Config, EnvironmentConfig};
use crate::ids;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made lazily, so a server can start (and answer `/health`)
/// while Postgres is still coming up; `acquire_timeout` bounds how long a request waits.
pub fn pool(config: &Config) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .database
        .url
        .expose()
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url is not a valid Postgres URL: {e}"))?;
    let options = options
        .application_name("entitled")
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(500));
    Ok(PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(config.database.acquire_timeout_secs))
        .connect_lazy_with(options))
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
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(applied.unwrap_or(0) >= latest)
}

/// An environment as stored: its database id and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub id: String,
    pub key: String,
    pub name: String,
}

/// Creates or renames the configured environments; returns them in configuration order.
/// Environments removed from the configuration are kept (their data stays).
pub async fn sync_environments(
    pool: &PgPool,
    envs: &[EnvironmentConfig],
) -> Result<Vec<Environment>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(envs.len());
    for env in envs {
        let (id, key, name): (String, String, String) = sqlx::query_as(
            "INSERT INTO environments (id, key, name) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name,
                 updated_at = CASE WHEN environments.name = EXCLUDED.name
                                   THEN environments.updated_at ELSE now() END
             RETURNING id, key, name",
        )
        .bind(ids::new_id(ids::prefix::ENVIRONMENT))
        .bind(&env.key)
        .bind(&env.name)
        .fetch_one(&mut *tx)
        .await?;
        out.push(Environment { id, key, name });
    }
    tx.commit().await?;
    Ok(out)
}
