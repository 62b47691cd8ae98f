//! Event ingestion with group commit: concurrent requests' batches are combined into one
//! transaction (one commit, counter rows written once per group, no lock contention between
//! requests of this process), and each request is answered when its events are durable.
//!
//! If a combined group fails, its requests are retried one by one, so a bad batch fails
//! alone. Deadlocks with other replicas are retried.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::changes::{Change, Publisher};
use crate::group;
use crate::store::events::{self, CreditContext, Ingested, NewEvent};
use crate::store::meter_events::MeterContext;
use crate::store::{self, Error};

/// At most this many events are combined into one transaction.
const MAX_GROUP_EVENTS: usize = 2000;
/// Transactions writing at once, per process.
const WRITERS: usize = 2;

struct Job {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<store::Result<Ingested>>,
}

/// A handle to the writer tasks. Cloning is cheap.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Job>,
}

impl Ingestor {
    /// Starts the writers; they stop when the last handle is dropped.
    pub fn start(
        pool: PgPool,
        cache: Arc<Cache>,
        changes: Publisher,
        limit_warning_percent: u32,
    ) -> Ingestor {
        let write = move |group: Vec<Job>| {
            let (pool, cache, changes) = (pool.clone(), cache.clone(), changes.clone());
            async move { write_group(&pool, &cache, &changes, limit_warning_percent, group).await }
        };
        let weight = |job: &Job| job.events.len();
        let tx = group::spawn_writers(1024, WRITERS, MAX_GROUP_EVENTS, weight, write);
        Ingestor { tx }
    }

    /// Stores `events` durably (with everything they imply) and publishes the changes.
    pub async fn ingest(&self, events: Vec<NewEvent>) -> Result<Ingested, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { events, reply })
            .await
            .map_err(|_| IngestError::Stopped)?;
        Ok(rx.await.map_err(|_| IngestError::Stopped)??)
    }
}

async fn write_group(
    pool: &PgPool,
    cache: &Cache,
    changes: &Publisher,
    limit_warning_percent: u32,
    group: Vec<Job>,
) {
    let w = Writer {
        pool,
        cache,
        publisher: changes,
        limit_warning_percent,
    };
    let started = Instant::now();
    let (credits_exist, metered_exist) = {
        let catalog = cache.catalog();
        (catalog.credit_types_exist, catalog.metered_exist)
    };
    let credit_ctx = CreditContext {
        fallback_plans: cache.fallback_plans(),
        credits_exist,
        meters: MeterContext {
            metered_exist,
            flush_secs: cache.meter_flush_secs(),
        },
    };
    if group.len() == 1 {
        let job = group.into_iter().next().expect("one job");
        let result = w.write(&job.events, &credit_ctx).await;
        let _ = job.reply.send(result);
        return;
    }
    let all: Vec<NewEvent> = group
        .iter()
        .flat_map(|j| j.events.iter().cloned())
        .collect();
    match w.write(&all, &credit_ctx).await {
        Ok(done) => {
            // Hand each request its slice of the results.
            let mut offset = 0;
            for job in group {
                let n = job.events.len();
                let part = Ingested {
                    ids: done.ids[offset..offset + n].to_vec(),
                    duplicate: done.duplicate[offset..offset + n].to_vec(),
                    touched: Default::default(),
                    meter_events: 0,
                };
                offset += n;
                let _ = job.reply.send(Ok(part));
            }
            tracing::debug!(
                events = all.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "event group written"
            );
        }
        Err(_) => {
            // Something in the group is bad (or conflicted): each request on its own, so only
            // the bad one fails.
            for job in group {
                let result = w.write(&job.events, &credit_ctx).await;
                let _ = job.reply.send(result);
            }
        }
    }
}

struct Writer<'a> {
    pool: &'a PgPool,
    cache: &'a Cache,
    publisher: &'a Publisher,
    limit_warning_percent: u32,
}

impl Writer<'_> {
    /// One transaction, retried on deadlock or serialization failure. Limit messages for
    /// outbound webhooks are written in it too.
    async fn write(
        &self,
        events: &[NewEvent],
        credit_ctx: &CreditContext,
    ) -> store::Result<Ingested> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let now = Utc::now();
                let mut tx = store::begin(self.pool).await?;
                let done = events::ingest(&mut tx, events, credit_ctx, now).await?;
                let limits = crate::outbound::limits::emit(
                    &mut tx,
                    self.cache,
                    &done.touched.usage,
                    self.limit_warning_percent,
                    now,
                )
                .await?;
                let credit_limits = crate::outbound::limits::emit_credits(
                    &mut tx,
                    self.cache,
                    &done.touched.credits,
                    self.limit_warning_percent,
                    now,
                )
                .await?;
                let mut changes = Change::from_touched(done.touched.clone());
                changes.extend(limits.or(credit_limits));
                if done.meter_events > 0 {
                    // Wakes the meter-event senders (here and on every replica).
                    changes.push(Change::Outbox);
                }
                self.publisher.notify(&mut tx, &changes).await?;
                tx.commit().await?;
                Ok::<_, Error>((done, changes))
            }
            .await;
            match result {
                Ok((done, changes)) => {
                    self.publisher.refresh(&changes).await;
                    let new = done.duplicate.iter().filter(|d| !**d).count();
                    crate::metrics::EVENTS_INGESTED.inc_by(new as u64);
                    crate::metrics::EVENTS_DUPLICATE.inc_by((events.len() - new) as u64);
                    return Ok(done);
                }
                Err(e) if attempt < 3 && e.is_retryable() => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("the event writers have stopped")]
    Stopped,
}
