//! `job_runs`: each scheduled tick of a job, claimed once across replicas, with its outcome.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

/// Claims `(job, tick)` for `instance`; `false` when another replica claimed it first.
pub async fn claim_tick(
    pool: &PgPool,
    job: &str,
    tick: DateTime<Utc>,
    instance: &str,
) -> super::Result<bool> {
    let claimed = sqlx::query(
        "INSERT INTO job_runs (job, tick, instance) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(job)
    .bind(tick)
    .bind(instance)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    Ok(claimed)
}

/// Records how a claimed tick ended: `succeeded` with a summary, or `failed` with an error.
pub async fn finish_tick(
    pool: &PgPool,
    job: &str,
    tick: DateTime<Utc>,
    status: &str,
    summary: Option<&Value>,
    error: Option<&str>,
) -> super::Result<()> {
    sqlx::query(
        "UPDATE job_runs SET status = $3, finished_at = clock_timestamp(), summary = $4, error = $5
         WHERE job = $1 AND tick = $2",
    )
    .bind(job)
    .bind(tick)
    .bind(status)
    .bind(summary.map(sqlx::types::Json))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
