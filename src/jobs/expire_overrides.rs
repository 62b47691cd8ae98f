//! `expire_overrides`: marks overrides past their expiration date as expired and records
//! each expiry. Checks stop applying an override at its expiration date on their own; this
//! makes it visible in the data (`expired_at`, `without_expired` lists) and frees the
//! company and feature for a new override.

use chrono::{DateTime, Utc};

use super::{JobContext, Summary};
use crate::cache::Change;

pub async fn run_once(ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let mut tx = ctx.pool.begin().await?;
    let expired: Vec<(String, String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE company_overrides SET expired_at = $1, updated_at = now()
         WHERE expired_at IS NULL AND expiration_date <= $1
         RETURNING id, environment_id, company_id, feature_id, expiration_date",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut changes = Vec::new();
    for (id, env, company, feature, expiration) in &expired {
        sqlx::query(
            "INSERT INTO override_expiries (override_id, environment_id, company_id, feature_id, expiration_date, expired_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(env)
        .bind(company)
        .bind(feature)
        .bind(expiration)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tracing::info!(override_id = %id, company_id = %company, "override expired");
        changes.push(Change::Company {
            environment_id: env.clone(),
            id: company.clone(),
        });
    }
    changes.dedup();
    ctx.commit(tx, &changes).await?;
    Ok(serde_json::json!({ "expired": expired.len() }))
}
