//! Outbound webhook messages of applied Stripe state, written in the apply's transaction:
//! `company.plan_changed` when a company's set of plans changed (`source: "stripe"`), and
//! `subscription.trial.ended` when a subscription event reports a trial that ended
//! (`previous_attributes.status` was `trialing`).

use serde_json::{json, Value};
use sqlx::PgConnection;

use super::apply::Applied;
use super::SyncContext;
use crate::changes::Change;
use crate::outbound::{self, Event};
use crate::store::{self, stripe::PlanSlot};

/// The messages of one applied event or listed object.
pub async fn write(
    conn: &mut PgConnection,
    sync: &SyncContext,
    environment_id: &str,
    applied: &Applied,
    event: Option<&str>,
) -> store::Result<Option<Change>> {
    let wants = |t: &str| {
        sync.changes
            .cache()
            .is_none_or(|c| c.webhooks_want(environment_id, t))
    };
    let mut events = Vec::new();
    if wants("company.plan_changed") {
        for (company_id, m) in &applied.plan_changes {
            let (prev_base, prev_add_ons) = split(sync, &m.before);
            let (base, add_ons) = split(sync, &m.after);
            events.push(Event::new(
                "company.plan_changed",
                json!({
                    "company_id": company_id,
                    "previous_plan": prev_base,
                    "plan": base,
                    "previous_add_ons": prev_add_ons,
                    "add_ons": add_ons,
                    "source": "stripe",
                }),
            ));
        }
    }
    // The payload is parsed only when the message is wanted.
    let event = event
        .filter(|_| wants("subscription.trial.ended"))
        .and_then(|raw| serde_json::from_str::<Value>(raw).ok());
    if let Some(e) = &event {
        let object = &e["data"]["object"];
        let was_trialing = e["data"]["previous_attributes"]["status"] == "trialing";
        let is_trialing = object["status"] == "trialing";
        if e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("customer.subscription."))
            && was_trialing
            && !is_trialing
        {
            let company_id = applied.changes.iter().find_map(|c| match c {
                Change::Company { id, .. } => Some(id.clone()),
                _ => None,
            });
            events.push(Event::new(
                "subscription.trial.ended",
                json!({
                    "company_id": company_id,
                    "subscription_id": object["id"],
                    "customer_id": object["customer"],
                    "status": object["status"],
                    "trial_end": object["trial_end"],
                }),
            ));
        }
    }
    if events.is_empty() {
        return Ok(None);
    }
    let Some(env) = sync.environment(environment_id) else {
        return Ok(None);
    };
    outbound::emit(conn, environment_id, &env.key, &events).await
}

/// The base plan and the add-ons, each `{id, key, name}` (names from the snapshot when this
/// process has one).
fn split(sync: &SyncContext, slots: &[PlanSlot]) -> (Value, Vec<Value>) {
    let catalog = sync.changes.cache().map(|c| c.catalog());
    let view = |id: &str| {
        let info = catalog.as_ref().and_then(|c| c.plans.get(id));
        json!({"id": id, "key": info.map(|p| p.key.clone()), "name": info.map(|p| p.name.clone())})
    };
    let base = slots
        .iter()
        .find(|(_, is_base)| *is_base)
        .map(|(id, _)| view(id))
        .unwrap_or(Value::Null);
    let add_ons = slots
        .iter()
        .filter(|(_, is_base)| !*is_base)
        .map(|(id, _)| view(id))
        .collect();
    (base, add_ons)
}
