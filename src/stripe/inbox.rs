//! Which Stripe event types entitled applies, and storing verified events in the inbox, one
//! at a time or group-committed ([`Writer`]); `store::stripe_inbox` holds the SQL (insert,
//! claim, finish, fail, list).

use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::store::error::is_unavailable;

pub use crate::store::stripe_inbox::{
    backoff_secs, claim, claim_batch, claim_due, claim_next, fail, finish, finish_many, get, list,
    lock_partitions, Claimed, EventRow, NewEvent, STATUSES,
};

/// Event types entitled acts on. Everything else is stored as `ignored`.
pub const HANDLED_TYPES: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "product.created",
    "product.updated",
    "product.deleted",
    "price.created",
    "price.updated",
    "price.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "billing.meter.created",
    "billing.meter.updated",
    "billing.meter.deactivated",
    "billing.meter.reactivated",
];

pub fn is_handled(kind: &str) -> bool {
    HANDLED_TYPES.contains(&kind)
}

/// Stores a verified event; `false` when it was already there (a redelivery). Types
/// entitled does not act on are stored as `ignored` right away.
pub async fn insert(conn: &mut PgConnection, e: &NewEvent<'_>) -> Result<bool, sqlx::Error> {
    crate::store::stripe_inbox::insert(conn, e, !is_handled(e.kind)).await
}

/// A verified event handed to the [`Writer`].
pub struct OwnedEvent {
    pub environment_id: String,
    pub id: String,
    pub kind: String,
    pub object_id: Option<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub payload: String,
}

impl OwnedEvent {
    fn borrowed(&self) -> NewEvent<'_> {
        NewEvent {
            environment_id: &self.environment_id,
            id: &self.id,
            kind: &self.kind,
            object_id: self.object_id.as_deref(),
            created: self.created,
            livemode: self.livemode,
            api_version: self.api_version.as_deref(),
            payload: &self.payload,
        }
    }
}

/// Deliveries combined into one insert, at most.
const MAX_GROUP: usize = 500;
/// Inserts in flight at once, per process.
const WRITERS: usize = 2;

struct Job {
    event: OwnedEvent,
    reply: oneshot::Sender<Result<bool, sqlx::Error>>,
}

/// Group commit of webhook deliveries, as metering's `Ingestor` does for events: the
/// deliveries waiting while an insert runs go into the next one together (one statement,
/// one commit), and each is answered when its row is durable. If a combined insert fails,
/// its deliveries are inserted one by one, so a bad one fails alone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer tasks; they stop when the last handle is dropped.
    pub fn start(pool: PgPool) -> Writer {
        let write = move |group: Vec<Job>| {
            let pool = pool.clone();
            async move { write_group(&pool, group).await }
        };
        let tx = crate::group::spawn_writers(4096, WRITERS, MAX_GROUP, |_: &Job| 1, write);
        Writer { tx }
    }

    /// Stores a verified event durably; `false` when it was already there (a redelivery).
    pub async fn insert(&self, event: OwnedEvent) -> Result<bool, sqlx::Error> {
        let (reply, rx) = oneshot::channel();
        let stopped = || sqlx::Error::PoolClosed;
        self.tx
            .send(Job { event, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn write_group(pool: &PgPool, group: Vec<Job>) {
    let started = std::time::Instant::now();
    match insert_group(pool, &group).await {
        Ok(mut new) => {
            let n = group.len();
            for job in group {
                // An id twice in the group: the first delivery is the new one.
                let key = (job.event.environment_id.clone(), job.event.id.clone());
                let _ = job.reply.send(Ok(new.remove(&key)));
            }
            tracing::debug!(
                deliveries = n,
                elapsed_us = started.elapsed().as_micros() as u64,
                "Stripe inbox group committed"
            );
        }
        Err(e) if group.len() == 1 || is_unavailable(&e) => {
            // Postgres is out of reach: every delivery of the group is answered 503 now
            // (Stripe retries), none waits for its own attempt to time out too.
            let mut first = Some(e);
            for job in group {
                let e = first.take().unwrap_or(sqlx::Error::PoolTimedOut);
                let _ = job.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, deliveries = group.len(), "inbox group insert failed; inserting one by one");
            for job in group {
                let result = insert_group(pool, std::slice::from_ref(&job)).await;
                let key = (job.event.environment_id.clone(), job.event.id.clone());
                let _ = job.reply.send(result.map(|new| new.contains(&key)));
            }
        }
    }
}

/// One statement, so one transaction committed (synchronously) before it returns.
async fn insert_group(
    pool: &PgPool,
    group: &[Job],
) -> Result<std::collections::HashSet<(String, String)>, sqlx::Error> {
    let events: Vec<NewEvent<'_>> = group.iter().map(|j| j.event.borrowed()).collect();
    let ignored: Vec<bool> = events.iter().map(|e| !is_handled(e.kind)).collect();
    let mut conn = pool.acquire().await?;
    let new = crate::store::stripe_inbox::insert_many(&mut conn, &events, &ignored).await?;
    Ok(new.into_iter().collect())
}
