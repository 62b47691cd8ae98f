//! Credit grants, burndown and the ledger. Amounts are micro-credits (`i64`) in the database
//! and credits (`f64`) at the API. Every change of a grant writes its ledger row in the same
//! transaction.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use crate::ids;

pub const MICROS: f64 = 1_000_000.0;

pub fn to_micros(credits: f64) -> i64 {
    (credits * MICROS).round() as i64
}

pub fn from_micros(micros: i64) -> f64 {
    micros as f64 / MICROS
}

/// How a grant came to be.
#[derive(Debug, Clone, Default)]
pub struct NewGrant {
    pub environment_id: String,
    pub company_id: String,
    pub credit_id: String,
    pub micros: i64,
    /// `plan` for plan grants; otherwise `free`, `purchased` or `adjustment`.
    pub reason: String,
    pub plan_credit_grant_id: Option<String>,
    pub bundle_id: Option<String>,
    pub period_start: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts a grant and its ledger row. For plan grants the insert is idempotent per
/// (plan grant, company, period): `None` when that period was already granted. A company,
/// credit type, bundle or plan grant that does not exist is `NotFound` naming the field.
pub async fn grant(conn: &mut PgConnection, g: &NewGrant) -> Result<Option<String>, Error> {
    let id = ids::new_id("bcgr");
    let source = if g.plan_credit_grant_id.is_some() {
        "plan"
    } else {
        "company"
    };
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO credit_grants (id, environment_id, company_id, credit_id, source,
             plan_credit_grant_id, bundle_id, reason, period_start, granted_micros, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (plan_credit_grant_id, company_id, period_start)
             WHERE plan_credit_grant_id IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(&id)
    .bind(&g.environment_id)
    .bind(&g.company_id)
    .bind(&g.credit_id)
    .bind(source)
    .bind(&g.plan_credit_grant_id)
    .bind(&g.bundle_id)
    .bind(&g.reason)
    .bind(g.period_start)
    .bind(g.micros)
    .bind(g.expires_at)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| grant_error(e, g))?;
    if inserted.is_some() {
        ledger(
            conn,
            &g.environment_id,
            &g.company_id,
            &g.credit_id,
            &id,
            "grant",
            g.micros,
            &g.reason,
            None,
            None,
        )
        .await?;
    }
    Ok(inserted)
}

/// A grant's foreign-key violations, in terms of the field that named what does not exist.
fn grant_error(err: sqlx::Error, g: &NewGrant) -> Error {
    let missing = match violated_constraint(&err, sqlstate::FOREIGN_KEY_VIOLATION) {
        Some("credit_grants_environment_id_company_id_fkey") => {
            format!("company_id: company {:?} not found", g.company_id)
        }
        Some("credit_grants_credit_id_fkey") => {
            format!("credit_id: credit type {:?} not found", g.credit_id)
        }
        Some("credit_grants_bundle_id_fkey") => format!(
            "bundle_id: credit bundle {:?} not found",
            g.bundle_id.as_deref().unwrap_or("")
        ),
        Some("credit_grants_plan_credit_grant_id_fkey") => format!(
            "plan_credit_grant_id: plan credit grant {:?} not found",
            g.plan_credit_grant_id.as_deref().unwrap_or("")
        ),
        _ => return err.into(),
    };
    Error::NotFound(missing)
}

#[allow(clippy::too_many_arguments)]
async fn ledger(
    conn: &mut PgConnection,
    env: &str,
    company: &str,
    credit: &str,
    grant: &str,
    event_type: &str,
    micros: i64,
    reason: &str,
    feature_id: Option<&str>,
    usage_event_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credit_ledger (id, environment_id, company_id, credit_id, grant_id, event_type,
             amount_micros, reason, feature_id, usage_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(ids::new_id("bcle"))
    .bind(env)
    .bind(company)
    .bind(credit)
    .bind(grant)
    .bind(event_type)
    .bind(micros)
    .bind(reason)
    .bind(feature_id)
    .bind(usage_event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Zeroes what remains of a grant (idempotent: a grant with nothing left is untouched).
/// Returns `(environment, company, zeroed micros)` when something was zeroed.
pub async fn zero_out(
    conn: &mut PgConnection,
    grant_id: &str,
    reason: &str,
) -> Result<Option<(String, String, i64)>, sqlx::Error> {
    let row: Option<(String, String, String, i64)> = sqlx::query_as(
        "SELECT environment_id, company_id, credit_id, granted_micros - used_micros - zeroed_micros
         FROM credit_grants WHERE id = $1 FOR UPDATE",
    )
    .bind(grant_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((env, company, credit, remaining)) = row else {
        return Ok(None);
    };
    if remaining <= 0 {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE credit_grants SET zeroed_micros = zeroed_micros + $2, zeroed_at = COALESCE(zeroed_at, now()),
             zero_reason = COALESCE(zero_reason, $3), updated_at = now()
         WHERE id = $1",
    )
    .bind(grant_id)
    .bind(remaining)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    ledger(
        conn, &env, &company, &credit, grant_id, "zero_out", remaining, reason, None, None,
    )
    .await?;
    Ok(Some((env, company, remaining)))
}

/// One event's burn.
#[derive(Debug, Clone)]
pub struct Burn {
    pub micros: i64,
    pub feature_id: String,
    pub event_id: String,
}

/// Burns `burns` in order from the company's live grants of `credit_id`: plan grants first,
/// then other grants, soonest-expiring first; never below zero. Grants are locked in that
/// order, so concurrent burns for one company serialise instead of overspending. Returns the
/// micro-credits actually burned.
pub async fn burn(
    conn: &mut PgConnection,
    env: &str,
    company: &str,
    credit_id: &str,
    burns: &[Burn],
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let mut grants: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, granted_micros - used_micros - zeroed_micros FROM credit_grants
         WHERE company_id = $1 AND credit_id = $2 AND zeroed_at IS NULL
           AND (expires_at IS NULL OR expires_at > $3)
           AND granted_micros > used_micros + zeroed_micros
         ORDER BY (source = 'plan') DESC, expires_at ASC NULLS LAST, created_at, id
         FOR UPDATE",
    )
    .bind(company)
    .bind(credit_id)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut used: BTreeMap<usize, i64> = BTreeMap::new();
    let mut total = 0;
    let mut rows: Vec<(usize, i64, &Burn)> = Vec::new();
    for b in burns {
        let mut need = b.micros;
        for (i, (_, remaining)) in grants.iter_mut().enumerate() {
            if need == 0 {
                break;
            }
            let take = need.min(*remaining);
            if take > 0 {
                *remaining -= take;
                need -= take;
                *used.entry(i).or_default() += take;
                rows.push((i, take, b));
                total += take;
            }
        }
    }
    for (i, micros) in &used {
        sqlx::query("UPDATE credit_grants SET used_micros = used_micros + $2, updated_at = now() WHERE id = $1")
            .bind(&grants[*i].0)
            .bind(micros)
            .execute(&mut *conn)
            .await?;
    }
    for (i, micros, b) in rows {
        ledger(
            conn,
            env,
            company,
            credit_id,
            &grants[i].0,
            "usage",
            micros,
            "usage",
            Some(&b.feature_id),
            Some(&b.event_id),
        )
        .await?;
    }
    Ok(total)
}

/// A company's credit entitlement for an event: which credit a track event of `event_name`
/// burns, at what rate, for which feature.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditRule {
    pub feature_id: String,
    pub credit_id: String,
    pub rate: f64,
}

/// The credit rules of `(company, event)` pairs, as checks would resolve them: a credit
/// override wins; otherwise the plan entitlement (base plan or fallback plan, and add-ons)
/// with the lowest rate.
pub async fn rules_for(
    conn: &mut PgConnection,
    pairs: &[(String, String)],
    fallback_plans: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<HashMap<(String, String), Vec<CreditRule>>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (companies, events): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let (fb_envs, fb_plans): (Vec<String>, Vec<String>) = fallback_plans
        .iter()
        .map(|(e, p)| (e.clone(), p.clone()))
        .unzip();
    let rows: Vec<(String, String, String, String, String, f64)> = sqlx::query_as(
        "WITH c AS (SELECT * FROM unnest($1::text[], $2::text[]) AS t(company_id, event_name)),
              fb AS (SELECT * FROM unnest($4::text[], $5::text[]) AS t(environment_id, plan_id)),
              plans AS (
                  SELECT cp.company_id, cp.plan_id FROM company_plans cp
                  WHERE cp.company_id IN (SELECT company_id FROM c) AND cp.ended_at IS NULL
                  UNION
                  SELECT co.id, fb.plan_id FROM companies co JOIN fb ON fb.environment_id = co.environment_id
                  WHERE co.id IN (SELECT company_id FROM c)
                    AND NOT EXISTS (SELECT 1 FROM company_plans b WHERE b.company_id = co.id
                                    AND b.is_base AND b.ended_at IS NULL))
         SELECT c.company_id, c.event_name, 'override', f.id, o.value_credit_id, o.credit_consumption_rate
         FROM c JOIN features f ON f.event_subtype = c.event_name
         JOIN company_overrides o ON o.company_id = c.company_id AND o.feature_id = f.id
         WHERE o.value_type = 'credit' AND o.expired_at IS NULL
           AND (o.expiration_date IS NULL OR o.expiration_date > $3)
         UNION ALL
         SELECT c.company_id, c.event_name, 'plan', f.id, pe.value_credit_id, pe.credit_consumption_rate
         FROM c JOIN features f ON f.event_subtype = c.event_name
         JOIN plans p ON p.company_id = c.company_id
         JOIN plan_entitlements pe ON pe.plan_id = p.plan_id AND pe.feature_id = f.id
         WHERE pe.value_type = 'credit'",
    )
    .bind(&companies)
    .bind(&events)
    .bind(now)
    .bind(&fb_envs)
    .bind(&fb_plans)
    .fetch_all(conn)
    .await?;
    // Per (company, event, feature): the override, else the cheapest plan entitlement.
    let mut best: BTreeMap<(String, String, String), (bool, CreditRule)> = BTreeMap::new();
    for (company, event, source, feature, credit, rate) in rows {
        let is_override = source == "override";
        let rule = CreditRule {
            feature_id: feature.clone(),
            credit_id: credit,
            rate,
        };
        let key = (company, event, feature);
        let replace = match best.get(&key) {
            None => true,
            Some((cur_override, cur)) => {
                (is_override && !cur_override)
                    || (is_override == *cur_override
                        && (rule.rate, &rule.credit_id) < (cur.rate, &cur.credit_id))
            }
        };
        if replace {
            best.insert(key, (is_override, rule));
        }
    }
    let mut out: HashMap<(String, String), Vec<CreditRule>> = HashMap::new();
    for ((company, event, _), (_, rule)) in best {
        out.entry((company, event)).or_default().push(rule);
    }
    Ok(out)
}

/// A `credit_grants` row, with its company's and credit type's names.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GrantRow {
    pub id: String,
    pub company_id: String,
    pub company_name: String,
    pub credit_id: String,
    pub credit_name: String,
    /// `plan` or `company`.
    pub source: String,
    pub reason: String,
    pub plan_credit_grant_id: Option<String>,
    pub bundle_id: Option<String>,
    pub period_start: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub zeroed_at: Option<DateTime<Utc>>,
    pub zero_reason: Option<String>,
    pub granted_micros: i64,
    pub used_micros: i64,
    pub zeroed_micros: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a [`GrantRow`].
macro_rules! grant_select {
    () => {
        "SELECT g.id, g.company_id, c.name AS company_name, g.credit_id,
            t.name AS credit_name, g.source, g.reason, g.plan_credit_grant_id, g.bundle_id,
            g.period_start, g.expires_at, g.zeroed_at, g.zero_reason, g.granted_micros,
            g.used_micros, g.zeroed_micros, g.created_at, g.updated_at
         FROM credit_grants g JOIN companies c ON c.id = g.company_id
         JOIN credit_types t ON t.id = g.credit_id"
    };
}

/// The grant, if the environment has one with this id.
pub async fn grant_in_environment(
    conn: &mut PgConnection,
    env_id: &str,
    id: &str,
) -> Result<Option<GrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        grant_select!(),
        " WHERE g.environment_id = $1 AND g.id = $2"
    ))
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The company's grants, newest first.
pub async fn grants_of_company(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<GrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        grant_select!(),
        " WHERE g.environment_id = $1 AND g.company_id = $2
         ORDER BY g.created_at DESC, g.id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(env_id)
    .bind(company_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The company holding the grant, if the environment has one with this id.
pub async fn company_of_grant(
    conn: &mut PgConnection,
    env_id: &str,
    grant_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT company_id FROM credit_grants WHERE environment_id = $1 AND id = $2")
        .bind(env_id)
        .bind(grant_id)
        .fetch_optional(conn)
        .await
}

/// A `credit_ledger` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    pub id: String,
    pub company_id: String,
    pub credit_id: String,
    pub grant_id: String,
    /// `grant`, `usage` or `zero_out`.
    pub event_type: String,
    pub amount_micros: i64,
    pub reason: String,
    pub feature_id: Option<String>,
    pub usage_event_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The company's ledger, newest first; only rows of `credit_id` when given.
pub async fn ledger_of_company(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    credit_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, company_id, credit_id, grant_id, event_type, amount_micros, reason, feature_id,
                usage_event_id, created_at
         FROM credit_ledger WHERE environment_id = $1 AND company_id = $2
           AND ($3::text IS NULL OR credit_id = $3)
         ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5",
    )
    .bind(env_id)
    .bind(company_id)
    .bind(credit_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// A company's totals of one credit type, in micro-credits.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CreditBalanceRow {
    pub credit_id: String,
    pub credit_key: String,
    pub credit_name: String,
    pub granted_micros: i64,
    pub used_micros: i64,
    pub zeroed_micros: i64,
    /// What checks see at `now`: unexpired grants only.
    pub remaining_micros: i64,
}

/// The company's balance per credit type it was ever granted, by credit key.
pub async fn balance_of_company(
    conn: &mut PgConnection,
    company_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<CreditBalanceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT g.credit_id, t.key AS credit_key, t.name AS credit_name,
                sum(g.granted_micros)::bigint AS granted_micros,
                sum(g.used_micros)::bigint AS used_micros,
                sum(g.zeroed_micros)::bigint AS zeroed_micros,
                COALESCE(sum(g.granted_micros - g.used_micros - g.zeroed_micros)
                    FILTER (WHERE g.expires_at IS NULL OR g.expires_at > $2), 0)::bigint
                    AS remaining_micros
         FROM credit_grants g JOIN credit_types t ON t.id = g.credit_id
         WHERE g.company_id = $1
         GROUP BY g.credit_id, t.key, t.name ORDER BY t.key",
    )
    .bind(company_id)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// When the company was last granted `credit_id`: a new grant starts a new window for the
/// credit limit messages.
pub async fn latest_grant_at(
    conn: &mut PgConnection,
    company_id: &str,
    credit_id: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(created_at) FROM credit_grants WHERE company_id = $1 AND credit_id = $2",
    )
    .bind(company_id)
    .bind(credit_id)
    .fetch_one(conn)
    .await
}

#[derive(sqlx::FromRow)]
pub struct PlanGrantDue {
    pub plan_credit_grant_id: String,
    pub credit_id: String,
    pub amount_micros: i64,
    pub reset_cadence: String,
    pub reset_start: String,
    pub expiry: String,
    pub environment_id: String,
    pub company_id: String,
    /// The subscription's period start, or the membership's start without one.
    pub anchor: DateTime<Utc>,
}

/// Environment id → plan id of its fallback plan, as two arrays for `unnest`.
fn fallback_arrays(fallback: &HashMap<String, String>) -> (Vec<&str>, Vec<&str>) {
    fallback
        .iter()
        .map(|(e, p)| (e.as_str(), p.as_str()))
        .unzip()
}

/// Every (plan grant, company) pair due: memberships, plus companies without a base plan in
/// environments with a fallback plan (`fallback`: environment id → plan id).
pub async fn plan_grants_due(
    pool: &sqlx::PgPool,
    fallback: &HashMap<String, String>,
) -> Result<Vec<PlanGrantDue>, sqlx::Error> {
    let (fb_envs, fb_plans) = fallback_arrays(fallback);
    sqlx::query_as(
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
    .fetch_all(pool)
    .await
}

/// A company's grants from a plan grant in periods before `before` that still hold credits.
pub async fn open_plan_grants_before(
    conn: &mut PgConnection,
    plan_credit_grant_id: &str,
    company_id: &str,
    before: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM credit_grants
                 WHERE plan_credit_grant_id = $1 AND company_id = $2 AND period_start < $3
                   AND zeroed_at IS NULL AND granted_micros > used_micros + zeroed_micros",
    )
    .bind(plan_credit_grant_id)
    .bind(company_id)
    .bind(before)
    .fetch_all(conn)
    .await
}

/// Plan grants still holding credits for companies no longer on the plan (the fallback
/// plan included).
pub async fn open_plan_grants_of_departed(
    pool: &sqlx::PgPool,
    fallback: &HashMap<String, String>,
) -> Result<Vec<String>, sqlx::Error> {
    let (fb_envs, fb_plans) = fallback_arrays(fallback);
    sqlx::query_scalar(
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
    .fetch_all(pool)
    .await
}

/// Grants past their expiry at `now` that still hold credits.
pub async fn open_grants_expired_at(
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM credit_grants WHERE expires_at <= $1 AND zeroed_at IS NULL
           AND granted_micros > used_micros + zeroed_micros",
    )
    .bind(now)
    .fetch_all(pool)
    .await
}
