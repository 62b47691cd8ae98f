//! The datastream: `GET /datastream`, the WebSocket the official SDKs open to evaluate flags
//! in-process (the `schematichq` SDK's `schematic/datastream/` protocol).
//!
//! A connection asks for entities (`{"data": {"action": "start", "entity_type":
//! "rulesengine.Flags" | "rulesengine.Company" | "rulesengine.User", "keys": {...}}}`) and is
//! answered with them in the rules engine's model ([`model`]); from then on it is subscribed:
//! every refresh of this process's snapshot (its own commits and other replicas' through
//! LISTEN/NOTIFY, announced by `changes::Publisher::applied`) re-renders what it holds and
//! sends what changed (`partial`, `full`, `delete`), and a 250 ms timer does the same for
//! what changes with the clock alone (an override expiring, a metric period resetting).
//!
//! Limits ([`hub`]): connections per API key, a bounded send queue per connection (a consumer
//! that falls behind it is closed with 1008 rather than buffered without bound), and a
//! close with 1001 on shutdown so SDKs reconnect to another replica.

pub mod hub;
pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cache::{Cache, EnvCache, KeyMap};
use crate::changes::Applied;
pub use hub::{Datastream, Slot};

pub const FLAGS: &str = "rulesengine.Flags";
pub const FLAG: &str = "rulesengine.Flag";
pub const COMPANY: &str = "rulesengine.Company";
pub const USER: &str = "rulesengine.User";

/// Close codes: going away (shutdown), policy violation (a slow consumer).
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;

/// How often clock-driven changes are looked for.
const TICK: Duration = Duration::from_millis(250);
/// How long a close frame may wait for a consumer that stopped reading.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Envelope {
    data: Request,
}

#[derive(Deserialize)]
struct Request {
    action: String,
    entity_type: String,
    #[serde(default)]
    keys: Option<BTreeMap<String, Value>>,
}

/// What one connection holds and last sent.
struct Conn {
    hub: Arc<Datastream>,
    cache: Arc<Cache>,
    env: Arc<EnvCache>,
    out: mpsc::Sender<Message>,
    close: Option<oneshot::Sender<CloseFrame>>,
    /// The flags last sent, once subscribed.
    flags: Option<Vec<model::RFlag>>,
    companies: HashMap<String, Sent>,
    users: HashMap<String, Value>,
    /// Set when the connection must end (dropped as a slow consumer).
    done: Option<&'static str>,
}

struct Sent {
    value: Arc<Value>,
    next_change: Option<DateTime<Utc>>,
}

impl Datastream {
    /// Serves one upgraded connection until it closes, the consumer falls behind, or the
    /// server shuts down.
    pub(crate) async fn run(self: Arc<Self>, socket: WebSocket, env: Arc<EnvCache>, slot: Slot) {
        let started = Instant::now();
        let environment = env.environment.key.clone();
        tracing::info!(env = %environment, key_id = %slot.key_id(), "datastream connected");
        let (sink, mut stream) = socket.split();
        let (out, queue) = mpsc::channel(self.config.send_queue);
        let (close_tx, close_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(sink, queue, close_rx));
        let mut applied = self.changes.applied();
        let mut conn = Conn {
            hub: self.clone(),
            cache: self.cache.clone(),
            env,
            out,
            close: Some(close_tx),
            flags: None,
            companies: HashMap::new(),
            users: HashMap::new(),
            done: None,
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            if let Some(reason) = conn.done {
                break reason;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    conn.close_with(CLOSE_GOING_AWAY, "server shutting down; reconnect");
                    break "shutdown";
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => conn.request(text.as_bytes()),
                    Some(Ok(Message::Binary(bytes))) => conn.request(&bytes),
                    Some(Ok(Message::Close(_))) | None => break "client closed",
                    Some(Err(_)) => break "connection error",
                    // Pings are answered by the WebSocket layer.
                    Some(Ok(_)) => {}
                },
                a = applied.recv() => match a {
                    Ok(a) => conn.applied(&a),
                    Err(broadcast::error::RecvError::Lagged(_)) => conn.applied(&Applied::everything()),
                    Err(broadcast::error::RecvError::Closed) => {
                        conn.close_with(CLOSE_GOING_AWAY, "server shutting down; reconnect");
                        break "shutdown";
                    }
                },
                _ = tick.tick() => conn.tick(),
            }
        };
        conn.unsubscribe_all();
        let closing = conn.close.is_none();
        drop(conn);
        if closing {
            // The closing handshake: read (and discard) until the client answers our close,
            // so its unread requests do not turn the close into a reset.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = writer.await;
        tracing::info!(
            env = %environment,
            key_id = %slot.key_id(),
            reason,
            seconds = started.elapsed().as_secs_f64(),
            "datastream closed"
        );
        drop(slot);
    }
}

/// Writes queued messages; a close request goes out ahead of the queue (after at most the
/// message being written, for up to [`CLOSE_WAIT`]).
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<CloseFrame>,
) {
    let mut closing = None;
    loop {
        tokio::select! {
            biased;
            frame = &mut close, if closing.is_none() => {
                closing = frame.ok();
                break;
            }
            msg = queue.recv() => {
                let Some(msg) = msg else { break };
                tokio::select! {
                    biased;
                    frame = &mut close => {
                        closing = frame.ok();
                        break;
                    }
                    sent = sink.send(msg) => if sent.is_err() { return },
                }
            }
        }
    }
    if let Some(frame) = closing {
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
}

fn envelope(
    entity_type: &str,
    entity_id: Option<&str>,
    message_type: &str,
    data: Value,
) -> Message {
    let mut m = json!({
        "data": data,
        "entity_type": entity_type,
        "message_type": message_type,
    });
    if let Some(id) = entity_id {
        m["entity_id"] = Value::String(id.to_string());
    }
    Message::Text(Utf8Bytes::from(m.to_string()))
}

impl Conn {
    fn send(&mut self, message_type: &'static str, msg: Message) {
        if self.done.is_some() {
            return;
        }
        match self.out.try_send(msg) {
            Ok(()) => crate::metrics::DATASTREAM_MESSAGES.inc(message_type),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    env = %self.env.environment.key,
                    queue = self.out.max_capacity(),
                    "datastream consumer too slow: its send queue is full; closing (1008)"
                );
                crate::metrics::DATASTREAM_DROPS.inc("slow_consumer");
                self.close_with(CLOSE_POLICY, "send queue full: consumer too slow");
                self.done = Some("slow consumer");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.done = Some("writer gone"),
        }
    }

    fn close_with(&mut self, code: u16, reason: &'static str) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            });
        }
    }

    fn error(&mut self, entity_type: &str, keys: Option<&BTreeMap<String, Value>>, error: String) {
        let data = json!({"error": error, "keys": keys, "entity_type": entity_type});
        self.send("error", envelope(entity_type, None, "error", data));
    }

    fn request(&mut self, bytes: &[u8]) {
        let req: Envelope = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                return self.error(
                    "",
                    None,
                    format!(
                        "invalid request: {e}; expected {{\"data\": {{\"action\": \"start\"|\"stop\", \"entity_type\": ..., \"keys\": {{...}}}}}}"
                    ),
                )
            }
        };
        let Request {
            action,
            entity_type,
            keys,
        } = req.data;
        let start = match action.as_str() {
            "start" => true,
            "stop" => false,
            other => {
                return self.error(
                    &entity_type,
                    keys.as_ref(),
                    format!("action: {other:?} is not start or stop"),
                )
            }
        };
        let key_map: KeyMap = keys
            .iter()
            .flatten()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        match entity_type.as_str() {
            FLAGS | FLAG => {
                if start {
                    if self.flags.is_none() {
                        crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["flags"], 1);
                    }
                    let flags = model::flags(&self.env.environment.id, &self.env_catalog());
                    self.send_flags(&flags);
                    self.flags = Some(flags);
                } else if self.flags.take().is_some() {
                    crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["flags"], -1);
                }
            }
            COMPANY | USER if key_map.is_empty() => self.error(
                &entity_type,
                keys.as_ref(),
                "keys: at least one key is required".into(),
            ),
            COMPANY => {
                let Some((id, _)) = self.env.find_company(&key_map) else {
                    return self.error(
                        COMPANY,
                        keys.as_ref(),
                        "no company matches these keys".into(),
                    );
                };
                if start {
                    if !self.companies.contains_key(&id) {
                        crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["company"], 1);
                    }
                    self.companies.remove(&id);
                    self.refresh_company(&id);
                } else if self.companies.remove(&id).is_some() {
                    crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["company"], -1);
                }
            }
            USER => {
                let Some((id, _)) = self.env.find_user(&key_map) else {
                    return self.error(USER, keys.as_ref(), "no user matches these keys".into());
                };
                if start {
                    if !self.users.contains_key(&id) {
                        crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["user"], 1);
                    }
                    self.users.remove(&id);
                    self.refresh_user(&id);
                } else if self.users.remove(&id).is_some() {
                    crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["user"], -1);
                }
            }
            other => self.error(
                other,
                keys.as_ref(),
                format!("entity_type: {other:?} is not one of {FLAGS}, {COMPANY}, {USER}"),
            ),
        }
    }

    fn env_catalog(&self) -> Arc<crate::cache::Catalog> {
        Arc::clone(&self.cache.catalog())
    }

    fn send_flags(&mut self, flags: &[model::RFlag]) {
        let data = serde_json::to_value(flags).unwrap_or(Value::Null);
        self.send("full", envelope(FLAGS, None, "full", data));
    }

    /// Re-renders the company and sends what changed: everything the first time or when its
    /// keys changed, else the changed fields (usage as changed metrics only); `delete` when
    /// it is gone.
    fn refresh_company(&mut self, id: &str) {
        let Some((value, next_change)) = self.hub.render_company(&self.env, id, Utc::now()) else {
            if let Some(old) = self.companies.remove(id) {
                crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["company"], -1);
                let data = Value::clone(&old.value);
                self.send("delete", envelope(COMPANY, Some(id), "delete", data));
            }
            return;
        };
        let message = match self.companies.get(id) {
            None => Some(("full", Value::clone(&value))),
            Some(old) => diff(&old.value, &value).map(|partial| match partial {
                Some(p) => ("partial", p),
                None => ("full", Value::clone(&value)),
            }),
        };
        if let Some((message_type, data)) = message {
            self.send(
                message_type,
                envelope(COMPANY, Some(id), message_type, data),
            );
        }
        self.companies
            .insert(id.to_string(), Sent { value, next_change });
    }

    fn refresh_user(&mut self, id: &str) {
        let Some(state) = self.env.user(id) else {
            if let Some(old) = self.users.remove(id) {
                crate::metrics::DATASTREAM_SUBSCRIPTIONS.add(["user"], -1);
                self.send("delete", envelope(USER, Some(id), "delete", old));
            }
            return;
        };
        let value = serde_json::to_value(model::user(&self.env.environment.id, &state))
            .unwrap_or(Value::Null);
        let message = match self.users.get(id) {
            None => Some(("full", value.clone())),
            Some(old) => diff(old, &value).map(|partial| match partial {
                Some(p) => ("partial", p),
                None => ("full", value.clone()),
            }),
        };
        if let Some((message_type, data)) = message {
            self.send(message_type, envelope(USER, Some(id), message_type, data));
        }
        self.users.insert(id.to_string(), value);
    }

    fn refresh_flags(&mut self) {
        let Some(old) = self.flags.take() else { return };
        let flags = model::flags(&self.env.environment.id, &self.env_catalog());
        if flags != old {
            for gone in old.iter().filter(|o| !flags.iter().any(|f| f.key == o.key)) {
                let data = serde_json::to_value(gone).unwrap_or(Value::Null);
                self.send("delete", envelope(FLAG, Some(&gone.id), "delete", data));
            }
            self.send_flags(&flags);
        }
        self.flags = Some(flags);
    }

    fn applied(&mut self, a: &Applied) {
        let env_id = self.env.environment.id.clone();
        if a.everything || a.catalog {
            self.refresh_flags();
            let ids: Vec<String> = self.companies.keys().cloned().collect();
            for id in ids {
                self.refresh_company(&id);
            }
        } else {
            for (env, id) in &a.companies {
                if *env == env_id && self.companies.contains_key(id) {
                    self.refresh_company(id);
                }
            }
        }
        let users: Vec<String> = if a.everything {
            self.users.keys().cloned().collect()
        } else {
            a.users
                .iter()
                .filter(|(env, id)| *env == env_id && self.users.contains_key(id))
                .map(|(_, id)| id.clone())
                .collect()
        };
        for id in users {
            self.refresh_user(&id);
        }
    }

    /// Re-renders companies whose rendering changes by the clock alone now.
    fn tick(&mut self) {
        let now = Utc::now();
        let due: Vec<String> = self
            .companies
            .iter()
            .filter(|(_, s)| s.next_change.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.refresh_company(&id);
        }
    }

    fn unsubscribe_all(&mut self) {
        let m = &crate::metrics::DATASTREAM_SUBSCRIPTIONS;
        if self.flags.take().is_some() {
            m.add(["flags"], -1);
        }
        m.add(["company"], -(self.companies.len() as i64));
        m.add(["user"], -(self.users.len() as i64));
        self.companies.clear();
        self.users.clear();
    }
}

/// What changed from `old` to `new` (two rendered entities): `None` when nothing did,
/// `Some(None)` when only a full message will do (its keys changed), else the partial: the
/// changed fields, absent ones as null, and of `metrics` only the changed entries (the SDK
/// upserts them by event, period and month reset).
pub fn diff(old: &Value, new: &Value) -> Option<Option<Value>> {
    if old == new {
        return None;
    }
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return Some(None);
    };
    if o.get("keys") != n.get("keys") || o.get("id") != n.get("id") {
        return Some(None);
    }
    let mut partial = serde_json::Map::new();
    for (k, v) in n {
        if o.get(k) == Some(v) {
            continue;
        }
        if k == "metrics" {
            let old_metrics = o.get(k).and_then(Value::as_array);
            let changed: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| !old_metrics.is_some_and(|olds| olds.contains(m)))
                .cloned()
                .collect();
            partial.insert(k.clone(), Value::Array(changed));
        } else {
            partial.insert(k.clone(), v.clone());
        }
    }
    for k in o.keys() {
        if !n.contains_key(k) {
            partial.insert(k.clone(), Value::Null);
        }
    }
    Some(Some(Value::Object(partial)))
}
