//! Applies other replicas' changes to this process's snapshot via `LISTEN`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Cache, Change, CHANNEL};

/// Subscribes before the snapshot is loaded, so no change falls between load and listen.
pub async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

pub fn spawn_listener(
    cache: Arc<Cache>,
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
                        if payload.split('|').next() != Some(cache.origin()) {
                            match Change::decode(payload) {
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
                    if let Err(e) = cache.reload_changes(&changes).await {
                        tracing::warn!(error = %e, "cache reload failed; reloading everything");
                        reload_all_until_ok(&cache, &shutdown).await;
                    }
                }
                Ok(None) => {
                    // The connection dropped: notifications may have been missed. The next
                    // try_recv reconnects and re-listens; reload everything once it is back.
                    tracing::warn!("cache listener lost its connection; reconnecting");
                    crate::metrics::CACHE_LISTENER_RECONNECTS.inc();
                    reconnect_and_reload(&cache, &mut listener, &shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache listener error; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    reconnect_and_reload(&cache, &mut listener, &shutdown).await;
                }
            }
        }
    });
}

/// Notifications handled together at most.
const MAX_BATCH: usize = 1000;

async fn reconnect_and_reload(
    cache: &Cache,
    listener: &mut PgListener,
    shutdown: &CancellationToken,
) {
    // Re-listen first (a no-op if already connected), then reload, so nothing falls between.
    loop {
        match listener.listen(CHANNEL).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cache listener cannot reconnect yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
