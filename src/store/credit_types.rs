//! Credit types: the catalog's kinds of credit (`bcrd_…`), shared by every environment.
//! Every function takes the caller's connection or transaction; the caller owns the boundary.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use crate::ids;

/// A `credit_types` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CreditTypeRow {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a [`CreditTypeRow`].
macro_rules! credit_type_select {
    () => {
        "SELECT id, key, name, description, created_at, updated_at FROM credit_types"
    };
}

/// Credit types, newest first: only `ids` when any are given, only names containing
/// `name_part` (case-insensitive) when given.
pub async fn list_credit_types(
    conn: &mut PgConnection,
    ids: &[String],
    name_part: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<CreditTypeRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        credit_type_select!(),
        " WHERE (cardinality($1::text[]) = 0 OR id = ANY($1))
           AND ($2::text IS NULL OR name ILIKE '%' || $2 || '%')
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(ids)
    .bind(name_part)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The credit type, if there is one with this id.
pub async fn credit_type(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<CreditTypeRow>, sqlx::Error> {
    sqlx::query_as(concat!(credit_type_select!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// `NotFound` naming `field` unless the credit type exists.
pub async fn require_credit_type(
    conn: &mut PgConnection,
    field: &str,
    id: &str,
) -> Result<(), Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credit_types WHERE id = $1)")
            .bind(id)
            .fetch_one(conn)
            .await?;
    if exists {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "{field}: credit type {id:?} not found"
        )))
    }
}

/// Inserts a credit type (fields already validated); returns its new id. A taken key is a
/// conflict naming it.
pub async fn insert_credit_type(
    conn: &mut PgConnection,
    key: &str,
    name: &str,
    description: &str,
) -> Result<String, Error> {
    let id = ids::new_id("bcrd");
    sqlx::query("INSERT INTO credit_types (id, key, name, description) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(key)
        .bind(name)
        .bind(description)
        .execute(conn)
        .await
        .map_err(
            |e| match violated_constraint(&e, sqlstate::UNIQUE_VIOLATION) {
                Some("credit_types_key_key") => Error::Conflict(format!(
                    "key: a credit type with key {key:?} already exists"
                )),
                _ => e.into(),
            },
        )?;
    Ok(id)
}

/// Sets the name and description given (`None` keeps the current value); `false` when there
/// is no such credit type.
pub async fn update_credit_type(
    conn: &mut PgConnection,
    id: &str,
    name: Option<&str>,
    description: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE credit_types SET name = COALESCE($2, name), description = COALESCE($3, description),
             updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(name)
    .bind(description)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Deletes the credit type; `false` when there is none. One still referenced (by
/// entitlements, overrides, bundles, plan grants, grants or the ledger: every such foreign
/// key restricts) is a conflict.
pub async fn delete_credit_type(conn: &mut PgConnection, id: &str) -> Result<bool, Error> {
    let res = sqlx::query("DELETE FROM credit_types WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await;
    match res {
        Ok(r) => Ok(r.rows_affected() > 0),
        Err(e) if violated_constraint(&e, sqlstate::FOREIGN_KEY_VIOLATION).is_some() => {
            Err(Error::Conflict(format!(
                "credit type {id:?} is in use by entitlements, bundles, plan grants or grants; remove those first"
            )))
        }
        Err(e) => Err(e.into()),
    }
}
