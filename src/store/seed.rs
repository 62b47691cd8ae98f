//! Seeding: catalog objects upserted by their `key`, each reporting whether it was created,
//! updated or left unchanged (an unchanged row is not written at all), so loading the same
//! catalog twice changes nothing.

use sqlx::PgConnection;

use super::values::{BindValues, EntitlementValues};
use crate::ids;

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    /// From an upsert's `RETURNING id, (xmax = 0)`: no row when nothing changed.
    fn of(row: Option<(String, bool)>) -> Outcome {
        match row {
            Some((_, true)) => Outcome::Created,
            Some((_, false)) => Outcome::Updated,
            None => Outcome::Unchanged,
        }
    }

    /// A change of either part is a change of the whole.
    pub fn and(self, other: Outcome) -> Outcome {
        match (self, other) {
            (Outcome::Unchanged, Outcome::Unchanged) => Outcome::Unchanged,
            (Outcome::Unchanged, _) => Outcome::Updated,
            (o, _) => o,
        }
    }
}

pub struct Feature<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub feature_type: &'a str,
    pub event_subtype: Option<&'a str>,
    pub trait_id: Option<&'a str>,
}

/// The feature and its flag (same key).
pub async fn upsert_feature(conn: &mut PgConnection, f: &Feature<'_>) -> super::Result<Outcome> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "INSERT INTO features (id, key, name, description, feature_type, event_subtype, trait_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
             feature_type = EXCLUDED.feature_type, event_subtype = EXCLUDED.event_subtype,
             trait_id = EXCLUDED.trait_id, updated_at = now()
         WHERE (features.name, features.description, features.feature_type, features.event_subtype, features.trait_id)
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description, EXCLUDED.feature_type, EXCLUDED.event_subtype, EXCLUDED.trait_id)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::FEATURE))
    .bind(f.key)
    .bind(f.name)
    .bind(f.description)
    .bind(f.feature_type)
    .bind(f.event_subtype)
    .bind(f.trait_id)
    .fetch_optional(&mut *conn)
    .await?;
    // Every feature has a flag with its key.
    let feature_id: String = sqlx::query_scalar("SELECT id FROM features WHERE key = $1")
        .bind(f.key)
        .fetch_one(&mut *conn)
        .await?;
    let flag: Option<(String, bool)> = sqlx::query_as(
        "INSERT INTO flags (id, key, name, description, feature_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, feature_id = EXCLUDED.feature_id,
             updated_at = now()
         WHERE (flags.name, flags.feature_id) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.feature_id)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::FLAG))
    .bind(f.key)
    .bind(f.name)
    .bind(f.description)
    .bind(&feature_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Outcome::of(row).and(Outcome::of(flag)))
}

pub struct Plan<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub plan_type: &'a str,
    pub billing_product_id: Option<&'a str>,
}

pub async fn upsert_plan(conn: &mut PgConnection, p: &Plan<'_>) -> super::Result<Outcome> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "INSERT INTO plans (id, key, name, description, plan_type, billing_product_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
             plan_type = EXCLUDED.plan_type, billing_product_id = EXCLUDED.billing_product_id,
             updated_at = now()
         WHERE (plans.name, plans.description, plans.plan_type, plans.billing_product_id)
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description, EXCLUDED.plan_type, EXCLUDED.billing_product_id)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::PLAN))
    .bind(p.key)
    .bind(p.name)
    .bind(p.description)
    .bind(p.plan_type)
    .bind(p.billing_product_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Outcome::of(row))
}

/// The id of the plan with `key`.
pub async fn plan_id(conn: &mut PgConnection, key: &str) -> super::Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT id FROM plans WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// The id and type of the feature with `key`.
pub async fn feature(
    conn: &mut PgConnection,
    key: &str,
) -> super::Result<Option<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT id, feature_type FROM features WHERE key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?,
    )
}

/// The id of the credit type with `key`.
pub async fn credit_id(conn: &mut PgConnection, key: &str) -> super::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM credit_types WHERE key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?,
    )
}

/// A plan's entitlement to a feature, by `(plan_id, feature_id)`.
pub async fn upsert_entitlement(
    conn: &mut PgConnection,
    plan_id: &str,
    feature_id: &str,
    v: &EntitlementValues,
    billing: &super::plans::Billing,
) -> super::Result<Outcome> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "INSERT INTO plan_entitlements (id, plan_id, feature_id, value_type, value_bool, value_numeric,
             value_trait_id, value_credit_id, credit_consumption_rate, metric_period,
             metric_period_month_reset, price_behavior, monthly_metered_price_id,
             yearly_metered_price_id, soft_limit)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (plan_id, feature_id) DO UPDATE SET value_type = EXCLUDED.value_type,
             value_bool = EXCLUDED.value_bool, value_numeric = EXCLUDED.value_numeric,
             value_trait_id = EXCLUDED.value_trait_id, value_credit_id = EXCLUDED.value_credit_id,
             credit_consumption_rate = EXCLUDED.credit_consumption_rate,
             metric_period = EXCLUDED.metric_period,
             metric_period_month_reset = EXCLUDED.metric_period_month_reset,
             price_behavior = EXCLUDED.price_behavior,
             monthly_metered_price_id = EXCLUDED.monthly_metered_price_id,
             yearly_metered_price_id = EXCLUDED.yearly_metered_price_id,
             soft_limit = EXCLUDED.soft_limit, updated_at = now()
         WHERE (plan_entitlements.value_type, plan_entitlements.value_bool, plan_entitlements.value_numeric,
                plan_entitlements.value_trait_id, plan_entitlements.value_credit_id,
                plan_entitlements.credit_consumption_rate, plan_entitlements.metric_period,
                plan_entitlements.metric_period_month_reset, plan_entitlements.price_behavior,
                plan_entitlements.monthly_metered_price_id,
                plan_entitlements.yearly_metered_price_id, plan_entitlements.soft_limit)
               IS DISTINCT FROM (EXCLUDED.value_type, EXCLUDED.value_bool, EXCLUDED.value_numeric,
                EXCLUDED.value_trait_id, EXCLUDED.value_credit_id, EXCLUDED.credit_consumption_rate,
                EXCLUDED.metric_period, EXCLUDED.metric_period_month_reset, EXCLUDED.price_behavior,
                EXCLUDED.monthly_metered_price_id, EXCLUDED.yearly_metered_price_id,
                EXCLUDED.soft_limit)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::PLAN_ENTITLEMENT))
    .bind(plan_id)
    .bind(feature_id)
    .bind_values(v)
    .bind_billing(billing)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Outcome::of(row))
}

/// A credit type, by key.
pub async fn upsert_credit_type(
    conn: &mut PgConnection,
    key: &str,
    name: &str,
    description: &str,
) -> super::Result<Outcome> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "INSERT INTO credit_types (id, key, name, description) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name,
             description = EXCLUDED.description, updated_at = now()
         WHERE (credit_types.name, credit_types.description)
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::CREDIT_TYPE))
    .bind(key)
    .bind(name)
    .bind(description)
    .fetch_optional(conn)
    .await?;
    Ok(Outcome::of(row))
}

pub struct PlanCreditGrant<'a> {
    pub plan_id: &'a str,
    pub credit_id: &'a str,
    pub amount_micros: i64,
    pub reset_cadence: &'a str,
    pub reset_start: &'a str,
    pub expiry: &'a str,
}

/// The credits a plan includes each period, by `(plan_id, credit_id)`.
pub async fn upsert_plan_credit_grant(
    conn: &mut PgConnection,
    g: &PlanCreditGrant<'_>,
) -> super::Result<Outcome> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "INSERT INTO plan_credit_grants (id, plan_id, credit_id, amount_micros, reset_cadence,
             reset_start, expiry)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (plan_id, credit_id) DO UPDATE SET amount_micros = EXCLUDED.amount_micros,
             reset_cadence = EXCLUDED.reset_cadence, reset_start = EXCLUDED.reset_start,
             expiry = EXCLUDED.expiry, updated_at = now()
         WHERE (plan_credit_grants.amount_micros, plan_credit_grants.reset_cadence,
                plan_credit_grants.reset_start, plan_credit_grants.expiry)
               IS DISTINCT FROM (EXCLUDED.amount_micros, EXCLUDED.reset_cadence,
                EXCLUDED.reset_start, EXCLUDED.expiry)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::PLAN_CREDIT_GRANT))
    .bind(g.plan_id)
    .bind(g.credit_id)
    .bind(g.amount_micros)
    .bind(g.reset_cadence)
    .bind(g.reset_start)
    .bind(g.expiry)
    .fetch_optional(conn)
    .await?;
    Ok(Outcome::of(row))
}
