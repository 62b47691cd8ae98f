//! The scheduler: cron expressions from `[schedule]`, one task per job. Each job is a
//! `run_once(&ctx, now)` step function; the scheduler only decides when.
//!
//! With several replicas each scheduled tick runs once in total: every replica computes the
//! same tick times from the cron expression, and the first to insert `(job, tick)` into
//! `job_runs` runs it (`ON CONFLICT DO NOTHING`). While it runs it holds a session advisory
//! lock for its job, so a run that outlasts its interval is not overlapped by the next tick
//! on another replica (that tick is recorded as skipped). Jobs are idempotent besides.
//!
//! Why not tokio-cron-scheduler: the tick claim needs every replica to compute identical
//! tick times from the expression, which our own loop over the `cron` crate gives directly.

pub mod expire_overrides;
pub mod grant_credits;
pub mod reconcile;
pub mod retry_inbox;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::changes::Publisher;
use crate::config::Config;
use crate::store::jobs;
use crate::store::locks::SessionLock;
use crate::stripe::{Stripe, SyncContext};

/// What jobs need.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    pub cache: Arc<Cache>,
    pub config: Arc<Config>,
    pub stripe: Arc<Stripe>,
    pub changes: Publisher,
    /// Cancelled at shutdown: long jobs stop at their next safe point.
    pub shutdown: CancellationToken,
}

impl JobContext {
    /// What applying Stripe state needs.
    pub fn sync(&self) -> SyncContext {
        SyncContext::new(
            self.pool.clone(),
            self.stripe.clone(),
            self.cache
                .environments()
                .map(|e| (e.environment.id.clone(), e.config.clone())),
            self.changes.clone(),
        )
    }
}

/// A job's result, stored on its `job_runs` row.
pub type Summary = serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Reconcile,
    ExpireOverrides,
    GrantCredits,
    RetryInbox,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Reconcile => "reconcile",
            Job::ExpireOverrides => "expire_overrides",
            Job::GrantCredits => "grant_credits",
            Job::RetryInbox => "retry_inbox",
        }
    }

    pub async fn run_once(self, ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
        match self {
            Job::Reconcile => reconcile::run_once(ctx, now).await,
            Job::ExpireOverrides => expire_overrides::run_once(ctx, now).await,
            Job::GrantCredits => grant_credits::run_once(ctx, now).await,
            Job::RetryInbox => retry_inbox::run_once(ctx, now).await,
        }
    }

    fn expression(self, config: &Config) -> &str {
        match self {
            Job::Reconcile => &config.schedule.reconcile,
            Job::ExpireOverrides => &config.schedule.expire_overrides,
            Job::GrantCredits => &config.schedule.grant_credits,
            Job::RetryInbox => &config.schedule.retry_inbox,
        }
    }
}

pub const JOBS: [Job; 4] = [
    Job::Reconcile,
    Job::ExpireOverrides,
    Job::GrantCredits,
    Job::RetryInbox,
];

/// Starts one task per scheduled job (an empty expression disables a job).
pub fn spawn(ctx: JobContext, shutdown: CancellationToken, tracker: &TaskTracker) {
    for job in JOBS {
        let expr = job.expression(&ctx.config);
        if expr.trim().is_empty() {
            tracing::info!(job = job.name(), "job disabled");
            continue;
        }
        let schedule = match crate::config::parse_schedule(job.name(), expr) {
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
                // A running job finishes (or stops at a safe point: reconcile) even if
                // shutdown starts meanwhile.
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
) -> crate::store::Result<bool> {
    if !jobs::claim_tick(&ctx.pool, job.name(), tick, ctx.changes.origin()).await? {
        crate::metrics::record_job_run(job.name(), "skipped", 0.0);
        return Ok(false);
    }
    let Some(lock) =
        SessionLock::try_acquire(&ctx.pool, &format!("entitled:job:{}", job.name())).await?
    else {
        tracing::info!("previous run of this job is still going; tick skipped");
        crate::metrics::record_job_run(job.name(), "skipped", 0.0);
        let summary = serde_json::json!({"skipped": "the previous run of this job is still going"});
        jobs::finish_tick(
            &ctx.pool,
            job.name(),
            tick,
            "succeeded",
            Some(&summary),
            None,
        )
        .await?;
        return Ok(true);
    };
    let started = std::time::Instant::now();
    let result = job.run_once(ctx, Utc::now()).await;
    let elapsed = started.elapsed();
    lock.release().await;
    crate::metrics::record_job_run(
        job.name(),
        if result.is_ok() { "ok" } else { "error" },
        elapsed.as_secs_f64(),
    );
    match &result {
        Ok(summary) => {
            tracing::info!(elapsed_ms = elapsed.as_millis() as u64, %summary, "job ran");
            jobs::finish_tick(
                &ctx.pool,
                job.name(),
                tick,
                "succeeded",
                Some(summary),
                None,
            )
            .await?;
        }
        Err(e) => {
            tracing::error!(elapsed_ms = elapsed.as_millis() as u64, error = %e, "job failed");
            let error = format!("{e:#}");
            jobs::finish_tick(&ctx.pool, job.name(), tick, "failed", None, Some(&error)).await?;
        }
    }
    Ok(true)
}
