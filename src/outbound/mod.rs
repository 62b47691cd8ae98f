//! Outbound webhooks: applications told when plans, overrides and limits change.
//!
//! A writer that changes something an application may care about calls [`emit`] inside its
//! transaction: the message is written to the outbox of every active endpoint of the
//! environment that subscribes to its type (`store::webhooks::enqueue`), and the writer
//! includes the returned `Change::Outbox` in its commit, which wakes the delivery workers of
//! every replica. No change without its message, no message without its change.
//!
//! Delivery (`deliver.rs`) drains the outbox with the shape every outbox uses
//! (`crate::outbox`): claimed under a lease with `SKIP LOCKED`, signed both ways (`sign.rs`),
//! POSTed without following redirects, retried on the Standard Webhooks schedule, and every
//! attempt recorded. Where a delivery may go is `target.rs`.

mod deliver;
pub mod limits;
pub mod sign;
pub mod target;

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::changes::Change;
use crate::config::WebhooksConfig;
use crate::store::{self, webhooks};

/// The request types an endpoint may subscribe to: the `schematichq` SDK's
/// `WebhookRequestType` values.
pub const REQUEST_TYPES: &[&str] = &[
    "subscription.trial.ended",
    "company.created",
    "company.deleted",
    "company.override.created",
    "company.override.deleted",
    "company.override.expired",
    "company.override.updated",
    "company.plan_changed",
    "company.scheduled_downgrade",
    "company.updated",
    "credit.limit.reached",
    "credit.limit.warning",
    "credit.purchase.success",
    "credit.usage_warning_reached",
    "entitlement.limit.reached",
    "entitlement.limit.warning",
    "entitlement.soft_limit.reached",
    "entitlement.soft_limit.warning",
    "entitlement.tier_limit.reached",
    "entitlement.tier_limit.warning",
    "feature.created",
    "feature.deleted",
    "feature.updated",
    "flag.created",
    "flag.deleted",
    "flag_rules.updated",
    "flag.updated",
    "plan.created",
    "plan.deleted",
    "plan.entitlement.created",
    "plan.entitlement.deleted",
    "plan.entitlement.updated",
    "plan.updated",
    "plan_version.deleted",
    "rule.deleted",
    "test.send",
    "user.created",
    "user.deleted",
    "user.updated",
    "auto.topup.hard.failure",
    "auto.topup.retry.exceeded",
    "auto.topup.success",
];

/// Something that happened, for the endpoints that subscribe to its type.
#[derive(Debug, Clone)]
pub struct Event {
    pub request_type: &'static str,
    /// The REST view of the object.
    pub data: Value,
    /// For updates: the view before.
    pub previous: Option<Value>,
    /// Limit events: the feature or credit they are about (endpoints' trigger configs).
    pub feature_id: Option<String>,
    pub credit_id: Option<String>,
}

impl Event {
    pub fn new(request_type: &'static str, data: impl serde::Serialize) -> Event {
        Event {
            request_type,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            previous: None,
            feature_id: None,
            credit_id: None,
        }
    }

    pub fn with_previous(mut self, previous: impl serde::Serialize) -> Event {
        self.previous = Some(serde_json::to_value(previous).unwrap_or(Value::Null));
        self
    }
}

/// The body of a message: `{id, type, created_at, environment, data, previous?}`.
pub fn body(message_id: &str, environment_key: &str, e: &Event) -> String {
    let mut body = json!({
        "id": message_id,
        "type": e.request_type,
        "created_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "environment": environment_key,
        "data": e.data,
    });
    if let Some(previous) = &e.previous {
        body["previous"] = previous.clone();
    }
    body.to_string()
}

/// Writes `events` into the outbox of every endpoint that subscribes to them, in the caller's
/// transaction. Returns `Some(Change::Outbox)` when anything was written: include it in the
/// commit so the delivery workers wake at once.
pub async fn emit(
    conn: &mut PgConnection,
    environment_id: &str,
    environment_key: &str,
    events: &[Event],
) -> store::Result<Option<Change>> {
    let mut written = 0;
    for e in events {
        let id = crate::ids::new_sortable_id(crate::ids::prefix::WEBHOOK_MESSAGE);
        let payload = body(&id, environment_key, e);
        written += webhooks::enqueue(
            conn,
            environment_id,
            &webhooks::Message {
                id: &id,
                request_type: e.request_type,
                payload: &payload,
                feature_id: e.feature_id.as_deref(),
                credit_id: e.credit_id.as_deref(),
            },
        )
        .await?;
    }
    if written > 0 {
        tracing::debug!(messages = written, "outbound webhook messages queued");
    }
    Ok((written > 0).then_some(Change::Outbox))
}

/// The delivery side of this process: its HTTP client and settings. Shared by the workers.
pub struct Outbound {
    pool: PgPool,
    http: reqwest::Client,
    config: WebhooksConfig,
}

impl Outbound {
    pub fn new(pool: PgPool, config: WebhooksConfig) -> Arc<Outbound> {
        let http = target::http_client(
            std::time::Duration::from_secs(config.timeout_secs),
            config.allow_private_targets,
        );
        Arc::new(Outbound { pool, http, config })
    }

    /// Starts the delivery workers; `wake` is the publisher's outbox wake-up.
    pub fn spawn(
        self: &Arc<Self>,
        wake: Arc<Notify>,
        shutdown: tokio_util::sync::CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        crate::outbox::spawn(
            self.clone(),
            wake,
            self.config.concurrency,
            std::time::Duration::from_secs(1),
            shutdown,
            tracker,
        );
    }
}
