//! Applying the inbox a batch at a time, set-wise, as reconcile applies a page:
//!
//! 1. claim up to `stripe.batch_size` due events (`FOR UPDATE SKIP LOCKED`) and take the
//!    batch's partitions (a customer and its subscriptions; a product; a price) with
//!    transaction advisory locks; events of a partition another worker holds are left to it,
//!    so two workers never apply one company at once;
//! 2. per object, keep the newest event (`created`, ties by arrival); the others are
//!    `skipped`, like an older event applied on its own would be;
//! 3. claim the kept versions in one statement per object type (those a newer event already
//!    reached are `skipped`), re-read the batch's subscriptions from Stripe concurrently when
//!    `stripe_refetch_on_webhook` is on (the client's rate limiter paces them), and apply
//!    products and prices one by one (they are few), then customers and subscriptions
//!    set-wise ([`apply::customers`], [`apply::subscriptions`]: a few statements for all of
//!    them);
//! 4. recompute each touched company's memberships once, write the outbound messages, mark
//!    every event's status in one statement and commit once, refreshing each company once.
//!
//! If anything in the set-wise apply fails, the batch is rolled back and its events applied
//! one per transaction ([`super::worker::process`]), so one bad event is `failed` alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::apply::{self, Applied, ApplyError, Context, Version};
use super::client::StripeClient;
use super::inbox::{self, Claimed};
use super::objects::{Customer, Subscription};
use super::{worker, SyncContext};
use crate::changes::Change;
use crate::store;
use crate::store::error::is_unavailable;
use crate::store::stripe::{claim_versions, sync_memberships_many};

/// Object types in the order a batch applies them: prices name products, subscriptions name
/// customers and prices.
const TYPES: [&str; 4] = ["product", "price", "customer", "subscription"];
/// Subscriptions re-read from Stripe at once, at most (the rate limiter paces them too).
const MAX_REFETCH_CONCURRENCY: usize = 32;

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events that reached a status (or had their own transaction, after a fallback).
    pub processed: usize,
    /// Events left pending for the worker that holds their partition.
    pub deferred: usize,
}

/// An event of a batch, with what grouping needs.
struct Item {
    event: Claimed,
    /// `None`: a type entitled does not act on.
    object_type: Option<&'static str>,
    object_id: String,
    partition: String,
}

/// What grouping reads of a payload: `data.object.id` and `data.object.customer`.
#[derive(serde::Deserialize)]
struct Head {
    data: HeadData,
}

#[derive(serde::Deserialize)]
struct HeadData {
    object: HeadObject,
}

#[derive(serde::Deserialize)]
struct HeadObject {
    #[serde(default, deserialize_with = "string_or_none")]
    id: Option<String>,
    #[serde(default)]
    customer: Option<Owner>,
}

/// A subscription's customer: its id, or the customer expanded.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Owner {
    Id(String),
    Object { id: String },
}

/// A string, or `None` for anything else (the event then takes the one-event path, where
/// it fails with its own error).
fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde::Deserialize::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// Reads what the batch needs from an event; `Err` gives it back when it cannot be read
/// (it is then applied on its own, where it fails with its own error).
fn prepare(event: Claimed) -> Result<Item, Box<Claimed>> {
    // Only the object's id and customer are read here; the rest is skipped, not built.
    let Ok(head) = serde_json::from_str::<Head>(&event.payload) else {
        return Err(Box::new(event));
    };
    let kind = event.kind.as_str();
    // Meters are few and rarely change: they take the one-event path.
    if kind.starts_with("billing.meter.") {
        return Err(Box::new(event));
    }
    let object = head.data.object;
    let Some(object_id) = object.id else {
        return Err(Box::new(event));
    };
    let object_type = if !inbox::is_handled(kind) {
        None
    } else if kind.starts_with("customer.subscription.") {
        Some("subscription")
    } else if kind.starts_with("customer.") {
        Some("customer")
    } else if kind.starts_with("product.") {
        Some("product")
    } else if kind.starts_with("price.") {
        Some("price")
    } else {
        None
    };
    // A subscription belongs to its customer's partition.
    let owner = match object_type {
        Some("subscription") => match &object.customer {
            Some(Owner::Id(id)) | Some(Owner::Object { id }) => Some(id.as_str()),
            None => None,
        },
        _ => Some(object_id.as_str()),
    };
    let Some(owner) = owner else {
        return Err(Box::new(event));
    };
    let partition = format!("{}:{owner}", event.environment_id);
    Ok(Item {
        event,
        object_type,
        object_id,
        partition,
    })
}

/// Claims and applies the next batch of at most `limit` due events.
pub async fn process_batch(state: &SyncContext, limit: usize) -> store::Result<BatchOutcome> {
    let mut tx = state.pool.begin().await?;
    // As for one event (`worker::process`): the events are durable in the inbox already and
    // their statuses change in this transaction, so a lost commit only applies them again.
    store::relax_commit(&mut tx).await?;
    let claimed = inbox::claim_batch(&mut tx, limit.max(1) as i64).await?;
    if claimed.is_empty() {
        return Ok(BatchOutcome::default());
    }
    let mut items = Vec::with_capacity(claimed.len());
    let mut alone = Vec::new();
    for event in claimed {
        match prepare(event) {
            Ok(item) => items.push(item),
            Err(event) => alone.push(*event),
        }
    }
    let keys: BTreeSet<&str> = items.iter().map(|i| i.partition.as_str()).collect();
    let keys: Vec<&str> = keys.into_iter().collect();
    let held: HashSet<String> = inbox::lock_partitions(&mut tx, &keys)
        .await?
        .into_iter()
        .collect();
    let claimed_count = items.len();
    items.retain(|i| held.contains(&i.partition));
    let deferred = claimed_count - items.len();
    // Oldest first; among equal `created`, by arrival: the last of an object is its newest.
    items.sort_by_key(|i| (i.event.created, i.event.received_at));
    let started = std::time::Instant::now();
    let result = apply_batch(state, &mut tx, &items).await;
    let set_wise = match result {
        Ok(changes) => match state.changes.commit(tx, &changes).await {
            Ok(()) => true,
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, events = items.len(), "Stripe batch commit failed; applying its events one by one");
                false
            }
        },
        Err(ApplyError::Database(e)) if is_unavailable(&e) => {
            return Err(store::Error::Unavailable(e))
        }
        Err(e) => {
            tx.rollback().await?;
            tracing::warn!(error = %e, events = items.len(), "Stripe batch failed; applying its events one by one");
            false
        }
    };
    if set_wise {
        crate::metrics::STRIPE_BATCHES.inc("set_wise");
        tracing::debug!(
            events = items.len(),
            deferred,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Stripe batch applied"
        );
    } else {
        crate::metrics::STRIPE_BATCHES.inc("fallback");
        alone.extend(items.iter().map(|i| i.event.clone()));
    }
    let processed = if set_wise { items.len() } else { 0 } + alone.len();
    alone.sort_by_key(|e| (e.created, e.received_at));
    for event in alone {
        process_alone(state, event).await?;
    }
    Ok(BatchOutcome {
        processed,
        deferred,
    })
}

/// One event in its own transaction (the fallback), unless it is no longer due or another
/// worker holds it or its partition.
async fn process_alone(state: &SyncContext, event: Claimed) -> store::Result<()> {
    let mut tx = state.pool.begin().await?;
    let Some(claimed) = inbox::claim_due(&mut tx, &event.environment_id, &event.id).await? else {
        return Ok(());
    };
    if let Ok(item) = prepare(claimed.clone()) {
        if inbox::lock_partitions(&mut tx, &[item.partition.as_str()])
            .await?
            .is_empty()
        {
            return Ok(());
        }
    }
    worker::process(state, tx, claimed).await?;
    Ok(())
}

/// The set-wise apply of `items` (sorted oldest first) in `conn`; returns what to publish.
async fn apply_batch(
    state: &SyncContext,
    conn: &mut PgConnection,
    items: &[Item],
) -> Result<Vec<Change>, ApplyError> {
    let mut by_env: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in items {
        by_env
            .entry(item.event.environment_id.as_str())
            .or_default()
            .push(item);
    }
    let mut changes = Vec::new();
    let (mut envs, mut ids, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    for (env_id, items) in by_env {
        let done = apply_environment(state, conn, env_id, &items).await?;
        for c in done.changes {
            if !changes.contains(&c) {
                changes.push(c);
            }
        }
        for (item, status) in items.iter().zip(done.statuses) {
            envs.push(env_id);
            ids.push(item.event.id.as_str());
            statuses.push(status);
        }
    }
    inbox::finish_many(conn, &envs, &ids, &statuses).await?;
    Ok(changes)
}

struct EnvironmentDone {
    changes: Vec<Change>,
    /// Per item, in order.
    statuses: Vec<&'static str>,
}

/// One environment's part of a batch.
async fn apply_environment(
    state: &SyncContext,
    conn: &mut PgConnection,
    env_id: &str,
    items: &[&Item],
) -> Result<EnvironmentDone, ApplyError> {
    let config = state.environment(env_id).ok_or_else(|| {
        ApplyError::Rejected("the event's environment is no longer configured".into())
    })?;
    let client = state.stripe.client(config);
    // The newest event per object: items are oldest first, so the last one wins.
    let mut newest: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if item.object_type.is_some() {
            newest.insert(item.object_id.as_str(), i);
        }
    }
    let mut statuses: Vec<&'static str> = items
        .iter()
        .map(|i| match i.object_type {
            None => "ignored",
            Some(_) => "skipped",
        })
        .collect();
    let mut changes: Vec<Change> = Vec::new();
    // Companies whose memberships to recompute, and whether something of theirs was written.
    let mut resync: BTreeMap<String, bool> = BTreeMap::new();
    // Subscription id → its company, for `subscription.trial.ended`.
    let mut companies_of: HashMap<String, String> = HashMap::new();
    let ctx = Context {
        environment_id: env_id,
        config,
        client: client.as_ref(),
        companies: None,
        defer_memberships: true,
    };
    for object_type in TYPES {
        let mut kept: Vec<usize> = newest
            .values()
            .copied()
            .filter(|&i| items[i].object_type == Some(object_type))
            .collect();
        if kept.is_empty() {
            continue;
        }
        kept.sort_by(|a, b| items[*a].object_id.cmp(&items[*b].object_id));
        let object_ids: Vec<&str> = kept.iter().map(|&i| items[i].object_id.as_str()).collect();
        let sources: Vec<&str> = kept.iter().map(|&i| items[i].event.id.as_str()).collect();
        let created: Vec<DateTime<Utc>> = kept.iter().map(|&i| items[i].event.created).collect();
        let claimed: HashSet<String> = claim_versions(
            &mut *conn,
            env_id,
            &object_ids,
            object_type,
            &sources,
            &created,
        )
        .await?
        .into_iter()
        .collect();
        // Kept and not older than what was applied before: these apply.
        kept.retain(|&i| claimed.contains(&items[i].object_id));
        let results = if object_type == "subscription" {
            apply_subscriptions(conn, &ctx, items, &kept).await?
        } else if object_type == "customer" {
            apply_customers(conn, &ctx, items, &kept).await?
        } else {
            let mut results = Vec::with_capacity(kept.len());
            for &i in &kept {
                let item = items[i];
                let v = version(item);
                let object: Value = apply::parse_object("object", &item.event.payload)?;
                results.push(
                    apply::apply_object(conn, &ctx, &item.event.kind, object, v, None).await?,
                );
            }
            results
        };
        for (&i, result) in kept.iter().zip(results) {
            statuses[i] = "applied";
            let Some(applied) = result else { continue };
            changes.extend(applied.changes);
            for (n, company) in applied.resync.into_iter().enumerate() {
                if n == 0 && object_type == "subscription" {
                    companies_of.insert(items[i].object_id.clone(), company.clone());
                }
                *resync.entry(company).or_default() |= applied.written.is_some() || n > 0;
            }
        }
    }
    // Each company's memberships once, in a fixed order.
    let mut plan_changes = Vec::new();
    let companies: Vec<String> = resync.keys().cloned().collect();
    for (company, sync) in sync_memberships_many(&mut *conn, env_id, &companies).await? {
        let written = resync.get(&company).copied().unwrap_or_default();
        if written || sync.changed {
            changes.push(Change::Company {
                environment_id: env_id.to_string(),
                id: company.clone(),
            });
        }
        if sync.plans_changed() {
            plan_changes.push((company, sync));
        }
    }
    let plan_changed = Applied {
        plan_changes,
        ..Applied::default()
    };
    changes.extend(super::messages::write(&mut *conn, state, env_id, &plan_changed, None).await?);
    // Ended trials: every subscription event of the batch whose object applied (a newer
    // event of the same subscription in the batch does not undo that the trial ended).
    for item in items {
        if item.object_type != Some("subscription") {
            continue;
        }
        let Some(company) = companies_of.get(&item.object_id) else {
            continue;
        };
        let applied = Applied {
            changes: vec![Change::Company {
                environment_id: env_id.to_string(),
                id: company.clone(),
            }],
            ..Applied::default()
        };
        if let Some(c) = super::messages::write(
            &mut *conn,
            state,
            env_id,
            &applied,
            Some(&item.event.payload),
        )
        .await?
        {
            changes.push(c);
        }
    }
    Ok(EnvironmentDone { changes, statuses })
}

fn version(item: &Item) -> Version<'_> {
    Version {
        id: &item.event.id,
        created: item.event.created,
        claimed: true,
    }
}

/// The batch's customers, set-wise.
async fn apply_customers(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    items: &[&Item],
    kept: &[usize],
) -> Result<Vec<Option<Applied>>, ApplyError> {
    let mut customers = Vec::with_capacity(kept.len());
    for &i in kept {
        let c: Customer = apply::parse_object("customer", &items[i].event.payload)?;
        let deleted = items[i].event.kind == "customer.deleted" || c.deleted;
        customers.push((c, deleted));
    }
    let applied = apply::customers(conn, ctx, &customers).await?;
    Ok(applied.into_iter().map(Some).collect())
}

/// The batch's subscriptions: re-read from Stripe concurrently (with refetch on), then
/// stored set-wise.
async fn apply_subscriptions(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    items: &[&Item],
    kept: &[usize],
) -> Result<Vec<Option<Applied>>, ApplyError> {
    let mut subscriptions = Vec::with_capacity(kept.len());
    for &i in kept {
        let s: Subscription = apply::parse_object("subscription", &items[i].event.payload)?;
        subscriptions.push(s);
    }
    if let Some(client) = ctx.refetch() {
        let concurrency =
            (ctx.config.stripe_max_requests_per_sec as usize).clamp(1, MAX_REFETCH_CONCURRENCY);
        subscriptions = refetch_all(client, subscriptions, concurrency).await?;
    }
    let applied = apply::subscriptions(conn, ctx, subscriptions).await?;
    Ok(applied.into_iter().map(Some).collect())
}

/// Re-reads `subscriptions` from Stripe, `concurrency` at a time, in order.
async fn refetch_all(
    client: &StripeClient,
    subscriptions: Vec<Subscription>,
    concurrency: usize,
) -> Result<Vec<Subscription>, ApplyError> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let n = subscriptions.len();
    for (i, s) in subscriptions.into_iter().enumerate() {
        let client = client.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, apply::refetched(&client, s).await)
        });
    }
    let mut out: Vec<Option<Subscription>> = (0..n).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, result) =
            done.map_err(|e| ApplyError::Stripe(format!("a refetch task failed: {e}")))?;
        out[i] = Some(result?);
    }
    Ok(out.into_iter().flatten().collect())
}
