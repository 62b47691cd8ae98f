//! `expire_overrides`: marks overrides past their expiration date as expired and records
//! each expiry. Checks stop applying an override at its expiration date on their own; this
//! makes it visible in the data (`expired_at`, `without_expired` lists) and frees the
//! company and feature for a new override.

use chrono::{DateTime, Utc};

use super::{JobContext, Summary};
use crate::changes::Change;
use crate::store::overrides;

pub async fn run_once(ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let mut tx = crate::store::begin(&ctx.pool).await?;
    let expired = overrides::expire_due(&mut tx, now).await?;
    let mut changes = Vec::new();
    for e in &expired {
        tracing::info!(override_id = %e.id, company_id = %e.company_id, "override expired");
        changes.push(Change::company(&e.environment_id, &e.company_id));
    }
    changes.dedup();
    ctx.commit(tx, &changes).await?;
    Ok(serde_json::json!({ "expired": expired.len() }))
}
