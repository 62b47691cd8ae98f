//! Environments: the configured ones, synced into the database at start.

use sqlx::PgPool;

use crate::config::EnvironmentConfig;
use crate::ids;

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
) -> super::Result<Vec<Environment>> {
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
