//! The datastream's shared state: admission per API key, the shutdown signal and the
//! connections' tasks. Each connection keeps its own subscriptions (flags, companies by id,
//! users by id) and its bounded send queue (`super::Conn`); what changed reaches every
//! connection through the snapshot's refresh announcements (`changes::Publisher::applied`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::cache::{Cache, Catalog, CompanyState, EnvCache};
use crate::changes::Publisher;
use crate::config::DatastreamConfig;

pub struct Datastream {
    pub(super) cache: Arc<Cache>,
    pub(super) changes: Publisher,
    pub(super) config: DatastreamConfig,
    /// Open connections per API key id.
    open: Mutex<HashMap<String, usize>>,
    pub(super) shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The last rendering of each subscribed company, shared by every connection holding it:
    /// a change renders a company once, not once per connection.
    renders: Mutex<HashMap<String, Render>>,
}

/// A company rendered from one version of its snapshot state and of the catalog (the
/// snapshot replaces the `Arc`s on every change), valid until its next clock-driven change.
struct Render {
    state: Arc<CompanyState>,
    catalog: Arc<Catalog>,
    value: Arc<Value>,
    next_change: Option<DateTime<Utc>>,
}

/// One admitted connection: counted against its key until dropped.
pub struct Slot {
    hub: Arc<Datastream>,
    key_id: String,
}

impl Slot {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key_id);
            }
        }
        crate::metrics::DATASTREAM_CONNECTIONS.dec();
    }
}

impl Datastream {
    pub fn new(cache: Arc<Cache>, changes: Publisher, config: DatastreamConfig) -> Arc<Datastream> {
        Arc::new(Datastream {
            cache,
            changes,
            config,
            open: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            renders: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection for `key_id`; `None` when the key already has
    /// `max_connections_per_key` open.
    pub fn admit(self: &Arc<Self>, key_id: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key_id.to_string()).or_default();
        if *n >= self.config.max_connections_per_key {
            crate::metrics::DATASTREAM_DROPS.inc("connection_limit");
            tracing::warn!(
                key_id,
                limit = self.config.max_connections_per_key,
                "datastream connection refused: the key has the most connections allowed"
            );
            return None;
        }
        *n += 1;
        crate::metrics::DATASTREAM_CONNECTIONS.inc();
        Some(Slot {
            hub: self.clone(),
            key_id: key_id.to_string(),
        })
    }

    /// Serves an upgraded connection in a task this hub waits for on shutdown.
    pub fn serve(self: &Arc<Self>, socket: WebSocket, env: Arc<EnvCache>, slot: Slot) {
        let hub = self.clone();
        self.tracker.spawn(hub.run(socket, env, slot));
    }

    /// Closes every connection with 1001 (going away) and waits until they are closed.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The company in the rules engine's model, as JSON, and when it next changes by the
    /// clock; `None` when the snapshot no longer has it.
    pub(super) fn render_company(
        &self,
        env: &EnvCache,
        id: &str,
        now: DateTime<Utc>,
    ) -> Option<(Arc<Value>, Option<DateTime<Utc>>)> {
        let Some(state) = env.company(id) else {
            self.lock_renders().remove(id);
            return None;
        };
        let catalog = Arc::clone(&self.cache.catalog());
        if let Some(r) = self.lock_renders().get(id) {
            if Arc::ptr_eq(&r.state, &state)
                && Arc::ptr_eq(&r.catalog, &catalog)
                && r.next_change.is_none_or(|t| now < t)
            {
                return Some((r.value.clone(), r.next_change));
            }
        }
        let context = env.effective_context(&catalog, &state);
        let rendered = super::model::company(&env.environment.id, &catalog, &state, &context, now);
        let value = Arc::new(serde_json::to_value(&rendered.company).unwrap_or(Value::Null));
        let next_change = rendered.next_change;
        self.lock_renders().insert(
            id.to_string(),
            Render {
                state,
                catalog,
                value: value.clone(),
                next_change,
            },
        );
        Some((value, next_change))
    }

    fn lock_renders(&self) -> std::sync::MutexGuard<'_, HashMap<String, Render>> {
        self.renders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections (all keys).
    pub fn connections(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}
