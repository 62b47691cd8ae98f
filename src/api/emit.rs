//! The outbound webhook messages of API writes: `<object>.created`, `.updated` (with the
//! view before as `previous`, and only when the view changed) and `.deleted`, built from the
//! REST views of the object before and after the write, inside the write's transaction.
//! Views are built only when some endpoint of the environment wants the message.

use serde::Serialize;
use serde_json::Value;

use super::auth::Auth;
use crate::api::error::AppResult;
use crate::api::AppState;
use crate::changes::Change;
use crate::outbound::Event;
use crate::store;

/// The request types of one kind of object.
#[derive(Debug)]
pub struct Kinds {
    pub created: &'static str,
    pub updated: &'static str,
    pub deleted: &'static str,
}

/// The three kinds of an object's lifecycle messages: `<prefix>.created`, `.updated` and
/// `.deleted`.
macro_rules! kinds {
    ($prefix:literal) => {
        Kinds {
            created: concat!($prefix, ".created"),
            updated: concat!($prefix, ".updated"),
            deleted: concat!($prefix, ".deleted"),
        }
    };
}

pub const USER: Kinds = kinds!("user");
pub const PLAN: Kinds = kinds!("plan");
pub const PLAN_ENTITLEMENT: Kinds = kinds!("plan.entitlement");
pub const FEATURE: Kinds = kinds!("feature");
pub const FLAG: Kinds = kinds!("flag");
pub const OVERRIDE: Kinds = kinds!("company.override");

/// Whether any message of `kinds` is wanted in the key's environment.
pub fn wanted(state: &AppState, auth: &Auth, kinds: &Kinds) -> bool {
    [kinds.created, kinds.updated, kinds.deleted]
        .iter()
        .any(|t| state.wants(auth, t))
}

/// The view `find` reads, as a message carries it, when `watch` (a message is wanted);
/// otherwise `find` is not run at all (futures do nothing until awaited).
pub async fn view<V: Serialize>(
    watch: bool,
    find: impl std::future::Future<Output = AppResult<Option<V>>>,
) -> AppResult<Option<Value>> {
    if !watch {
        return Ok(None);
    }
    Ok(find
        .await?
        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null)))
}

/// A view without what moves on its own (timestamps), for telling whether a write changed it.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("updated_at");
    }
    v
}

/// The message of a write that turned `before` into `after` (`None`: absent), if wanted.
pub fn lifecycle(
    state: &AppState,
    auth: &Auth,
    kinds: &Kinds,
    before: Option<Value>,
    after: Option<Value>,
) -> Option<Event> {
    let event = match (before, after) {
        (None, Some(a)) => Event::new(kinds.created, a),
        (Some(b), None) => Event::new(kinds.deleted, b),
        (Some(b), Some(a)) if comparable(&b) != comparable(&a) => {
            Event::new(kinds.updated, a).with_previous(b)
        }
        _ => return None,
    };
    state.wants(auth, event.request_type).then_some(event)
}

/// Writes the messages of `events` (skipping `None`) in `tx`; the change to commit with.
pub async fn write(
    state: &AppState,
    auth: &Auth,
    tx: &mut store::Conn,
    events: impl IntoIterator<Item = Option<Event>>,
) -> AppResult<Option<Change>> {
    let events: Vec<Event> = events.into_iter().flatten().collect();
    state.emit(tx, auth, &events).await
}

/// Ends the write of one object: its lifecycle message (the write turned `before` into
/// `after`; written only when wanted) goes into `tx`, which is then committed with `changes`
/// (and the outbox's wake-up when a message was written).
pub async fn commit(
    state: &AppState,
    auth: &Auth,
    mut tx: store::Tx,
    kinds: &Kinds,
    (before, after): (Option<Value>, Option<Value>),
    mut changes: Vec<Change>,
) -> AppResult<()> {
    let message = lifecycle(state, auth, kinds, before, after);
    changes.extend(write(state, auth, &mut tx, [message]).await?);
    state.commit(tx, &changes).await
}

/// What one write did, before it commits: the id it wrote, the company it concerns, the
/// views before and after (built when a message or an audit entry wants them) and the
/// snapshot changes to commit with. The REST handlers and the console share the writes that
/// return it, and each ends them its own way (the console audits first, in the same
/// transaction).
pub struct Written {
    pub id: String,
    pub company_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub changes: Vec<Change>,
}

/// Ends a write that returned `written`: as [`commit`], with its views and changes.
pub async fn finish(
    state: &AppState,
    auth: &Auth,
    tx: store::Tx,
    kinds: &Kinds,
    written: Written,
) -> AppResult<()> {
    commit(
        state,
        auth,
        tx,
        kinds,
        (written.before, written.after),
        written.changes,
    )
    .await
}
