//! `grant_credits`: issues every plan credit grant for the current period to each company on
//! the plan (idempotent per plan grant × company × period start), zeroes the previous
//! period's plan grant (`plan_period_reset`), zeroes plan grants of companies that left the
//! plan (`plan_change`), and zeroes grants past their expiry (`expired`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{JobContext, Summary};
use crate::changes::Change;
use crate::engine::period::{credit_period, ResetCadence, ResetStart};
use crate::store::credits::{self, NewGrant};

pub async fn run_once(ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let fallback = ctx.cache.fallback_plans();
    let due = credits::plan_grants_due(&ctx.pool, &fallback).await?;

    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    let (mut issued, mut resets) = (0, 0);
    for d in &due {
        let (Some(cadence), Some(start)) = (
            ResetCadence::parse(&d.reset_cadence),
            ResetStart::parse(&d.reset_start),
        ) else {
            continue;
        };
        let period = credit_period(cadence, start, d.anchor, now);
        let mut tx = crate::store::begin(&ctx.pool).await?;
        let inserted = credits::grant(
            &mut tx,
            &NewGrant {
                environment_id: d.environment_id.clone(),
                company_id: d.company_id.clone(),
                credit_id: d.credit_id.clone(),
                micros: d.amount_micros,
                reason: "plan".into(),
                plan_credit_grant_id: Some(d.plan_credit_grant_id.clone()),
                period_start: Some(period.start),
                expires_at: if d.expiry == "period_end" {
                    period.end
                } else {
                    None
                },
                ..Default::default()
            },
        )
        .await?;
        if inserted.is_none() {
            continue; // this period was granted already (here or on another replica)
        }
        issued += 1;
        if d.expiry == "period_end" {
            let previous = credits::open_plan_grants_before(
                &mut tx,
                &d.plan_credit_grant_id,
                &d.company_id,
                period.start,
            )
            .await?;
            for id in previous {
                if credits::zero_out(&mut tx, &id, "plan_period_reset")
                    .await?
                    .is_some()
                {
                    resets += 1;
                }
            }
        }
        let change = Change::credits(&d.environment_id, &d.company_id);
        ctx.changes
            .commit(tx, std::slice::from_ref(&change))
            .await?;
        touched.insert((d.environment_id.clone(), d.company_id.clone()));
    }

    // Plan grants of companies no longer on the plan (fallback included) stop.
    let left = credits::open_plan_grants_of_departed(&ctx.pool, &fallback).await?;
    let plan_changes = zero_each(ctx, &left, "plan_change", &mut touched).await?;

    // Grants past their expiry: checks ignore them already; record it in the ledger.
    let expired_ids = credits::open_grants_expired_at(&ctx.pool, now).await?;
    let expired = zero_each(ctx, &expired_ids, "expired", &mut touched).await?;

    Ok(serde_json::json!({
        "issued": issued,
        "period_resets": resets,
        "plan_changes": plan_changes,
        "expired": expired,
        "companies": touched.len(),
    }))
}

/// Zeroes each grant in its own transaction; returns how many had something left.
async fn zero_each(
    ctx: &JobContext,
    ids: &[String],
    reason: &str,
    touched: &mut BTreeSet<(String, String)>,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for id in ids {
        let mut tx = crate::store::begin(&ctx.pool).await?;
        if let Some((env, company, _)) = credits::zero_out(&mut tx, id, reason).await? {
            let change = Change::credits(&env, &company);
            ctx.changes
                .commit(tx, std::slice::from_ref(&change))
                .await?;
            touched.insert((env, company));
            n += 1;
        }
    }
    Ok(n)
}
