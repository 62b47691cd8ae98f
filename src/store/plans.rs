//! Plans and their entitlements: the catalog's plan aggregate. Every function takes the
//! caller's connection or transaction; the caller owns the boundary.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use super::rows;
use crate::engine::FeatureType;
use crate::ids;
use crate::store::catalog::{self, JoinedFeature, JOINED_FEATURE_COLUMNS};
use crate::store::values::{BindValues, EntitlementValues};

/// A `plans` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlanRow {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub plan_type: String,
    pub billing_product_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PLAN_COLUMNS: &str =
    "id, key, name, description, plan_type, billing_product_id, created_at, updated_at";

/// The writable fields of a plan, already validated.
#[derive(Debug, Clone)]
pub struct PlanFields {
    pub key: String,
    pub name: String,
    pub description: String,
    pub plan_type: String,
    pub billing_product_id: Option<String>,
}

pub fn validate_plan_type(plan_type: &str) -> Result<(), Error> {
    match plan_type {
        "plan" | "add_on" => Ok(()),
        other => Err(Error::invalid(format!(
            "plan_type: {other:?} is not one of plan, add_on"
        ))),
    }
}

pub fn validate_billing_product_id(id: &str) -> Result<(), Error> {
    if id.len() > 255 || id.chars().any(char::is_whitespace) {
        return Err(Error::invalid(format!(
            "billing_product_id: {id:?} is not a Stripe product id (e.g. prod_…)"
        )));
    }
    Ok(())
}

/// The key for a plan created without one: its name slugified (`"Pro Plan"` → `"pro-plan"`),
/// with room left for a `-N` suffix; `"plan"` when nothing of the name is usable.
pub fn key_from_name(name: &str) -> String {
    let mut slug = catalog::slugify(name);
    slug.truncate(120);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "plan".into()
    } else {
        slug.to_string()
    }
}

/// `base`, or `base-2`, `base-3`, … whichever no plan has yet.
pub async fn free_key(conn: &mut PgConnection, base: &str) -> Result<String, sqlx::Error> {
    // `base` comes from `key_from_name`: no LIKE wildcards in it.
    let taken: Vec<String> =
        sqlx::query_scalar("SELECT key FROM plans WHERE key = $1 OR key LIKE $1 || '-%'")
            .bind(base)
            .fetch_all(conn)
            .await?;
    if !taken.iter().any(|k| k == base) {
        return Ok(base.to_string());
    }
    Ok((2..)
        .map(|n| format!("{base}-{n}"))
        .find(|k| !taken.contains(k))
        .unwrap_or_else(|| base.to_string()))
}

/// Unique violations on plans, as 409s naming the field.
fn plan_conflict(err: sqlx::Error, fields: &PlanFields) -> Error {
    match violated_constraint(&err, sqlstate::UNIQUE_VIOLATION) {
        Some("plans_key_key") => Error::Conflict(format!(
            "key: a plan with key {:?} already exists",
            fields.key
        )),
        Some("plans_billing_product_id_key") => Error::Conflict(format!(
            "billing_product_id: another plan is already linked to {:?}",
            fields.billing_product_id.as_deref().unwrap_or("")
        )),
        _ => err.into(),
    }
}

pub async fn insert(conn: &mut PgConnection, fields: &PlanFields) -> Result<PlanRow, Error> {
    sqlx::query_as(&format!(
        "INSERT INTO plans (id, key, name, description, plan_type, billing_product_id)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PLAN_COLUMNS}"
    ))
    .bind(ids::new_id(ids::prefix::PLAN))
    .bind(&fields.key)
    .bind(&fields.name)
    .bind(&fields.description)
    .bind(&fields.plan_type)
    .bind(&fields.billing_product_id)
    .fetch_one(conn)
    .await
    .map_err(|e| plan_conflict(e, fields))
}

/// The plan, locked for the rest of the transaction.
pub async fn get_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<PlanRow>, sqlx::Error> {
    rows::for_update(conn, "plans", PLAN_COLUMNS, id).await
}

pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    fields: &PlanFields,
) -> Result<PlanRow, Error> {
    sqlx::query_as(&format!(
        "UPDATE plans SET key = $2, name = $3, description = $4, plan_type = $5,
             billing_product_id = $6, updated_at = now()
         WHERE id = $1 RETURNING {PLAN_COLUMNS}"
    ))
    .bind(id)
    .bind(&fields.key)
    .bind(&fields.name)
    .bind(&fields.description)
    .bind(&fields.plan_type)
    .bind(&fields.billing_product_id)
    .fetch_one(conn)
    .await
    .map_err(|e| plan_conflict(e, fields))
}

/// Which plans to list. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct PlanFilter {
    pub ids: Vec<String>,
    /// `plan` or `add_on` (see `validate_plan_type`).
    pub plan_type: Option<String>,
    /// Matches the name or key.
    pub q: Option<String>,
    /// Only plans with (or without) a Stripe product.
    pub has_product_id: Option<bool>,
}

/// The ids of the plans `filter` selects, newest first.
pub async fn list_ids(
    conn: &mut PgConnection,
    filter: &PlanFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM plans
         WHERE (cardinality($1::text[]) = 0 OR id = ANY($1))
           AND ($2::text IS NULL OR plan_type = $2)
           AND ($3::text IS NULL OR name ILIKE $3 OR key ILIKE $3)
           AND ($4::boolean IS NULL OR (billing_product_id IS NOT NULL) = $4)
         ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6",
    )
    .bind(&filter.ids)
    .bind(&filter.plan_type)
    .bind(filter.q.as_deref().map(catalog::contains_pattern))
    .bind(filter.has_product_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The plans with these ids, in no particular order.
pub async fn rows(conn: &mut PgConnection, ids: &[String]) -> Result<Vec<PlanRow>, sqlx::Error> {
    rows::by_ids(conn, "plans", PLAN_COLUMNS, ids).await
}

/// Per plan of `plan_ids`, the environment's companies currently on it; plans without any
/// are absent.
pub async fn company_counts(
    conn: &mut PgConnection,
    env_id: &str,
    plan_ids: &[String],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT plan_id, count(DISTINCT company_id) FROM company_plans
         WHERE environment_id = $1 AND plan_id = ANY($2) AND ended_at IS NULL GROUP BY 1",
    )
    .bind(env_id)
    .bind(plan_ids)
    .fetch_all(conn)
    .await?
    .into_iter()
    .collect())
}

/// Companies currently on the plan, in every environment.
pub async fn active_companies(conn: &mut PgConnection, plan_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(DISTINCT company_id) FROM company_plans WHERE plan_id = $1 AND ended_at IS NULL",
    )
    .bind(plan_id)
    .fetch_one(conn)
    .await
}

/// Deletes the plan with its entitlements and ended memberships. False when there was none.
pub async fn delete(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM plans WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

/// The feature's type, or 404 naming the field that referenced it.
pub async fn feature_type(
    conn: &mut PgConnection,
    field: &str,
    feature_id: &str,
) -> Result<FeatureType, Error> {
    let t: Option<String> = sqlx::query_scalar("SELECT feature_type FROM features WHERE id = $1")
        .bind(feature_id)
        .fetch_optional(conn)
        .await?;
    t.as_deref()
        .and_then(FeatureType::parse)
        .ok_or_else(|| Error::NotFound(format!("{field}: feature {feature_id:?} not found")))
}

pub fn validate_price_behavior(pb: &str) -> Result<(), Error> {
    match pb {
        "pay_in_advance" | "pay_as_you_go" | "overage" | "credit_burndown" | "tier" => Ok(()),
        other => Err(Error::invalid(format!(
            "price_behavior: {other:?} is not one of pay_in_advance, pay_as_you_go, overage, credit_burndown, tier"
        ))),
    }
}

/// How an entitlement is billed (Schematic's names). `pay_as_you_go` bills every unit and
/// `overage` the units above the allocation, to the metered price; neither denies at the
/// allocation, a `soft_limit` (≥ the allocation) does.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Billing {
    #[schema(value_type = Option<String>)]
    pub price_behavior: Option<String>,
    pub monthly_metered_price_id: Option<String>,
    pub yearly_metered_price_id: Option<String>,
    pub soft_limit: Option<i64>,
}

impl Billing {
    /// Whether usage past the allocation is billed rather than denied.
    pub fn is_metered(&self) -> bool {
        is_metered_behavior(self.price_behavior.as_deref())
    }

    /// The rules that need no database: a metered behaviour needs a metered price, and a
    /// soft limit is not below the allocation. Errors name the field.
    pub fn validate(&self, allocation: Option<i64>) -> Result<(), Error> {
        if let Some(pb) = &self.price_behavior {
            validate_price_behavior(pb)?;
        }
        if self.is_metered()
            && self.monthly_metered_price_id.is_none()
            && self.yearly_metered_price_id.is_none()
        {
            return Err(Error::invalid(format!(
                "monthly_metered_price_id: price_behavior {:?} bills usage to a metered Stripe price; give monthly_metered_price_id or yearly_metered_price_id",
                self.price_behavior.as_deref().unwrap_or_default()
            )));
        }
        if let Some(soft) = self.soft_limit {
            if soft < 0 {
                return Err(Error::invalid(format!("soft_limit: {soft} is negative")));
            }
            if let Some(allocation) = allocation.filter(|a| soft < *a) {
                return Err(Error::invalid(format!(
                    "soft_limit: {soft} is below the allocation (value_numeric {allocation})"
                )));
            }
        }
        Ok(())
    }
}

/// `pay_as_you_go` and `overage`: usage past the allocation is billed, not denied.
pub fn is_metered_behavior(price_behavior: Option<&str>) -> bool {
    matches!(price_behavior, Some("pay_as_you_go" | "overage"))
}

/// A `plan_entitlements` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntitlementRow {
    pub id: String,
    pub plan_id: String,
    pub feature_id: String,
    #[sqlx(flatten)]
    pub billing: Billing,
    #[sqlx(flatten)]
    pub values: EntitlementValues,
}

/// Creates an entitlement; one per plan and feature (409 otherwise).
pub async fn insert_entitlement(
    conn: &mut PgConnection,
    plan_id: &str,
    feature_id: &str,
    values: &EntitlementValues,
    billing: &Billing,
) -> Result<String, Error> {
    let id = ids::new_id(ids::prefix::PLAN_ENTITLEMENT);
    let res = sqlx::query(
        "INSERT INTO plan_entitlements (id, plan_id, feature_id, value_type, value_bool,
             value_numeric, value_trait_id, value_credit_id, credit_consumption_rate,
             metric_period, metric_period_month_reset, price_behavior,
             monthly_metered_price_id, yearly_metered_price_id, soft_limit)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&id)
    .bind(plan_id)
    .bind(feature_id)
    .bind_values(values)
    .bind_billing(billing)
    .execute(&mut *conn)
    .await;
    match res {
        Ok(_) => Ok(id),
        Err(e)
            if violated_constraint(&e, sqlstate::UNIQUE_VIOLATION)
                == Some("plan_entitlements_plan_feature") =>
        {
            Err(Error::Conflict(format!(
                "feature_id: plan {plan_id:?} already has an entitlement for feature {feature_id:?}; update that one"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// The entitlement, locked for the rest of the transaction.
pub async fn entitlement_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<EntitlementRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, plan_id, feature_id, price_behavior, monthly_metered_price_id,
                yearly_metered_price_id, soft_limit, value_type, value_bool, value_numeric,
                value_trait_id, value_credit_id, credit_consumption_rate, metric_period,
                metric_period_month_reset
         FROM plan_entitlements WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn update_entitlement(
    conn: &mut PgConnection,
    id: &str,
    values: &EntitlementValues,
    billing: &Billing,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE plan_entitlements SET value_type = $2, value_bool = $3, value_numeric = $4,
             value_trait_id = $5, value_credit_id = $6, credit_consumption_rate = $7,
             metric_period = $8, metric_period_month_reset = $9, price_behavior = $10,
             monthly_metered_price_id = $11, yearly_metered_price_id = $12, soft_limit = $13,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind_values(values)
    .bind_billing(billing)
    .execute(conn)
    .await?;
    Ok(())
}

/// False when there was none.
pub async fn delete_entitlement(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM plan_entitlements WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

/// Which entitlements to read. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct EntitlementFilter {
    pub ids: Vec<String>,
    pub plan_ids: Vec<String>,
    pub feature_ids: Vec<String>,
    /// Matches the feature's or plan's name or key.
    pub q: Option<String>,
    /// At most this many; `None`: all of them.
    pub limit: Option<i64>,
    pub offset: i64,
}

/// An entitlement with its feature's (`f_`) and plan's (`p_`) columns.
#[derive(Debug, sqlx::FromRow)]
pub struct EntitlementDetailRow {
    pub id: String,
    pub plan_id: String,
    pub feature_id: String,
    #[sqlx(flatten)]
    pub billing: Billing,
    #[sqlx(flatten)]
    pub values: EntitlementValues,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub feature: JoinedFeature,
    pub p_key: String,
    pub p_name: String,
    pub p_description: String,
    pub p_plan_type: String,
    pub p_created_at: DateTime<Utc>,
    pub p_updated_at: DateTime<Utc>,
}

/// The entitlements `filter` selects, with their feature and plan, newest first.
pub async fn list_entitlements(
    conn: &mut PgConnection,
    filter: &EntitlementFilter,
) -> Result<Vec<EntitlementDetailRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT e.id, e.plan_id, e.feature_id, e.price_behavior, e.monthly_metered_price_id,
                e.yearly_metered_price_id, e.soft_limit, e.value_type, e.value_bool,
                e.value_numeric, e.value_trait_id, e.value_credit_id, e.credit_consumption_rate,
                e.metric_period, e.metric_period_month_reset, e.created_at, e.updated_at,
                {JOINED_FEATURE_COLUMNS},
                p.key AS p_key, p.name AS p_name, p.description AS p_description,
                p.plan_type AS p_plan_type, p.created_at AS p_created_at,
                p.updated_at AS p_updated_at
         FROM plan_entitlements e
         JOIN features f ON f.id = e.feature_id
         JOIN plans p ON p.id = e.plan_id
         WHERE (cardinality($1::text[]) = 0 OR e.id = ANY($1))
           AND (cardinality($2::text[]) = 0 OR e.plan_id = ANY($2))
           AND (cardinality($3::text[]) = 0 OR e.feature_id = ANY($3))
           AND ($4::text IS NULL OR f.name ILIKE $4 OR f.key ILIKE $4
                OR p.name ILIKE $4 OR p.key ILIKE $4)
         ORDER BY e.created_at DESC, e.id DESC
         LIMIT $5 OFFSET $6"
    ))
    .bind(&filter.ids)
    .bind(&filter.plan_ids)
    .bind(&filter.feature_ids)
    .bind(filter.q.as_deref().map(catalog::contains_pattern))
    .bind(filter.limit)
    .bind(filter.offset)
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_names_are_valid_keys() {
        for (name, key) in [
            ("Pro", "pro"),
            ("Pro Plan (2024)", "pro-plan-2024"),
            ("  Team -- Annual ", "team-annual"),
            ("!!!", "plan"),
        ] {
            assert_eq!(key_from_name(name), key);
            catalog::validate_key("key", &key_from_name(name)).unwrap();
        }
        assert!(key_from_name(&"x".repeat(300)).len() <= 120);
        assert!(validate_plan_type("bundle")
            .unwrap_err()
            .to_string()
            .starts_with("plan_type:"));
        assert!(validate_price_behavior("free")
            .unwrap_err()
            .to_string()
            .starts_with("price_behavior:"));
    }
}
