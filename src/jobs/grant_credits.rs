//! `grant_credits`: issues every plan credit grant for the current period to each company on
//! the plan (idempotent per plan grant × company × period start), zeroes the previous
//! period's plan grant (`plan_period_reset`), zeroes plan grants of companies that left the
//! plan (`plan_change`), and zeroes grants past their expiry (`expired`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{JobContext, Summary};
use crate::cache::Change;
use crate::engine::period::{credit_period, ResetCadence, ResetStart};
use crate::store::credits::{self, NewGrant};

#[derive(sqlx::FromRow)]
struct Due {
    plan_credit_grant_id: String,
    credit_id: String,
    amount_micros: i64,
    reset_cadence: String,
    reset_start: String,
    expiry: String,
    environment_id: String,
    company_id: String,
    /// The subscription's period start, or the membership's start without one.
    anchor: DateTime<Utc>,
}

pub async fn run_once(ctx: &JobContext, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let (fb_envs, fb_plans): (Vec<String>, Vec<String>) =
        ctx.cache.fallback_plans().into_iter().unzip();
    // Every (plan grant, company) pair due now: memberships, plus companies without a base
    // plan in environments with a fallback plan.
    let due: Vec<Due> = sqlx::query_as(
        "WITH fb AS (SELECT * FROM unnest($1::text[], $2::text[]) AS t(environment_id, plan_id)),
              members AS (
                  SELECT cp.environment_id, cp.company_id, cp.plan_id,
                         COALESCE(cp.period_start, cp.started_at) AS anchor
                  FROM company_plans cp WHERE cp.ended_at IS NULL
                  UNION ALL
                  SELECT c.environment_id, c.id, fb.plan_id, c.created_at
                  FROM companies c JOIN fb ON fb.environment_id = c.environment_id
                  WHERE NOT EXISTS (SELECT 1 FROM company_plans b
                                    WHERE b.company_id = c.id AND b.is_base AND b.ended_at IS NULL))
         SELECT g.id AS plan_credit_grant_id, g.credit_id, g.amount_micros, g.reset_cadence,
                g.reset_start, g.expiry, m.environment_id, m.company_id, m.anchor
         FROM plan_credit_grants g JOIN members m ON m.plan_id = g.plan_id
         ORDER BY m.company_id, g.id",
    )
    .bind(&fb_envs)
    .bind(&fb_plans)
    .fetch_all(&ctx.pool)
    .await?;

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
        let mut tx = ctx.pool.begin().await?;
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
            let previous: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM credit_grants
                 WHERE plan_credit_grant_id = $1 AND company_id = $2 AND period_start < $3
                   AND zeroed_at IS NULL AND granted_micros > used_micros + zeroed_micros",
            )
            .bind(&d.plan_credit_grant_id)
            .bind(&d.company_id)
            .bind(period.start)
            .fetch_all(&mut *tx)
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
        let change = Change::Credits {
            environment_id: d.environment_id.clone(),
            company_id: d.company_id.clone(),
        };
        ctx.commit(tx, std::slice::from_ref(&change)).await?;
        touched.insert((d.environment_id.clone(), d.company_id.clone()));
    }

    // Plan grants of companies no longer on the plan (fallback included) stop.
    let left: Vec<String> = sqlx::query_scalar(
        "WITH fb AS (SELECT * FROM unnest($1::text[], $2::text[]) AS t(environment_id, plan_id))
         SELECT g.id FROM credit_grants g JOIN plan_credit_grants pg ON pg.id = g.plan_credit_grant_id
         WHERE g.zeroed_at IS NULL AND g.granted_micros > g.used_micros + g.zeroed_micros
           AND NOT EXISTS (SELECT 1 FROM company_plans cp WHERE cp.company_id = g.company_id
                           AND cp.plan_id = pg.plan_id AND cp.ended_at IS NULL)
           AND NOT EXISTS (SELECT 1 FROM fb WHERE fb.environment_id = g.environment_id
                           AND fb.plan_id = pg.plan_id
                           AND NOT EXISTS (SELECT 1 FROM company_plans b WHERE b.company_id = g.company_id
                                           AND b.is_base AND b.ended_at IS NULL))",
    )
    .bind(&fb_envs)
    .bind(&fb_plans)
    .fetch_all(&ctx.pool)
    .await?;
    let plan_changes = zero_each(ctx, &left, "plan_change", &mut touched).await?;

    // Grants past their expiry: checks ignore them already; record it in the ledger.
    let expired_ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM credit_grants WHERE expires_at <= $1 AND zeroed_at IS NULL
           AND granted_micros > used_micros + zeroed_micros",
    )
    .bind(now)
    .fetch_all(&ctx.pool)
    .await?;
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
        let mut tx = ctx.pool.begin().await?;
        if let Some((env, company, _)) = credits::zero_out(&mut tx, id, reason).await? {
            let change = Change::Credits {
                environment_id: env.clone(),
                company_id: company.clone(),
            };
            ctx.commit(tx, std::slice::from_ref(&change)).await?;
            touched.insert((env, company));
            n += 1;
        }
    }
    Ok(n)
}
