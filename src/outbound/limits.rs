//! `entitlement.limit.warning` and `entitlement.limit.reached`: usage crossing a share of the
//! allocation (`webhooks.limit_warning_percent`) or the allocation itself, once per company,
//! feature and metric window (`webhook_limit_crossings`), detected when the track events that
//! cross it are stored and written in their transaction. `entitlement.soft_limit.warning`
//! and `entitlement.soft_limit.reached` do the same for a metered entitlement's soft limit
//! (`pay_as_you_go` / `overage` with `soft_limit`).
//!
//! The check before is the snapshot's (this batch is not in it yet), the check after the same
//! with the batch's new counter values merged: the engine decides the allocation and the
//! usage exactly as `POST /flags/{key}/check` would.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::Event;
use crate::cache::Cache;
use crate::changes::Change;
use crate::engine::{self, FeatureType, UsageCounter};
use crate::store::{self, webhooks};

pub const WARNING: &str = "entitlement.limit.warning";
pub const REACHED: &str = "entitlement.limit.reached";
pub const SOFT_WARNING: &str = "entitlement.soft_limit.warning";
pub const SOFT_REACHED: &str = "entitlement.soft_limit.reached";

/// The usage at which a warning for `limit` fires: `percent`% of it, rounded up, at least 1.
fn warning_threshold(limit: i64, percent: u32) -> i64 {
    ((limit * i64::from(percent) + 99) / 100).max(1)
}

/// Writes the limit messages the batch's counters cause. `usage`: per company, the new
/// absolute counter values (as `store::events::Touched::usage`).
pub async fn emit(
    conn: &mut PgConnection,
    cache: &Cache,
    usage: &[(String, String, Vec<UsageCounter>)],
    warning_percent: u32,
    now: DateTime<Utc>,
) -> store::Result<Option<Change>> {
    let mut wrote = None;
    for (env_id, company_id, counters) in usage {
        let wants_warning = cache.webhooks_want(env_id, WARNING);
        let wants_reached = cache.webhooks_want(env_id, REACHED);
        let wants_soft_warning = cache.webhooks_want(env_id, SOFT_WARNING);
        let wants_soft_reached = cache.webhooks_want(env_id, SOFT_REACHED);
        if !(wants_warning || wants_reached || wants_soft_warning || wants_soft_reached) {
            continue;
        }
        let Some((env, before)) = cache.env_and_company(env_id, company_id) else {
            continue;
        };
        let mut after = (*before).clone();
        engine::merge_usage(&mut after.context.usage, counters);
        let after = std::sync::Arc::new(after);
        let events: HashSet<&str> = counters.iter().map(|c| &*c.event).collect();
        let catalog = cache.catalog();
        let mut messages = Vec::new();
        for flag in catalog.flags_by_key.values() {
            let Some(feature) = &flag.feature else {
                continue;
            };
            let counts_these = feature.feature_type == FeatureType::Event
                && feature
                    .event_subtype
                    .as_deref()
                    .is_some_and(|e| events.contains(e));
            if !counts_these {
                continue;
            }
            let check = |state| {
                env.check_resolved(&catalog, flag, Some((company_id.clone(), state)), None, now)
                    .evaluation
            };
            let was = check(before.clone());
            let is = check(after.clone());
            let Some(ent) = is.entitlement.as_ref() else {
                continue;
            };
            let (Some(allocation), Some(usage)) = (ent.allocation, ent.usage) else {
                continue;
            };
            let used_before = was.entitlement.as_ref().and_then(|e| e.usage).unwrap_or(0);
            let window = ent.metric_reset_at.unwrap_or(DateTime::UNIX_EPOCH);
            let mut thresholds = Vec::with_capacity(4);
            if allocation > 0 {
                thresholds.push((
                    WARNING,
                    wants_warning,
                    warning_threshold(allocation, warning_percent),
                ));
                thresholds.push((REACHED, wants_reached, allocation));
            }
            if let Some(soft) = ent.soft_limit.filter(|s| *s > 0) {
                thresholds.push((
                    SOFT_WARNING,
                    wants_soft_warning,
                    warning_threshold(soft, warning_percent),
                ));
                thresholds.push((SOFT_REACHED, wants_soft_reached, soft));
            }
            for (kind, wanted, threshold) in thresholds {
                let crossed = used_before < threshold && usage >= threshold;
                if !(wanted && crossed) {
                    continue;
                }
                if !webhooks::record_crossing(conn, env_id, company_id, &feature.id, kind, window)
                    .await?
                {
                    continue; // already sent for this window
                }
                let data = json!({
                    "company_id": company_id,
                    "company_keys": before.keys.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                    "feature_id": feature.id,
                    "feature_key": feature.key,
                    "flag_key": flag.key,
                    "event_name": ent.event_name,
                    "allocation": allocation,
                    "soft_limit": ent.soft_limit,
                    "usage": usage,
                    "threshold": threshold,
                    "warning_percent": warning_percent,
                    "metric_period": ent.metric_period.map(|p| p.as_str()),
                    "metric_reset_at": ent.metric_reset_at,
                    "value": is.value,
                });
                let mut e = Event::new(kind, data);
                e.feature_id = Some(feature.id.clone());
                messages.push(e);
            }
        }
        // Nothing to send writes nothing (`None`).
        let change = super::emit(conn, env_id, &env.environment.key, &messages).await?;
        wrote = wrote.or(change);
    }
    Ok(wrote)
}

pub const CREDIT_WARNING: &str = "credit.limit.warning";
pub const CREDIT_REACHED: &str = "credit.limit.reached";

/// `credit.limit.warning` (the remaining balance falls to `100 − warning_percent`% of what was
/// available or below) and `credit.limit.reached` (nothing left), once per company, credit
/// and grant (a new grant starts a new window). `credits`: the `(environment_id,
/// company_id)` pairs whose balances the batch burned.
pub async fn emit_credits(
    conn: &mut PgConnection,
    cache: &Cache,
    credits: &[(String, String)],
    warning_percent: u32,
    now: DateTime<Utc>,
) -> store::Result<Option<Change>> {
    let mut wrote = None;
    for (env_id, company_id) in credits {
        let wants_warning = cache.webhooks_want(env_id, CREDIT_WARNING);
        let wants_reached = cache.webhooks_want(env_id, CREDIT_REACHED);
        if !wants_warning && !wants_reached {
            continue;
        }
        let Some((env, before)) = cache.env_and_company(env_id, company_id) else {
            continue;
        };
        let mut messages = Vec::new();
        for row in store::credits::balance_of_company(conn, company_id, now).await? {
            let was = before.context.credit_balance(&row.credit_id, now);
            if was.total <= 0.0 {
                continue;
            }
            let remaining = row.remaining_micros as f64 / store::credits::MICROS;
            let floor = was.total * f64::from(100 - warning_percent) / 100.0;
            let window = store::credits::latest_grant_at(conn, company_id, &row.credit_id)
                .await?
                .unwrap_or(DateTime::UNIX_EPOCH);
            for (kind, wanted, threshold) in [
                (CREDIT_WARNING, wants_warning, floor),
                (CREDIT_REACHED, wants_reached, 0.0),
            ] {
                let crossed = was.remaining > threshold && remaining <= threshold + 1e-9;
                if !(wanted && crossed) {
                    continue;
                }
                if !webhooks::record_crossing(
                    conn,
                    env_id,
                    company_id,
                    &row.credit_id,
                    kind,
                    window,
                )
                .await?
                {
                    continue;
                }
                let mut e = Event::new(
                    kind,
                    json!({
                        "company_id": company_id,
                        "credit_id": row.credit_id,
                        "credit_key": row.credit_key,
                        "credit_name": row.credit_name,
                        "available": was.total,
                        "remaining": remaining,
                        "warning_percent": warning_percent,
                    }),
                );
                e.credit_id = Some(row.credit_id.clone());
                messages.push(e);
            }
        }
        // Nothing to send writes nothing (`None`).
        let change = super::emit(conn, env_id, &env.environment.key, &messages).await?;
        wrote = wrote.or(change);
    }
    Ok(wrote)
}
