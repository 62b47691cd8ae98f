//! Company overrides: one live override per company and feature. Every function takes the
//! caller's connection or transaction; the caller owns the boundary.
//!
//! "Live" means `expired_at IS NULL` (the unique index `company_overrides_live`). An override
//! stops applying at its `expiration_date` whether or not `expired_at` has been set yet.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use crate::ids;
use crate::store::catalog::{contains_pattern, JoinedFeature, JOINED_FEATURE_COLUMNS};
use crate::store::values::{BindValues, EntitlementValues};

/// A `company_overrides` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OverrideRow {
    pub id: String,
    pub company_id: String,
    pub feature_id: String,
    #[sqlx(flatten)]
    pub values: EntitlementValues,
    pub expiration_date: Option<DateTime<Utc>>,
    pub note: String,
    pub expired_at: Option<DateTime<Utc>>,
}

impl OverrideRow {
    pub fn has_expired(&self, now: DateTime<Utc>) -> bool {
        self.expired_at.is_some() || self.expiration_date.is_some_and(|d| d <= now)
    }
}

/// What a new override holds, already validated.
#[derive(Debug, Clone)]
pub struct NewOverride {
    pub company_id: String,
    pub feature_id: String,
    pub values: EntitlementValues,
    pub expiration_date: Option<DateTime<Utc>>,
    pub note: String,
}

/// 404 naming `field` unless the company belongs to the environment.
pub async fn require_company(
    conn: &mut PgConnection,
    env_id: &str,
    field: &str,
    company_id: &str,
) -> Result<(), Error> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM companies WHERE environment_id = $1 AND id = $2")
            .bind(env_id)
            .bind(company_id)
            .fetch_optional(conn)
            .await?;
    found
        .map(|_| ())
        .ok_or_else(|| Error::NotFound(format!("{field}: company {company_id:?} not found")))
}

/// Makes room for a new live override of (company, feature): a live one that has already
/// lapsed is marked expired; one still in force is a 409 naming it.
pub async fn retire_lapsed(
    conn: &mut PgConnection,
    company_id: &str,
    feature_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let live: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, expiration_date FROM company_overrides
         WHERE company_id = $1 AND feature_id = $2 AND expired_at IS NULL FOR UPDATE",
    )
    .bind(company_id)
    .bind(feature_id)
    .fetch_optional(&mut *conn)
    .await?;
    match live {
        None => Ok(()),
        Some((id, Some(expires))) if expires <= now => {
            sqlx::query(
                "UPDATE company_overrides SET expired_at = $2, updated_at = $2 WHERE id = $1",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            tracing::info!(override_id = %id, "lapsed override marked expired");
            Ok(())
        }
        Some((id, _)) => Err(live_conflict(&id)),
    }
}

fn live_conflict(id: &str) -> Error {
    Error::Conflict(format!(
        "feature_id: the company already has an override for this feature ({id}); update or delete it"
    ))
}

pub async fn insert(
    conn: &mut PgConnection,
    env_id: &str,
    new: &NewOverride,
) -> Result<String, Error> {
    let id = ids::new_id(ids::prefix::OVERRIDE);
    let v = &new.values;
    let res = sqlx::query(
        "INSERT INTO company_overrides (id, environment_id, company_id, feature_id, value_type,
             value_bool, value_numeric, value_trait_id, value_credit_id, credit_consumption_rate,
             metric_period, metric_period_month_reset, expiration_date, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&id)
    .bind(env_id)
    .bind(&new.company_id)
    .bind(&new.feature_id)
    .bind_values(v)
    .bind(new.expiration_date)
    .bind(&new.note)
    .execute(&mut *conn)
    .await;
    match res {
        Ok(_) => Ok(id),
        // A concurrent create won the race (the transaction is aborted now: no more queries).
        Err(e)
            if violated_constraint(&e, sqlstate::UNIQUE_VIOLATION)
                == Some("company_overrides_live") =>
        {
            Err(Error::Conflict(
                "feature_id: the company already has an override for this feature (created concurrently); update or delete it".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// The override, if it belongs to the environment, locked for the rest of the transaction.
pub async fn get_for_update(
    conn: &mut PgConnection,
    env_id: &str,
    id: &str,
) -> Result<Option<OverrideRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, company_id, feature_id, value_type, value_bool, value_numeric, value_trait_id,
                value_credit_id, credit_consumption_rate, metric_period, metric_period_month_reset,
                expiration_date, note, expired_at
         FROM company_overrides WHERE environment_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    values: &EntitlementValues,
    expiration_date: Option<DateTime<Utc>>,
    note: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE company_overrides SET value_type = $2, value_bool = $3, value_numeric = $4,
             value_trait_id = $5, value_credit_id = $6, credit_consumption_rate = $7,
             metric_period = $8, metric_period_month_reset = $9, expiration_date = $10,
             note = $11, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind_values(values)
    .bind(expiration_date)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the override; returns its company id, or `None` when the environment has no such
/// override.
pub async fn delete(
    conn: &mut PgConnection,
    env_id: &str,
    id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM company_overrides WHERE environment_id = $1 AND id = $2 RETURNING company_id",
    )
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Which overrides of an environment to read. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct OverrideFilter {
    pub ids: Vec<String>,
    pub company_ids: Vec<String>,
    pub feature_ids: Vec<String>,
    /// Leave out overrides that are marked expired or past their `expiration_date`.
    pub without_expired: bool,
    /// Matches the feature's name or key, or the note.
    pub q: Option<String>,
    /// At most this many; `None`: all of them.
    pub limit: Option<i64>,
    pub offset: i64,
}

/// An override with its feature's columns (`f_`).
#[derive(Debug, sqlx::FromRow)]
pub struct OverrideDetailRow {
    pub id: String,
    pub company_id: String,
    pub feature_id: String,
    #[sqlx(flatten)]
    pub values: EntitlementValues,
    pub expiration_date: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub note: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub feature: JoinedFeature,
}

/// The environment's overrides `filter` selects, with their feature, newest first; `now`
/// decides which have expired.
pub async fn list(
    conn: &mut PgConnection,
    env_id: &str,
    filter: &OverrideFilter,
    now: DateTime<Utc>,
) -> Result<Vec<OverrideDetailRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT o.id, o.company_id, o.feature_id, o.value_type, o.value_bool, o.value_numeric,
                o.value_trait_id, o.value_credit_id, o.credit_consumption_rate, o.metric_period,
                o.metric_period_month_reset, o.expiration_date, o.expired_at, o.note,
                o.created_at, o.updated_at,
                {JOINED_FEATURE_COLUMNS}
         FROM company_overrides o JOIN features f ON f.id = o.feature_id
         WHERE o.environment_id = $1
           AND (cardinality($2::text[]) = 0 OR o.id = ANY($2))
           AND (cardinality($3::text[]) = 0 OR o.company_id = ANY($3))
           AND (cardinality($4::text[]) = 0 OR o.feature_id = ANY($4))
           AND (NOT $5 OR (o.expired_at IS NULL
                AND (o.expiration_date IS NULL OR o.expiration_date > $6)))
           AND ($7::text IS NULL OR f.name ILIKE $7 OR f.key ILIKE $7 OR o.note ILIKE $7)
         ORDER BY o.created_at DESC, o.id DESC
         LIMIT $8 OFFSET $9"
    ))
    .bind(env_id)
    .bind(&filter.ids)
    .bind(&filter.company_ids)
    .bind(&filter.feature_ids)
    .bind(filter.without_expired)
    .bind(now)
    .bind(filter.q.as_deref().map(contains_pattern))
    .bind(filter.limit)
    .bind(filter.offset)
    .fetch_all(conn)
    .await
}

/// An override the expiry job just expired.
#[derive(Debug, sqlx::FromRow)]
pub struct Expired {
    pub id: String,
    pub environment_id: String,
    pub company_id: String,
    pub feature_id: String,
    pub expiration_date: DateTime<Utc>,
}

/// Marks every override whose expiration date has passed at `now` as expired, and records
/// each expiry in `override_expiries`.
pub async fn expire_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<Expired>, Error> {
    let expired: Vec<Expired> = sqlx::query_as(
        "UPDATE company_overrides SET expired_at = $1, updated_at = now()
         WHERE expired_at IS NULL AND expiration_date <= $1
         RETURNING id, environment_id, company_id, feature_id, expiration_date",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<&str> = expired.iter().map(|e| e.id.as_str()).collect();
    let envs: Vec<&str> = expired.iter().map(|e| e.environment_id.as_str()).collect();
    let companies: Vec<&str> = expired.iter().map(|e| e.company_id.as_str()).collect();
    let features: Vec<&str> = expired.iter().map(|e| e.feature_id.as_str()).collect();
    let dates: Vec<DateTime<Utc>> = expired.iter().map(|e| e.expiration_date).collect();
    sqlx::query(
        "INSERT INTO override_expiries (override_id, environment_id, company_id, feature_id, expiration_date, expired_at)
         SELECT *, $6 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&envs)
    .bind(&companies)
    .bind(&features)
    .bind(&dates)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(expired)
}
