//! The scheduler: cron expressions from `[schedule]`, one task per job. Each job is a
//! `run_once(&ctx, now)` step function; the scheduler only decides when.
//!
//! With several replicas each scheduled tick runs once in total: every replica computes the
//! same tick times from the cron expression, and the first to insert `(job, tick)` into
//! `job_runs` runs it (`ON CONFLICT DO NOTHING`). Jobs are idempotent besides.

pub mod expire_overrides;
pub mod grant_credits;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{Cache, Change};
use crate::config::Config;

/// What jobs need.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    pub cache: Arc<Cache>,
    pub config: Arc<Config>,
}

impl JobContext {
    /// Commits `tx` with `changes` published to every replica's snapshot.
    pub async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        changes: &[Change],
    ) -> Result<(), sqlx::Error> {
        crate::cache::notify_all(&mut tx, self.cache.origin(), changes).await?;
        tx.commit().await?;
        self.cache.after_commit(changes).await;
        Ok(())
    }
}

/// A job's result, stored on its `job_runs` row.
pub type Summary = serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    ExpireOverrides,
    GrantCredits,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::ExpireOverrides => "expire_overrides",
            Job::GrantCredits => "grant_credits",
        }
    }

    pub async fn run_once(self, ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
        match self {
            Job::ExpireOverrides => expire_overrides::run_once(ctx, now).await,
            Job::GrantCredits => grant_credits::run_once(ctx, now).await,
        }
    }

    fn expression(self, config: &Config) -> &str {
        match self {
            Job::ExpireOverrides => &config.schedule.expire_overrides,
            Job::GrantCredits => &config.schedule.grant_credits,
        }
    }
}

pub const JOBS: [Job; 2] = [Job::ExpireOverrides, Job::GrantCredits];

/// Parses a six-field cron expression (with seconds), naming the key on error.
pub fn parse_schedule(key: &str, expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| {
        format!("schedule.{key} = {expr:?} is not a cron expression with seconds: {e}")
    })
}

/// Starts one task per scheduled job (an empty expression disables a job).
pub fn spawn(ctx: JobContext, shutdown: CancellationToken, tracker: &TaskTracker) {
    for job in JOBS {
        let expr = job.expression(&ctx.config);
        if expr.trim().is_empty() {
            tracing::info!(job = job.name(), "job disabled");
            continue;
        }
        let schedule = match parse_schedule(job.name(), expr) {
            Ok(s) => s,
            Err(e) => {
                // Config::validate rejects these at start; be loud if one slips through.
                tracing::error!(job = job.name(), error = %e, "job not scheduled");
                continue;
            }
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let now = Utc::now();
                let Some(tick) = schedule.after(&now).next() else {
                    return;
                };
                let wait = (tick - now).to_std().unwrap_or(Duration::ZERO);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                // A running job finishes even if shutdown starts meanwhile.
                if let Err(e) = run_tick(&ctx, job, tick).await {
                    tracing::warn!(job = job.name(), %tick, error = %e, "job tick not run");
                }
            }
        });
    }
}

/// Claims `tick` for `job`; runs it when this replica won the claim. Returns whether it ran.
#[tracing::instrument(skip_all, fields(job = job.name(), %tick))]
pub async fn run_tick(
    ctx: &JobContext,
    job: Job,
    tick: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO job_runs (job, tick, instance) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(job.name())
    .bind(tick)
    .bind(ctx.cache.origin())
    .execute(&ctx.pool)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        crate::metrics::record_job_run(job.name(), "skipped", 0.0);
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let result = job.run_once(ctx, Utc::now()).await;
    let elapsed = started.elapsed();
    let (status, summary, error) = match &result {
        Ok(summary) => ("succeeded", Some(summary.clone()), None),
        Err(e) => ("failed", None, Some(format!("{e:#}"))),
    };
    crate::metrics::record_job_run(
        job.name(),
        if result.is_ok() { "ok" } else { "error" },
        elapsed.as_secs_f64(),
    );
    match &result {
        Ok(summary) => tracing::info!(elapsed_ms = elapsed.as_millis() as u64, %summary, "job ran"),
        Err(e) => {
            tracing::error!(elapsed_ms = elapsed.as_millis() as u64, error = %e, "job failed")
        }
    }
    sqlx::query(
        "UPDATE job_runs SET status = $3, finished_at = clock_timestamp(), summary = $4, error = $5
         WHERE job = $1 AND tick = $2",
    )
    .bind(job.name())
    .bind(tick)
    .bind(status)
    .bind(summary.map(sqlx::types::Json))
    .bind(error)
    .execute(&ctx.pool)
    .await?;
    Ok(true)
}
