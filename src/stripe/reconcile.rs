//! Reconciliation: make entitled's model equal to what Stripe holds. Webhooks get lost,
//! endpoints get disabled, accounts get imported; a run repairs all of that.
//!
//! A run, per environment:
//! 1. lists meters (`/v1/billing/meters`), products, prices, customers and subscriptions
//!    (`status=all`; items past the
//!    embedded page from `/v1/subscription_items`), `limit=100`, and applies every object
//!    through the same functions webhooks use ([`apply`]), with the page's request time as
//!    its version: an event older than the listing is skipped later, a newer one wins;
//! 2. after a type's listing completed without errors, marks the objects of that type that
//!    it did not see (and no event mentioned since the run started) as deleted (not meters:
//!    Stripe deactivates them, never deletes them);
//! 3. lists `/v1/events` from the stored cursor (first run: 30 days back), stores the events
//!    the inbox never received, and applies them.
//!
//! Streaming with bounded memory: one task pages through Stripe and hands pages to the
//! appliers over a channel of [`PAGES_IN_FLIGHT`] pages; [`APPLY_TASKS`] pages are applied
//! at once, each in one transaction. Nothing holds more than a few hundred objects.
//!
//! One run per environment at a time, across replicas: the run holds a session advisory lock
//! on a connection of its own for its whole length.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration as TimeDelta, DurationRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::apply::{self, Applied, ApplyError, Context, Version};
use super::client::{ClientError, RetryPolicy, StripeClient};
use super::inbox::{self, NewEvent};
use super::objects::{Customer, Meter, Price, Product, Subscription};
use super::{worker, SyncContext};
use crate::changes::Change;
use crate::config::EnvironmentConfig;
use crate::store::error::is_unavailable;
use crate::store::locks::SessionLock;
use crate::store::reconcile::{self as store, Run};
use crate::store::stripe::{claim_versions, sync_memberships_many, Write};

/// Pages fetched ahead of the appliers.
pub const PAGES_IN_FLIGHT: usize = 4;
/// Pages applied at once, each on its own connection.
pub const APPLY_TASKS: usize = 4;
/// How far back the first run lists events.
pub const FIRST_CATCH_UP_DAYS: i64 = 30;
/// Errors kept on a run's record; more are counted, not listed.
const MAX_ERRORS: usize = 100;
/// Vanished objects marked per transaction.
const VANISHED_BATCH: i64 = 500;

/// The object types, in the order they are reconciled: prices name products and meters,
/// subscriptions name customers and prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Meters,
    Products,
    Prices,
    Customers,
    Subscriptions,
}

impl Object {
    pub const ALL: [Object; 5] = [
        Object::Meters,
        Object::Products,
        Object::Prices,
        Object::Customers,
        Object::Subscriptions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Object::Meters => "meters",
            Object::Products => "products",
            Object::Prices => "prices",
            Object::Customers => "customers",
            Object::Subscriptions => "subscriptions",
        }
    }

    /// `object_type` in `stripe_object_versions`.
    fn singular(self) -> &'static str {
        match self {
            Object::Meters => "meter",
            Object::Products => "product",
            Object::Prices => "price",
            Object::Customers => "customer",
            Object::Subscriptions => "subscription",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Object::Meters => "/v1/billing/meters",
            Object::Products => "/v1/products",
            Object::Prices => "/v1/prices",
            Object::Customers => "/v1/customers",
            Object::Subscriptions => "/v1/subscriptions",
        }
    }

    fn params(self) -> Vec<(&'static str, String)> {
        match self {
            Object::Subscriptions => vec![("status", "all".into())],
            _ => Vec::new(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per object type: what a run saw and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub seen: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Api,
    Cli,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Api => "api",
            Trigger::Cli => "cli",
        }
    }
}

/// Where a run reports as it goes (the CLI draws progress lines; `serve` logs).
pub trait Progress: Send + Sync {
    /// After every page and when a type is done.
    fn update(&self, object: Object, counts: Counts, done: bool);
    /// After the events catch-up.
    fn events(&self, listed: u64, new: u64);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _: Object, _: Counts, _: bool) {}
    fn events(&self, _: u64, _: u64) {}
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("environment {0:?} is not configured")]
    UnknownEnvironment(String),
    #[error("Stripe sync is disabled for environment {0:?}: its stripe_api_key is empty")]
    Disabled(String),
    #[error("a reconcile of environment {environment:?} is already running ({})", run.as_ref().map_or("on another replica", |r| r.id.as_str()))]
    AlreadyRunning {
        environment: String,
        run: Option<Box<Run>>,
    },
    #[error("database: {0}")]
    Database(#[from] crate::store::Error),
}

impl From<sqlx::Error> for StartError {
    fn from(e: sqlx::Error) -> Self {
        StartError::Database(e.into())
    }
}

/// A run that holds its environment's lock and has its record; [`Started::run`] does it.
pub struct Started {
    pub record: Run,
    environment_id: String,
    config: EnvironmentConfig,
    client: StripeClient,
    trigger: Trigger,
    /// One run per environment across replicas, for as long as the run lasts.
    lock: SessionLock,
}

fn lock_key(environment_id: &str) -> String {
    format!("entitled:reconcile:{environment_id}")
}

/// Takes the environment's reconcile lock and records a running run.
pub async fn start(
    sync: &SyncContext,
    environment_id: &str,
    trigger: Trigger,
) -> Result<Started, StartError> {
    let config = sync
        .environment(environment_id)
        .cloned()
        .ok_or_else(|| StartError::UnknownEnvironment(environment_id.to_string()))?;
    let client = sync
        .stripe
        .client(&config)
        .ok_or_else(|| StartError::Disabled(config.key.clone()))?
        .with_policy(RetryPolicy::RECONCILE);
    let Some(mut lock) = SessionLock::try_acquire(&sync.pool, &lock_key(environment_id)).await?
    else {
        let mut conn = sync.pool.acquire().await?;
        let run = store::running(&mut conn, environment_id).await?;
        return Err(StartError::AlreadyRunning {
            environment: config.key.clone(),
            run: run.map(Box::new),
        });
    };
    let record = store::start_run(
        lock.conn(),
        environment_id,
        trigger.name(),
        sync.changes.origin(),
    )
    .await?;
    tracing::info!(run_id = %record.id, environment = %config.key, trigger = trigger.name(), "reconcile started");
    Ok(Started {
        record,
        environment_id: environment_id.to_string(),
        config,
        client,
        trigger,
        lock,
    })
}

/// Shared by the pager and the appliers of a run.
struct RunState {
    counts: Mutex<[Counts; 5]>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
    /// A type whose objects did not all apply must not have its unseen objects deleted.
    incomplete: [AtomicBool; 5],
}

impl RunState {
    fn error(&self, object: Option<Object>, message: String) {
        if let Some(o) = object {
            self.incomplete[o.index()].store(true, Ordering::Relaxed);
            crate::metrics::RECONCILE_OBJECTS.inc([o.name(), "error"]);
        }
        tracing::warn!(object = object.map(Object::name), error = %message, "reconcile error");
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < MAX_ERRORS {
            errors.push(message);
        }
    }

    fn add(&self, object: Object, f: impl FnOnce(&mut Counts)) -> Counts {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut counts[object.index()]);
        counts[object.index()]
    }

    fn counts_json(&self) -> Value {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = serde_json::Map::new();
        for o in Object::ALL {
            map.insert(
                o.name().into(),
                serde_json::to_value(counts[o.index()]).unwrap_or_default(),
            );
        }
        Value::Object(map)
    }

    fn errors(&self) -> Vec<String> {
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let total = self.error_count.load(Ordering::Relaxed) as usize;
        if total > errors.len() {
            errors.push(format!("… and {} more errors", total - errors.len()));
        }
        errors
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("Stripe API: {0}")]
    Stripe(#[from] ClientError),
    #[error("database: {0}")]
    Database(#[from] crate::store::Error),
    #[error("stopped: the process is shutting down")]
    Cancelled,
}

impl From<sqlx::Error> for Fatal {
    fn from(e: sqlx::Error) -> Self {
        Fatal::Database(e.into())
    }
}

impl Started {
    /// Runs the reconcile to its end (or to the first safe point after `cancel`), records the
    /// outcome, releases the lock and returns the finished record.
    pub async fn run(
        mut self,
        sync: &SyncContext,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Run, sqlx::Error> {
        let began = std::time::Instant::now();
        let state = Arc::new(RunState {
            counts: Mutex::default(),
            errors: Mutex::default(),
            error_count: AtomicU64::new(0),
            incomplete: Default::default(),
        });
        let mut caught_up = 0;
        let result = self
            .execute(sync, &state, progress, cancel, &mut caught_up)
            .await;
        if let Err(e) = &result {
            state.error(None, e.to_string());
        }
        let errors = state.errors();
        let status = if errors.is_empty() {
            "succeeded"
        } else {
            "failed"
        };
        let record = store::finish_run(
            self.lock.conn(),
            &self.record.id,
            status,
            &state.counts_json(),
            caught_up as i64,
            self.client.requests_sent() as i64,
            &errors,
        )
        .await;
        crate::metrics::RECONCILE_RUNS.inc([self.trigger.name(), status]);
        tracing::info!(
            run_id = %self.record.id,
            environment = %self.config.key,
            status,
            elapsed_ms = began.elapsed().as_millis() as u64,
            requests = self.client.requests_sent(),
            counts = %state.counts_json(),
            errors = errors.len(),
            "reconcile finished"
        );
        self.lock.release().await;
        record
    }

    async fn execute(
        &mut self,
        sync: &SyncContext,
        state: &Arc<RunState>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
        caught_up: &mut u64,
    ) -> Result<(), Fatal> {
        // Versions are whole seconds, like Stripe's `created`; a listing requested within
        // the second the run started counts as seen by this run.
        let run_start = self
            .record
            .started_at
            .duration_trunc(TimeDelta::seconds(1))
            .unwrap_or(self.record.started_at);
        let marker = format!("reconcile:{}", self.record.id);
        for object in Object::ALL {
            self.list_and_apply(sync, state, progress, cancel, object, &marker)
                .await?;
            if cancel.is_cancelled() {
                return Err(Fatal::Cancelled);
            }
            if object == Object::Meters {
                // Stripe never deletes a meter (it deactivates it): nothing vanishes.
            } else if state.incomplete[object.index()].load(Ordering::Relaxed) {
                state.error(
                    None,
                    format!(
                        "{}: not every object applied, so none were marked deleted this run",
                        object.name()
                    ),
                );
            } else {
                self.mark_vanished(sync, state, object, run_start, &marker)
                    .await?;
            }
            let counts = state.add(object, |_| {});
            progress.update(object, counts, true);
            self.save_progress(state).await?;
        }
        *caught_up = self.catch_up_events(sync, state, progress, cancel).await?;
        Ok(())
    }

    /// Pages through one list and applies every object.
    async fn list_and_apply(
        &mut self,
        sync: &SyncContext,
        state: &Arc<RunState>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
        object: Object,
        marker: &str,
    ) -> Result<(), Fatal> {
        let (tx, mut rx) = mpsc::channel::<ListedPage>(PAGES_IN_FLIGHT);
        let client = self.client.clone();
        let pager_cancel = cancel.child_token();
        let pager = tokio::spawn(page_through(client, object, tx, pager_cancel.clone()));
        let mut appliers: JoinSet<Result<(), Fatal>> = JoinSet::new();
        let mut fatal: Option<Fatal> = None;
        let mut last_saved = std::time::Instant::now();
        let mut pages = 0u64;
        loop {
            // Keep at most APPLY_TASKS pages applying; collect finished ones as they end.
            while appliers.len() >= APPLY_TASKS {
                if let Some(done) = appliers.join_next().await {
                    if let Err(e) = flatten(done) {
                        fatal.get_or_insert(e);
                    }
                }
            }
            if fatal.is_some() || cancel.is_cancelled() {
                break;
            }
            let Some(page) = rx.recv().await else { break };
            pages += 1;
            if matches!(pages, 4 | 16 | 64) {
                // A first import grows these tables far faster than autovacuum re-analyzes
                // them, and plans made while they were nearly empty (a hash join over the
                // whole of company_keys, say) get slower with every page. Statistics taken
                // at 4, 16 and 64 pages make the plans index probes, which stay right as
                // the tables grow further.
                // Best effort: without it the run is slower, not wrong.
                if let Err(e) = store::analyze_written_tables(&sync.pool).await {
                    tracing::warn!(error = %e, "ANALYZE of the reconciled tables failed");
                }
            }
            let task_sync = sync.clone();
            let task_state = state.clone();
            let env_id = self.environment_id.clone();
            let config = self.config.clone();
            let marker = marker.to_string();
            appliers.spawn(async move {
                apply_page(
                    &task_sync,
                    &task_state,
                    &env_id,
                    &config,
                    object,
                    page,
                    &marker,
                )
                .await
            });
            let counts = state.add(object, |_| {});
            progress.update(object, counts, false);
            if last_saved.elapsed() >= std::time::Duration::from_secs(2) {
                last_saved = std::time::Instant::now();
                self.save_progress(state).await?;
            }
        }
        while let Some(done) = appliers.join_next().await {
            if let Err(e) = flatten(done) {
                fatal.get_or_insert(e);
            }
        }
        pager_cancel.cancel();
        drop(rx);
        let paged = pager.await.unwrap_or_else(|e| {
            Err(Fatal::from(sqlx::Error::Protocol(format!(
                "the pager task failed: {e}"
            ))))
        });
        if let Some(e) = fatal {
            return Err(e);
        }
        if cancel.is_cancelled() {
            return Err(Fatal::Cancelled);
        }
        paged
    }

    /// Saves the run's counts and requests so far, for `entitled stripe status` and a
    /// restart to read.
    async fn save_progress(&mut self, state: &RunState) -> Result<(), Fatal> {
        store::update_run(
            self.lock.conn(),
            &self.record.id,
            &state.counts_json(),
            self.client.requests_sent() as i64,
        )
        .await?;
        Ok(())
    }

    /// Marks what the listing of `object` did not see as deleted.
    async fn mark_vanished(
        &mut self,
        sync: &SyncContext,
        state: &RunState,
        object: Object,
        run_start: DateTime<Utc>,
        marker: &str,
    ) -> Result<(), Fatal> {
        let mut after = String::new();
        loop {
            let mut tx = sync.pool.begin().await?;
            let ids = store::vanished(
                &mut tx,
                &self.environment_id,
                object.singular(),
                run_start,
                marker,
                &after,
                VANISHED_BATCH,
            )
            .await?;
            let Some(last) = ids.last() else {
                return Ok(());
            };
            after = last.clone();
            let companies = store::mark_vanished(
                &mut tx,
                &self.environment_id,
                object.singular(),
                &ids,
                run_start,
                marker,
            )
            .await?;
            let mut changes = Vec::with_capacity(companies.len());
            sync_memberships_many(&mut tx, &self.environment_id, &companies).await?;
            for company in companies {
                changes.push(Change::Company {
                    environment_id: self.environment_id.clone(),
                    id: company,
                });
            }
            sync.changes.commit(tx, &changes).await?;
            tracing::info!(
                object = object.name(),
                deleted = ids.len(),
                "objects gone from Stripe marked deleted"
            );
            crate::metrics::RECONCILE_OBJECTS.inc_by([object.name(), "deleted"], ids.len() as u64);
            state.add(object, |c| c.deleted += ids.len() as u64);
        }
    }

    /// Lists events since the cursor, stores those the inbox lacks, applies them.
    async fn catch_up_events(
        &mut self,
        sync: &SyncContext,
        state: &RunState,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<u64, Fatal> {
        let cursor = store::events_cursor(self.lock.conn(), &self.environment_id)
            .await?
            .unwrap_or_else(|| Utc::now() - TimeDelta::days(FIRST_CATCH_UP_DAYS));
        let mut params: Vec<(&str, String)> =
            vec![("created[gte]", cursor.timestamp().to_string())];
        for t in inbox::HANDLED_TYPES {
            params.push(("types[]", t.to_string()));
        }
        let mut after: Option<String> = None;
        let mut newest: Option<DateTime<Utc>> = None;
        let mut listed = 0u64;
        let mut new_ids = Vec::new();
        loop {
            if cancel.is_cancelled() {
                return Err(Fatal::Cancelled);
            }
            let page = self
                .client
                .list::<Value>("/v1/events", &params, after.as_deref())
                .await?;
            let mut conn = sync.pool.acquire().await?;
            for event in &page.data {
                listed += 1;
                match store_event(&mut conn, &self.environment_id, event).await {
                    Ok((created, true)) => {
                        newest = newest.max(Some(created));
                        new_ids.push(event["id"].as_str().unwrap_or_default().to_string());
                    }
                    Ok((created, false)) => newest = newest.max(Some(created)),
                    Err(StoreEventError::Invalid(message)) => state.error(None, message),
                    Err(StoreEventError::Database(e)) => return Err(e.into()),
                }
            }
            after = page.next_after();
            if after.is_none() {
                break;
            }
        }
        // Newest first, as Stripe lists them: older ones are then skipped per object.
        for id in &new_ids {
            let mut tx = sync.pool.begin().await?;
            let claimed = match inbox::claim(&mut tx, &self.environment_id, id).await {
                Ok(c) => c,
                // A worker is on it already.
                Err(_) => continue,
            };
            if claimed.attempts > 0 {
                continue;
            }
            match worker::process(sync, tx, claimed).await {
                Ok(_) => {}
                Err(e) => state.error(None, format!("event {id}: {e}")),
            }
        }
        if let Some(newest) = newest {
            store::set_events_cursor(self.lock.conn(), &self.environment_id, newest).await?;
        }
        progress.events(listed, new_ids.len() as u64);
        tracing::info!(listed, new = new_ids.len(), since = %cursor, "Stripe events caught up");
        Ok(new_ids.len() as u64)
    }
}

fn flatten(done: Result<Result<(), Fatal>, tokio::task::JoinError>) -> Result<(), Fatal> {
    done.unwrap_or_else(|e| {
        Err(Fatal::from(sqlx::Error::Protocol(format!(
            "an applier task failed: {e}"
        ))))
    })
}

/// A page of listed objects and the time it was requested: the objects' version.
struct ListedPage {
    objects: Vec<Value>,
    as_of: DateTime<Utc>,
}

/// Pages through `object`'s list, completing subscriptions' items, and sends each page.
async fn page_through(
    client: StripeClient,
    object: Object,
    tx: mpsc::Sender<ListedPage>,
    cancel: CancellationToken,
) -> Result<(), Fatal> {
    let params = object.params();
    let mut after: Option<String> = None;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let as_of = Utc::now()
            .duration_trunc(TimeDelta::seconds(1))
            .unwrap_or_else(|_| Utc::now());
        let page = client
            .list::<Value>(object.path(), &params, after.as_deref())
            .await?;
        after = page.next_after();
        let mut objects = page.data;
        if object == Object::Subscriptions {
            for s in &mut objects {
                complete_items(&client, s).await?;
            }
        }
        if tx.send(ListedPage { objects, as_of }).await.is_err() {
            return Ok(()); // the appliers stopped
        }
        if after.is_none() {
            return Ok(());
        }
    }
}

/// Replaces a subscription's embedded first page of items with all of them.
async fn complete_items(client: &StripeClient, s: &mut Value) -> Result<(), ClientError> {
    if s["items"]["has_more"] != Value::Bool(true) {
        return Ok(());
    }
    let Some(id) = s["id"].as_str().map(str::to_string) else {
        return Ok(());
    };
    let mut items: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list::<Value>(
                "/v1/subscription_items",
                &[("subscription", id.clone())],
                after.as_deref(),
            )
            .await?;
        after = page.next_after();
        items.extend(page.data);
        if after.is_none() {
            break;
        }
    }
    s["items"]["data"] = Value::Array(items);
    s["items"]["has_more"] = Value::Bool(false);
    Ok(())
}

/// Applies one page in one transaction. If anything in it fails, the page is applied again
/// one object per transaction, so one bad object costs only itself.
async fn apply_page(
    sync: &SyncContext,
    state: &RunState,
    env_id: &str,
    config: &EnvironmentConfig,
    object: Object,
    page: ListedPage,
    marker: &str,
) -> Result<(), Fatal> {
    // Subscriptions: their customers' companies in one query (customers were applied
    // before).
    let companies = match object {
        Object::Subscriptions => {
            let customers: Vec<&str> = page
                .objects
                .iter()
                .filter_map(|o| match &o["customer"] {
                    Value::String(id) => Some(id.as_str()),
                    other => other["id"].as_str(),
                })
                .collect();
            let mut conn = sync.pool.acquire().await?;
            Some(
                crate::store::keys::companies_by_key_values(
                    &mut conn,
                    env_id,
                    apply::CUSTOMER_KEY,
                    &customers,
                )
                .await?,
            )
        }
        _ => None,
    };
    let ctx = Context {
        environment_id: env_id,
        config,
        client: None,
        companies: companies.as_ref(),
        defer_memberships: false,
    };
    let v = Version {
        id: marker,
        created: page.as_of,
        claimed: false,
    };
    let n = page.objects.len() as u64;
    state.add(object, |c| c.seen += n);
    crate::metrics::RECONCILE_OBJECTS.inc_by([object.name(), "seen"], n);

    let mut tx = sync.pool.begin().await?;
    // A lost commit is repaired by the next run: no need to wait for the WAL flush.
    crate::store::relax_commit(&mut tx).await?;
    // Claim every object's version in one statement; objects a newer event already
    // reached are skipped.
    let ids: Vec<&str> = page
        .objects
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    let claimed: Option<std::collections::HashSet<String>> = match claim_versions(
        &mut tx,
        env_id,
        &ids,
        object.singular(),
        &vec![marker; ids.len()],
        &vec![page.as_of; ids.len()],
    )
    .await
    {
        Ok(ids) => Some(ids.into_iter().collect()),
        Err(e) if is_unavailable(&e) => return Err(e.into()),
        // E.g. an id twice in one page: the slow path sorts it out object by object.
        Err(e) => {
            tracing::debug!(error = %e, "claiming the page's versions failed");
            None
        }
    };
    let mut results = Vec::with_capacity(page.objects.len());
    let mut failed = claimed.is_none();
    let claimed = claimed.unwrap_or_default();
    for o in page
        .objects
        .iter()
        .take(if failed { 0 } else { usize::MAX })
    {
        if !o["id"].as_str().is_some_and(|id| claimed.contains(id)) {
            // Skipped (newer state applied), or no id: the slow path reports it.
            if o["id"].as_str().is_none() {
                failed = true;
                break;
            }
            results.push(None);
            continue;
        }
        let v = Version { claimed: true, ..v };
        match apply_one(&mut tx, &ctx, object, o, v).await {
            Ok(r) => results.push(r),
            Err(ApplyError::Database(e)) if is_unavailable(&e) => return Err(e.into()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        let mut changes: Vec<Change> = results
            .iter()
            .flatten()
            .flat_map(|a| a.changes.iter().cloned())
            .collect();
        for a in results
            .iter()
            .flatten()
            .filter(|a| !a.plan_changes.is_empty())
        {
            changes.extend(super::messages::write(&mut tx, sync, env_id, a, None).await?);
        }
        match sync.changes.commit(tx, &changes).await {
            Ok(()) => {
                tally(state, object, &results);
                return Ok(());
            }
            Err(e) if e.is_unavailable() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, "page commit failed; applying one by one");
            }
        }
    } else {
        let _ = tx.rollback().await;
    }

    // The slow path: one transaction per object, errors recorded per object.
    for o in &page.objects {
        let mut tx = sync.pool.begin().await?;
        match apply_one(&mut tx, &ctx, object, o, v).await {
            Ok(r) => {
                let mut changes = r.as_ref().map(|a| a.changes.clone()).unwrap_or_default();
                if let Some(a) = r.as_ref().filter(|a| !a.plan_changes.is_empty()) {
                    changes.extend(super::messages::write(&mut tx, sync, env_id, a, None).await?);
                }
                sync.changes.commit(tx, &changes).await?;
                tally(state, object, &[r]);
            }
            Err(ApplyError::Database(e)) if is_unavailable(&e) => return Err(e.into()),
            Err(e) => {
                let _ = tx.rollback().await;
                let id = o["id"].as_str().unwrap_or("(no id)");
                state.error(Some(object), format!("{} {id}: {e}", object.singular()));
            }
        }
    }
    Ok(())
}

fn tally(state: &RunState, object: Object, results: &[Option<Applied>]) {
    let (mut created, mut updated) = (0, 0);
    for r in results.iter().flatten() {
        match r.written {
            Some(Write::Created) => created += 1,
            Some(Write::Updated) => updated += 1,
            None => {}
        }
    }
    crate::metrics::RECONCILE_OBJECTS.inc_by([object.name(), "created"], created);
    crate::metrics::RECONCILE_OBJECTS.inc_by([object.name(), "updated"], updated);
    state.add(object, |c| {
        c.created += created;
        c.updated += updated;
    });
}

fn parse<T: serde::de::DeserializeOwned>(object: Object, o: &Value) -> Result<T, ApplyError> {
    serde_path_to_error::deserialize(o).map_err(|e| {
        ApplyError::Rejected(format!(
            "not a valid {}: {}: {}",
            object.singular(),
            e.path(),
            e.inner()
        ))
    })
}

/// One listed object through the webhook's apply functions.
async fn apply_one(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    object: Object,
    o: &Value,
    v: Version<'_>,
) -> Result<Option<Applied>, ApplyError> {
    match object {
        Object::Meters => apply::meter(conn, ctx, parse::<Meter>(object, o)?, v).await,
        Object::Products => apply::product(conn, ctx, parse::<Product>(object, o)?, false, v).await,
        Object::Prices => apply::price(conn, ctx, parse::<Price>(object, o)?, false, v).await,
        Object::Customers => {
            let c: Customer = parse(object, o)?;
            let deleted = c.deleted;
            apply::customer(conn, ctx, &c, deleted, v).await
        }
        Object::Subscriptions => {
            let s: Subscription = parse(object, o)?;
            apply::subscription(conn, ctx, s, v, None).await
        }
    }
}

#[derive(Debug)]
enum StoreEventError {
    Invalid(String),
    Database(sqlx::Error),
}

/// Stores a listed event in the inbox as if it had arrived by webhook. Returns its
/// `created` and whether it was new.
async fn store_event(
    conn: &mut PgConnection,
    env_id: &str,
    event: &Value,
) -> Result<(DateTime<Utc>, bool), StoreEventError> {
    let head: super::objects::EventHead = serde_json::from_value(event.clone())
        .map_err(|e| StoreEventError::Invalid(format!("listed event is not an event: {e}")))?;
    let created = DateTime::from_timestamp(head.created, 0).ok_or_else(|| {
        StoreEventError::Invalid(format!(
            "event {}: created {} is not a time",
            head.id, head.created
        ))
    })?;
    if !head.id.starts_with("evt_") {
        return Err(StoreEventError::Invalid(format!(
            "listed event id {:?} does not start with evt_",
            head.id
        )));
    }
    let payload = event.to_string();
    let new = inbox::insert(
        conn,
        &NewEvent {
            environment_id: env_id,
            id: &head.id,
            kind: &head.kind,
            object_id: head.data.object.id.as_deref(),
            created,
            livemode: head.livemode,
            api_version: head.api_version.as_deref(),
            payload: &payload,
        },
    )
    .await
    .map_err(StoreEventError::Database)?;
    Ok((created, new))
}
