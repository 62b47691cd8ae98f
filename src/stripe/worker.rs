//! Draining the inbox: a few tasks per process claim batches of due events (`FOR UPDATE SKIP
//! LOCKED`, so replicas and tasks never apply the same event at once; partition locks, so
//! never the same company either) and apply each batch in one transaction with its inbox
//! statuses (`batch`). [`process`] applies one event on its own: a batch's fallback, a retry
//! through the API, and reconcile's catch-up. Woken by the webhook handler after every
//! stored event; on start they drain what a previous process left pending. Failed events
//! whose backoff has passed are picked up by the `retry_inbox` job (`jobs/`), which drains
//! through [`drain`] too.

use std::time::Duration;

use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::apply::{self, ApplyError, Context, Outcome};
pub use super::batch::{process_batch, BatchOutcome};
use super::inbox::{self, Claimed};
use super::SyncContext;
use crate::store;
use crate::store::error::is_unavailable;

/// How long a worker waits before trying again after losing the database.
const RECONNECT: Duration = Duration::from_secs(1);
/// How long a worker waits when everything it claimed is another worker's.
const DEFERRED: Duration = Duration::from_millis(10);
/// How long a worker lets deliveries gather after a batch that was not full.
const LINGER: Duration = Duration::from_millis(10);

/// Worker tasks per process: `stripe.workers`, but at most half the pool, leaving the rest
/// to the API and the inbox writers. A batch is a handful of set-wise statements, so a few
/// workers keep up with a burst; more of them mostly compete with the webhook handler for
/// Postgres (`BENCHMARKS.md`, "Stripe webhooks": 10 workers acknowledged half as many
/// deliveries per second as 2, and applied no faster).
pub fn worker_count(workers: usize, max_connections: u32) -> usize {
    workers.min((max_connections / 2).max(1) as usize)
}

pub fn spawn(
    sync: SyncContext,
    max_connections: u32,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let n = worker_count(sync.stripe.workers, max_connections);
    for worker in 0..n {
        let state = sync.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match process_batch(&state, state.stripe.batch_size).await {
                    Ok(b) if b.processed >= state.stripe.batch_size => continue,
                    Ok(b) if b.processed > 0 => {
                        // Less than a full batch: deliveries are arriving, not waiting. Let
                        // them gather for a moment so the next batch's transaction carries
                        // more of them (fewer transactions beside the webhook handler's).
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(LINGER) => {}
                        }
                    }
                    Ok(b) if b.deferred > 0 => {
                        // Every event claimed belongs to a partition another worker is
                        // applying: try again shortly rather than spin.
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(DEFERRED) => {}
                        }
                    }
                    Ok(_) => {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = state.stripe.wake.notified() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(worker, error = %e, "Stripe inbox worker cannot reach the database; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RECONNECT) => {}
                        }
                    }
                }
            }
        });
    }
}

/// Applies every due event (pending, and failed ones whose backoff has passed), a batch at
/// a time, then returns how many were processed.
pub async fn drain(state: &SyncContext) -> store::Result<usize> {
    let mut n = 0;
    loop {
        let batch = process_batch(state, state.stripe.batch_size).await?;
        n += batch.processed;
        if batch.processed == 0 {
            if batch.deferred == 0 {
                return Ok(n);
            }
            // Another worker holds what is left: let it finish.
            tokio::time::sleep(DEFERRED).await;
        }
    }
}

/// Applies a claimed event in `tx`, records the outcome there and commits. Returns the inbox
/// status it ended with. A failed apply is rolled back whole and recorded as `failed` with
/// the error and a backoff; a lost database connection leaves the event as it was (the claim
/// rolls back) and is returned as an error.
pub async fn process(
    state: &SyncContext,
    mut tx: Transaction<'static, Postgres>,
    event: Claimed,
) -> store::Result<&'static str> {
    // The event is already durable in the inbox, and its status changes in this same
    // transaction: if Postgres loses this commit in a crash, the event is pending again and
    // is simply applied again. So the apply need not wait for its WAL flush, which matters:
    // the commit holds the global NOTIFY lock until then, serialising every applier behind
    // one fsync at a time.
    store::relax_commit(&mut tx).await?;
    let env = state.environment(&event.environment_id);
    let client = env.and_then(|e| state.stripe.client(e));
    let result = match env {
        None => Err(ApplyError::Rejected(
            "the event's environment is no longer configured".into(),
        )),
        Some(config) => {
            let ctx = Context {
                environment_id: &event.environment_id,
                config,
                client: client.as_ref(),
                companies: None,
                defer_memberships: false,
            };
            apply::apply(&mut tx, &ctx, &event).await
        }
    };
    match result {
        Ok(outcome) => {
            let status = outcome.status();
            inbox::finish(&mut tx, &event.environment_id, &event.id, status).await?;
            let changes = match outcome {
                Outcome::Applied(applied) => {
                    let mut changes = applied.changes.clone();
                    changes.extend(
                        super::messages::write(
                            &mut tx,
                            state,
                            &event.environment_id,
                            &applied,
                            Some(&event.payload),
                        )
                        .await?,
                    );
                    changes
                }
                Outcome::Skipped | Outcome::Ignored => Vec::new(),
            };
            state.changes.commit(tx, &changes).await?;
            tracing::info!(event_id = %event.id, event_type = %event.kind, status, "Stripe event processed");
            Ok(status)
        }
        Err(ApplyError::Database(e)) if is_unavailable(&e) => Err(store::Error::Unavailable(e)),
        Err(e) => {
            // Undo everything the attempt wrote, then record the failure on its own. The row
            // lock goes with the rollback; if another worker claims the event in between,
            // its outcome stands and this record is skipped.
            tx.rollback().await?;
            let message = e.to_string();
            let mut conn = state.pool.acquire().await?;
            inbox::fail(
                &mut conn,
                &event.environment_id,
                &event.id,
                event.attempts,
                &message,
            )
            .await?;
            tracing::warn!(event_id = %event.id, event_type = %event.kind, attempts = event.attempts + 1,
                error = %message, "Stripe event failed; it will be retried");
            Ok("failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::worker_count;

    #[test]
    fn workers_are_capped_at_half_the_pool() {
        assert_eq!(worker_count(2, 20), 2);
        assert_eq!(worker_count(16, 20), 10);
        assert_eq!(worker_count(4, 2), 1);
        assert_eq!(worker_count(4, 1), 1);
    }
}
