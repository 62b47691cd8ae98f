//! Credit bundles (`bcbn_…`): purchasable packs of one credit type. Every function takes the
//! caller's connection or transaction; the caller owns the boundary.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use crate::ids;

/// A `credit_bundles` row, with its credit type's name and whether any grant came from it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BundleRow {
    pub id: String,
    pub credit_id: String,
    pub credit_name: String,
    pub name: String,
    pub quantity_micros: i64,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub expiry_days: Option<i32>,
    pub status: String,
    pub has_grants: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a [`BundleRow`].
macro_rules! bundle_select {
    () => {
        "SELECT b.id, b.credit_id, t.name AS credit_name, b.name, b.quantity_micros,
            b.price_cents, b.currency, b.expiry_days, b.status,
            EXISTS (SELECT 1 FROM credit_grants g WHERE g.bundle_id = b.id) AS has_grants,
            b.created_at, b.updated_at
         FROM credit_bundles b JOIN credit_types t ON t.id = b.credit_id"
    };
}

/// A new bundle, already validated. `currency` is stored lower-case; `status` defaults to
/// `active`.
#[derive(Debug, Clone)]
pub struct NewBundle {
    pub credit_id: String,
    pub name: String,
    pub quantity_micros: i64,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub expiry_days: Option<i32>,
    pub status: Option<String>,
}

/// The fields an update sets, already validated; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct BundleUpdate {
    pub name: Option<String>,
    pub quantity_micros: Option<i64>,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub expiry_days: Option<i32>,
    pub status: Option<String>,
}

/// What a grant from a bundle takes from it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BundleTerms {
    pub credit_id: String,
    pub quantity_micros: i64,
    /// Credits from the bundle expire this many days after the grant; `None`: never.
    pub expiry_days: Option<i32>,
}

/// Bundles, newest first; only those of `credit_id` when given.
pub async fn list_bundles(
    conn: &mut PgConnection,
    credit_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<BundleRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        bundle_select!(),
        " WHERE ($1::text IS NULL OR b.credit_id = $1)
         ORDER BY b.created_at DESC, b.id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(credit_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The bundle, if there is one with this id.
pub async fn bundle(conn: &mut PgConnection, id: &str) -> Result<Option<BundleRow>, sqlx::Error> {
    sqlx::query_as(concat!(bundle_select!(), " WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The bundle's credit type, quantity and expiry, if there is one with this id.
pub async fn bundle_terms(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<BundleTerms>, sqlx::Error> {
    sqlx::query_as(
        "SELECT credit_id, quantity_micros, expiry_days FROM credit_bundles WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Inserts a bundle; returns its new id. A credit type that does not exist is `NotFound`
/// naming `credit_id`.
pub async fn insert_bundle(conn: &mut PgConnection, b: &NewBundle) -> Result<String, Error> {
    let id = ids::new_id("bcbn");
    sqlx::query(
        "INSERT INTO credit_bundles (id, credit_id, name, quantity_micros, price_cents, currency, expiry_days, status)
         VALUES ($1, $2, $3, $4, $5, lower($6), $7, COALESCE($8, 'active'))",
    )
    .bind(&id)
    .bind(&b.credit_id)
    .bind(&b.name)
    .bind(b.quantity_micros)
    .bind(b.price_cents)
    .bind(&b.currency)
    .bind(b.expiry_days)
    .bind(&b.status)
    .execute(conn)
    .await
    .map_err(|e| match violated_constraint(&e, sqlstate::FOREIGN_KEY_VIOLATION) {
        Some("credit_bundles_credit_id_fkey") => Error::NotFound(format!(
            "credit_id: credit type {:?} not found",
            b.credit_id
        )),
        _ => e.into(),
    })?;
    Ok(id)
}

/// Sets the fields given; `false` when there is no such bundle.
pub async fn update_bundle(
    conn: &mut PgConnection,
    id: &str,
    u: &BundleUpdate,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE credit_bundles SET name = COALESCE($2, name), quantity_micros = COALESCE($3, quantity_micros),
             price_cents = COALESCE($4, price_cents), currency = COALESCE(lower($5), currency),
             expiry_days = COALESCE($6, expiry_days), status = COALESCE($7, status), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&u.name)
    .bind(u.quantity_micros)
    .bind(u.price_cents)
    .bind(&u.currency)
    .bind(u.expiry_days)
    .bind(&u.status)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Deletes the bundle (grants from it keep their credits and lose the reference); `false`
/// when there is none.
pub async fn delete_bundle(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("DELETE FROM credit_bundles WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n > 0)
}
