//! The shape every outbox drains with: rows written in the transaction that made the change,
//! claimed in batches with `FOR UPDATE SKIP LOCKED` under a lease (so replicas share the
//! work and never hold the same row at once), delivered concurrently, each outcome recorded
//! by the outbox itself. A worker wakes when this process commits something for it, when
//! another replica tells it so (`changes::Change::Outbox`), and at least every poll
//! interval for retries that have come due.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One outbox: how to claim due items and how to deliver one (recording its outcome).
pub trait Outbox: Send + Sync + 'static {
    type Item: Send + 'static;

    /// For logs.
    fn name(&self) -> &'static str;

    /// Claims up to `limit` due items (leased: nobody else takes them meanwhile).
    fn claim(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Self::Item>, crate::store::Error>> + Send;

    /// Delivers one item and records how it went.
    fn deliver(self: Arc<Self>, item: Self::Item) -> impl Future<Output = ()> + Send;
}

/// Runs `outbox` until `shutdown` with at most `concurrency` deliveries in flight; in-flight
/// deliveries finish before the task ends.
pub fn spawn<O: Outbox>(
    outbox: Arc<O>,
    wake: Arc<Notify>,
    concurrency: usize,
    poll: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut backoff = Duration::ZERO;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Reap every delivery that has finished: `len()` counts them until joined, and a
            // backlog must be claimed a batch at a time, not one row per finished delivery.
            while inflight.try_join_next().is_some() {}
            let free = concurrency.saturating_sub(inflight.len());
            let claimed = if free > 0 {
                match outbox.claim(free).await {
                    Ok(items) => {
                        backoff = Duration::ZERO;
                        items
                    }
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
                        tracing::warn!(outbox = outbox.name(), error = %e, "claiming failed; retrying");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let got = claimed.len();
            for item in claimed {
                inflight.spawn(outbox.clone().deliver(item));
            }
            if got > 0 && got == free {
                continue; // there may be more due: claim again at once
            }
            // Wait for a slot, a wake-up, the poll interval or shutdown.
            let wait = if backoff.is_zero() { poll } else { backoff };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while inflight.join_next().await.is_some() {}
    });
}
