//! Stripe Billing Meters as Stripe last described them (`billing_meters`), and the questions
//! usage billing asks of them: which meter a metered price bills.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::stripe::{written, Written};
use super::Error;

/// A meter as Stripe last described it.
#[derive(Debug, Clone)]
pub struct MeterFields {
    pub id: String,
    pub display_name: String,
    pub event_name: String,
    pub customer_payload_key: String,
    pub value_payload_key: String,
    pub status: String,
    pub aggregation_formula: String,
    pub livemode: bool,
    pub stripe_created: Option<DateTime<Utc>>,
}

pub async fn upsert_meter(
    conn: &mut PgConnection,
    env_id: &str,
    m: &MeterFields,
) -> Result<Written, Error> {
    if !matches!(m.status.as_str(), "active" | "inactive") {
        return Err(Error::invalid(format!(
            "status: meter {} has unknown status {:?}",
            m.id, m.status
        )));
    }
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO billing_meters (environment_id, id, display_name, event_name,
             customer_payload_key, value_payload_key, status, aggregation_formula, livemode,
             stripe_created)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (environment_id, id) DO UPDATE SET
             display_name = EXCLUDED.display_name, event_name = EXCLUDED.event_name,
             customer_payload_key = EXCLUDED.customer_payload_key,
             value_payload_key = EXCLUDED.value_payload_key, status = EXCLUDED.status,
             aggregation_formula = EXCLUDED.aggregation_formula, livemode = EXCLUDED.livemode,
             stripe_created = COALESCE(EXCLUDED.stripe_created, billing_meters.stripe_created),
             updated_at = now()
         WHERE (billing_meters.display_name, billing_meters.event_name,
                billing_meters.customer_payload_key, billing_meters.value_payload_key,
                billing_meters.status, billing_meters.aggregation_formula, billing_meters.livemode)
               IS DISTINCT FROM
               (EXCLUDED.display_name, EXCLUDED.event_name, EXCLUDED.customer_payload_key,
                EXCLUDED.value_payload_key, EXCLUDED.status, EXCLUDED.aggregation_formula,
                EXCLUDED.livemode)
         RETURNING (xmax = 0)",
    )
    .bind(env_id)
    .bind(&m.id)
    .bind(&m.display_name)
    .bind(&m.event_name)
    .bind(&m.customer_payload_key)
    .bind(&m.value_payload_key)
    .bind(&m.status)
    .bind(&m.aggregation_formula)
    .bind(m.livemode)
    .bind(m.stripe_created)
    .fetch_optional(conn)
    .await?;
    Ok(written(inserted))
}

/// `GET /billing/meters` rows.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MeterRow {
    pub id: String,
    pub display_name: String,
    pub event_name: String,
    /// `customer_mapping.event_payload_key`.
    pub customer_payload_key: String,
    /// `value_settings.event_payload_key`.
    pub value_payload_key: String,
    /// `active` or `inactive`.
    pub status: String,
    /// `default_aggregation.formula`.
    pub aggregation_formula: String,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The environment's meters, newest first; `status` filters when given.
pub async fn list(
    conn: &mut PgConnection,
    env_id: &str,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<MeterRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, display_name, event_name, customer_payload_key, value_payload_key, status,
                aggregation_formula, livemode, created_at, updated_at
         FROM billing_meters
         WHERE environment_id = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC, id DESC
         LIMIT $3 OFFSET $4",
    )
    .bind(env_id)
    .bind(status)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// Checks that `price_id` is a price of the environment that bills a meter; an error naming
/// `field` otherwise.
pub async fn validate_metered_price(
    conn: &mut PgConnection,
    env_id: &str,
    field: &str,
    price_id: &str,
) -> Result<(), Error> {
    let found: Option<(Option<String>, bool)> = sqlx::query_as(
        "SELECT p.meter_id, m.id IS NOT NULL
         FROM billing_prices p
         LEFT JOIN billing_meters m ON m.environment_id = p.environment_id AND m.id = p.meter_id
         WHERE p.environment_id = $1 AND p.id = $2 AND p.deleted_at IS NULL",
    )
    .bind(env_id)
    .bind(price_id)
    .fetch_optional(conn)
    .await?;
    match found {
        None => Err(Error::invalid(format!(
            "{field}: Stripe price {price_id:?} is not known in this environment (reconcile first)"
        ))),
        Some((None, _)) => Err(Error::invalid(format!(
            "{field}: Stripe price {price_id:?} is not on a meter (its recurring.meter is not set)"
        ))),
        Some((Some(meter), false)) => Err(Error::invalid(format!(
            "{field}: Stripe price {price_id:?} bills meter {meter:?}, which is not known in this environment (reconcile first)"
        ))),
        Some((Some(_), true)) => Ok(()),
    }
}
