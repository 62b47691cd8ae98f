//! Applies other replicas' changes to this process's snapshot via `LISTEN`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{wire, Applied, Publisher};
use crate::cache::Cache;
use crate::store;

pub use store::notify::subscribe;

/// Notifications handled together at most.
const MAX_BATCH: usize = 1000;

/// Listens until `shutdown`, refreshing `cache` with every change another process publishes.
pub fn spawn_listener(
    cache: Arc<Cache>,
    publisher: Publisher,
    mut listener: PgListener,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => {
                    // Take whatever else has arrived too: a burst (a reconcile page, a bulk
                    // import) reloads its companies in a few queries instead of six each.
                    let mut changes = Vec::new();
                    let mut next = Some(notification);
                    while let Some(n) = next {
                        let payload = n.payload();
                        // Our own commits were refreshed synchronously.
                        if payload.split('|').next() != Some(publisher.origin()) {
                            match wire::decode(payload) {
                                Some((_, change)) => changes.push(change),
                                None => tracing::warn!(payload, "unknown cache notification"),
                            }
                        }
                        next = if changes.len() < MAX_BATCH {
                            listener.next_buffered()
                        } else {
                            None
                        };
                    }
                    publisher.refresh_from_elsewhere(&changes);
                    if let Err(e) = super::apply(&cache, &changes).await {
                        tracing::warn!(error = %e, "cache reload failed; reloading everything");
                        reload_all_until_ok(&cache, &shutdown).await;
                        publisher.announce(Applied::everything());
                    } else if let Some(a) = Applied::of(&changes) {
                        publisher.announce(a);
                    }
                }
                Ok(None) => {
                    // The connection dropped: notifications may have been missed. The next
                    // try_recv reconnects and re-listens; reload everything once it is back.
                    tracing::warn!("cache listener lost its connection; reconnecting");
                    crate::metrics::CACHE_LISTENER_RECONNECTS.inc();
                    reconnect_and_reload(&cache, &mut listener, &shutdown).await;
                    publisher.announce(Applied::everything());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache listener error; retrying");
                    if !pause(&shutdown).await {
                        return;
                    }
                    reconnect_and_reload(&cache, &mut listener, &shutdown).await;
                    publisher.announce(Applied::everything());
                }
            }
        }
    });
}

/// Waits a second; false when shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
    }
}

async fn reconnect_and_reload(
    cache: &Cache,
    listener: &mut PgListener,
    shutdown: &CancellationToken,
) {
    // Re-listen first (a no-op if already connected), then reload, so nothing falls between.
    loop {
        match store::notify::relisten(listener).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cache listener cannot reconnect yet");
                if !pause(shutdown).await {
                    return;
                }
            }
        }
    }
    reload_all_until_ok(cache, shutdown).await;
}

async fn reload_all_until_ok(cache: &Cache, shutdown: &CancellationToken) {
    loop {
        match cache.reload_all().await {
            Ok(()) => {
                tracing::info!("cache reloaded");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "full cache reload failed; retrying");
                if !pause(shutdown).await {
                    return;
                }
            }
        }
    }
}
