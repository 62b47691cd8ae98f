//! What a write changed, and how every process hears of it: the one path from a committed
//! write to the snapshot that checks read.
//!
//! Every writer (API handlers, event ingestion, the Stripe worker and reconcile, jobs, the
//! CLI and seeding) ends its transaction with [`Publisher::commit`]: the changes are queued
//! with `NOTIFY` inside the transaction (Postgres delivers them only if it commits), the
//! transaction commits, and this process refreshes its own snapshot at once so a client
//! reads its own writes. Every other replica's [`listener`] hears the notifications and
//! refreshes the same way. A lost listener connection reloads everything on reconnect.
//!
//! Outboxes (meter events, outbound webhooks) are rows written in the same transaction as
//! the change they report, by the writer, before it calls `commit`.

pub mod listener;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{broadcast, Notify};

use crate::cache::Cache;
use crate::engine::UsageCounter;
use crate::store;

pub use listener::{spawn_listener, subscribe};

/// What a write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Features, flags, rules, plans, entitlements or credit types.
    Catalog,
    Company {
        environment_id: String,
        id: String,
    },
    User {
        environment_id: String,
        id: String,
    },
    ApiKeys,
    /// A company's credit grants changed (a grant, a burn, a zero-out).
    Credits {
        environment_id: String,
        company_id: String,
    },
    /// New absolute values of a company's usage counters, applied without reading Postgres.
    Usage {
        environment_id: String,
        company_id: String,
        counters: Vec<UsageCounter>,
    },
    /// Messages were written to an outbox: wake the delivery workers (on every replica).
    Outbox,
    /// Outbound webhook endpoints changed (which request types are wanted).
    Webhooks,
}

impl Change {
    pub fn company(environment_id: &str, id: &str) -> Change {
        Change::Company {
            environment_id: environment_id.to_string(),
            id: id.to_string(),
        }
    }

    pub fn user(environment_id: &str, id: &str) -> Change {
        Change::User {
            environment_id: environment_id.to_string(),
            id: id.to_string(),
        }
    }

    pub fn credits(environment_id: &str, company_id: &str) -> Change {
        Change::Credits {
            environment_id: environment_id.to_string(),
            company_id: company_id.to_string(),
        }
    }

    /// The changes of an event batch, in the order the snapshot should take them.
    pub fn from_touched(t: store::events::Touched) -> Vec<Change> {
        let mut out = Vec::new();
        out.extend(t.companies.iter().map(|(e, id)| Change::company(e, id)));
        out.extend(t.users.iter().map(|(e, id)| Change::user(e, id)));
        out.extend(t.credits.iter().map(|(e, id)| Change::credits(e, id)));
        out.extend(
            t.usage
                .into_iter()
                .map(|(environment_id, company_id, counters)| Change::Usage {
                    environment_id,
                    company_id,
                    counters,
                }),
        );
        out
    }
}

/// What a refresh of this process's snapshot brought in, announced after the snapshot holds
/// it (this process's commits and other replicas' alike): the datastream pushes from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The whole snapshot was reloaded (a listener reconnect): anything may have changed.
    pub everything: bool,
    /// Flags, rules, plans or entitlements.
    pub catalog: bool,
    /// (environment id, company id) of companies whose state, usage or credits changed.
    pub companies: Vec<(String, String)>,
    /// (environment id, user id).
    pub users: Vec<(String, String)>,
}

impl Applied {
    pub fn everything() -> Applied {
        Applied {
            everything: true,
            ..Applied::default()
        }
    }

    /// What `changes` mean for readers of the snapshot; `None` when nothing they read.
    pub fn of(changes: &[Change]) -> Option<Applied> {
        let mut a = Applied::default();
        for c in changes {
            match c {
                Change::Catalog => a.catalog = true,
                Change::Company { environment_id, id }
                | Change::Credits {
                    environment_id,
                    company_id: id,
                }
                | Change::Usage {
                    environment_id,
                    company_id: id,
                    ..
                } => a.companies.push((environment_id.clone(), id.clone())),
                Change::User { environment_id, id } => {
                    a.users.push((environment_id.clone(), id.clone()))
                }
                Change::ApiKeys | Change::Outbox | Change::Webhooks => {}
            }
        }
        (a.catalog || !a.companies.is_empty() || !a.users.is_empty()).then_some(a)
    }
}

/// How many announcements a slow subscriber may fall behind before it is told it lagged.
const APPLIED_BACKLOG: usize = 4096;

/// Publishes changes from this process: to every replica through `NOTIFY`, and to this
/// process's snapshot directly. Cloning is cheap.
#[derive(Clone)]
pub struct Publisher {
    origin: Arc<str>,
    /// `serve` refreshes its snapshot right after each commit; the CLI has none.
    cache: Option<Arc<Cache>>,
    /// Wakes this process's outbox workers after a commit that wrote to an outbox.
    outbox_wake: Arc<Notify>,
    /// The same for the meter-event sender (a `Notify` wakes one waiter).
    meter_wake: Arc<Notify>,
    /// Announces each refresh of the snapshot once it holds the change.
    applied: broadcast::Sender<Arc<Applied>>,
}

impl Publisher {
    /// The publisher of a serving process, refreshing `cache` after each commit.
    pub fn new(cache: Arc<Cache>) -> Publisher {
        Publisher {
            origin: crate::ids::new_id("inst").into(),
            cache: Some(cache),
            outbox_wake: Arc::new(Notify::new()),
            meter_wake: Arc::new(Notify::new()),
            applied: broadcast::channel(APPLIED_BACKLOG).0,
        }
    }

    /// A publisher without a snapshot of its own (the CLI): it only notifies.
    pub fn detached(origin: &str) -> Publisher {
        Publisher {
            origin: crate::ids::new_id(origin).into(),
            cache: None,
            outbox_wake: Arc::new(Notify::new()),
            meter_wake: Arc::new(Notify::new()),
            applied: broadcast::channel(1).0,
        }
    }

    /// This process in notifications: its own are skipped by its listener.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    /// What outbox workers wait on.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }

    /// What the meter-event sender waits on.
    pub fn meter_wake(&self) -> Arc<Notify> {
        self.meter_wake.clone()
    }

    /// Announcements of what each snapshot refresh brought in, from now on.
    pub fn applied(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.applied.subscribe()
    }

    /// Announces a refresh (no one listening is fine).
    pub(crate) fn announce(&self, applied: Applied) {
        let _ = self.applied.send(Arc::new(applied));
    }

    /// Queues `changes` in the transaction (delivered only if it commits), without
    /// committing: for callers that commit themselves.
    pub async fn notify(&self, conn: &mut PgConnection, changes: &[Change]) -> store::Result<()> {
        let payloads: Vec<String> = changes
            .iter()
            .flat_map(|c| wire::encode(&self.origin, c))
            .collect();
        store::notify::queue(conn, &payloads).await
    }

    /// Notifies, commits and refreshes this process's snapshot: the end of every write.
    pub async fn commit(
        &self,
        mut tx: Transaction<'static, Postgres>,
        changes: &[Change],
    ) -> store::Result<()> {
        self.notify(&mut tx, changes).await?;
        tx.commit().await?;
        self.refresh(changes).await;
        Ok(())
    }

    /// Refreshes this process's snapshot after a commit. A failure is logged: the listener's
    /// reconnect-and-reload repairs whatever was missed.
    pub async fn refresh(&self, changes: &[Change]) {
        self.refresh_from_elsewhere(changes);
        let Some(cache) = &self.cache else { return };
        if let Err(e) = apply(cache, changes).await {
            tracing::warn!(error = %e, changes = changes.len(), "snapshot refresh after commit failed");
        }
        if let Some(a) = Applied::of(changes) {
            self.announce(a);
        }
    }
}

impl Publisher {
    /// What another replica's changes mean beyond the snapshot: its outbox writes wake this
    /// process's workers too (replicas share the outbox).
    pub(crate) fn refresh_from_elsewhere(&self, changes: &[Change]) {
        if changes.contains(&Change::Outbox) {
            self.outbox_wake.notify_one();
            self.meter_wake.notify_one();
        }
    }
}

/// Brings the snapshot up to date with `changes`: companies grouped per environment (a
/// reconcile page or a burst of notifications reloads in a few queries, not a few per
/// company), usage applied from the payload, the rest reloaded one by one.
pub async fn apply(cache: &Cache, changes: &[Change]) -> store::Result<()> {
    let mut companies: HashMap<&str, Vec<String>> = HashMap::new();
    for change in changes {
        match change {
            Change::Company { environment_id, id } => {
                companies
                    .entry(environment_id)
                    .or_default()
                    .push(id.clone());
            }
            Change::Catalog => cache.reload_catalog().await?,
            Change::ApiKeys => cache.reload_api_keys().await?,
            Change::User { environment_id, id } => cache.reload_user(environment_id, id).await?,
            Change::Credits {
                environment_id,
                company_id,
            } => cache.reload_credits(environment_id, company_id).await?,
            Change::Usage {
                environment_id,
                company_id,
                counters,
            } => cache.apply_usage(environment_id, company_id, counters),
            Change::Outbox => {} // not the snapshot's business: see Publisher::refresh
            Change::Webhooks => cache.reload_webhook_types().await?,
        }
    }
    for (environment_id, mut ids) in companies {
        ids.sort_unstable();
        ids.dedup();
        cache.reload_companies(environment_id, &ids).await?;
    }
    Ok(())
}
