//! The database breaker: whether Postgres is known to be down.
//!
//! While it is open, requests that need the database answer 503 at once instead of waiting
//! out the pool's acquire timeout (a caller's threads are not held), and `/ready` answers 503.
//! Checks never need it: they answer from the snapshot.
//!
//! One probe decides: a ping on a connection of its own (not the pool's, so a busy pool is
//! never mistaken for a dead database), every [`PROBE_EVERY`] while closed and every
//! [`PROBE_EVERY_OPEN`] while open. A failed ping is retried once on a fresh connection
//! before the breaker opens, so a connection dropped by an idle timeout does not open it.
//! The pool's failures feed it: whoever sees Postgres unreachable calls
//! [`Breaker::suspect`], and the probe runs at once instead of at its next tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How often the probe pings while Postgres is up.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often the probe tries again while Postgres is down.
pub const PROBE_EVERY_OPEN: Duration = Duration::from_millis(250);
/// How long one ping (or connect) may take before it counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Breaker {
    open: AtomicBool,
    wake: Notify,
    options: PgConnectOptions,
}

impl Breaker {
    /// A closed breaker probing through `options` once [`Breaker::run`] runs.
    pub fn new(options: PgConnectOptions) -> Breaker {
        Breaker {
            open: AtomicBool::new(false),
            wake: Notify::new(),
            options: options.log_statements(log::LevelFilter::Off),
        }
    }

    /// True while Postgres is known to be down.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Postgres was seen unreachable (a pool timeout, a dropped connection): probe now.
    pub fn suspect(&self) {
        self.wake.notify_one();
    }

    /// Probes until `shutdown`: opens the breaker when Postgres stops answering, closes it
    /// when it answers again, logging and counting each transition.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut conn: Option<PgConnection> = None;
        loop {
            let up = self.probe(&mut conn).await;
            self.set_open(!up);
            let every = if up { PROBE_EVERY } else { PROBE_EVERY_OPEN };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
            }
        }
        if let Some(c) = conn {
            let _ = tokio::time::timeout(PROBE_TIMEOUT, c.close()).await;
        }
    }

    /// Pings on the probe's connection; on failure, once more on a fresh one.
    async fn probe(&self, conn: &mut Option<PgConnection>) -> bool {
        if let Some(c) = conn.as_mut() {
            if matches!(
                tokio::time::timeout(PROBE_TIMEOUT, c.ping()).await,
                Ok(Ok(()))
            ) {
                return true;
            }
            *conn = None;
        }
        let fresh = tokio::time::timeout(PROBE_TIMEOUT, async {
            let mut c = PgConnection::connect_with(&self.options).await?;
            c.ping().await?;
            Ok::<_, sqlx::Error>(c)
        })
        .await;
        match fresh {
            Ok(Ok(c)) => {
                *conn = Some(c);
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "database probe failed");
                false
            }
            Err(_) => {
                tracing::debug!(timeout = ?PROBE_TIMEOUT, "database probe timed out");
                false
            }
        }
    }

    fn set_open(&self, open: bool) {
        if self.open.swap(open, Ordering::Relaxed) == open {
            return;
        }
        metrics::DB_BREAKER_OPEN.set(i64::from(open));
        if open {
            metrics::DB_BREAKER_TRANSITIONS.inc("open");
            tracing::warn!(
                "database breaker open: Postgres is unreachable; requests that need it answer 503 until it is back"
            );
        } else {
            metrics::DB_BREAKER_TRANSITIONS.inc("closed");
            tracing::info!("database breaker closed: Postgres answers again");
        }
    }
}
