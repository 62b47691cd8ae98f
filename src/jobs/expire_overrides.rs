//! `expire_overrides`: marks overrides past their expiration date as expired and records
//! each expiry. Checks stop applying an override at its expiration date on their own; this
//! makes it visible in the data (`expired_at`, `without_expired` lists), frees the company
//! and feature for a new override, and sends `company.override.expired` to the webhooks
//! that want it (in the same transaction).

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{JobContext, Summary};
use crate::changes::Change;
use crate::outbound::{self, Event};
use crate::store::overrides::{self, OverrideDetailRow, OverrideFilter};

pub async fn run_once(ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let mut tx = crate::store::begin(&ctx.pool).await?;
    let expired = overrides::expire_due(&mut tx, now).await?;
    let mut changes = Vec::new();
    for e in &expired {
        tracing::info!(override_id = %e.id, company_id = %e.company_id, "override expired");
        changes.push(Change::company(&e.environment_id, &e.company_id));
        if !ctx
            .cache
            .webhooks_want(&e.environment_id, "company.override.expired")
        {
            continue;
        }
        let Some(env) = ctx.cache.env(&e.environment_id) else {
            continue;
        };
        let filter = OverrideFilter {
            ids: vec![e.id.clone()],
            ..Default::default()
        };
        let rows = overrides::list(&mut tx, &e.environment_id, &filter, now).await?;
        let events: Vec<Event> = rows
            .iter()
            .map(|r| Event::new("company.override.expired", view(&e.environment_id, r)))
            .collect();
        changes.extend(
            outbound::emit(&mut tx, &e.environment_id, &env.environment.key, &events).await?,
        );
    }
    changes.dedup();
    ctx.changes.commit(tx, &changes).await?;
    Ok(serde_json::json!({ "expired": expired.len() }))
}

/// The override as `GET /company-overrides/{id}` shows it, without the nested company.
fn view(environment_id: &str, r: &OverrideDetailRow) -> serde_json::Value {
    let mut v = json!({
        "id": r.id,
        "environment_id": environment_id,
        "company_id": r.company_id,
        "feature_id": r.feature_id,
        "rule_id": r.id,
        "consumption_rate": r.values.credit_consumption_rate,
        "expiration_date": r.expiration_date,
        "expired_at": r.expired_at,
        "note": r.note,
        "feature": {
            "id": r.feature_id, "key": r.feature.key, "name": r.feature.name, "description": r.feature.description,
            "feature_type": r.feature.feature_type, "event_subtype": r.feature.event_subtype,
            "trait_id": r.feature.trait_id, "created_at": r.feature.created_at, "updated_at": r.feature.updated_at,
        },
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    });
    if let (Some(o), Ok(serde_json::Value::Object(values))) =
        (v.as_object_mut(), serde_json::to_value(&r.values))
    {
        o.extend(values);
    }
    v
}
