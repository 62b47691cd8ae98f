//! Plan credit grants (`bcpg_…`): the credits a plan includes each period, at most one per
//! (plan, credit type). Issuing them to companies is `credits::plan_grants_due` and the
//! `grant_credits` job. Every function takes the caller's connection or transaction; the
//! caller owns the boundary.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use crate::ids;

/// A `plan_credit_grants` row, with its plan's and credit type's names.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlanGrantRow {
    pub id: String,
    pub plan_id: String,
    pub plan_name: String,
    pub credit_id: String,
    pub credit_name: String,
    pub amount_micros: i64,
    pub reset_cadence: String,
    pub reset_start: String,
    pub expiry: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a [`PlanGrantRow`].
macro_rules! plan_grant_select {
    () => {
        "SELECT g.id, g.plan_id, p.name AS plan_name, g.credit_id,
            t.name AS credit_name, g.amount_micros, g.reset_cadence, g.reset_start, g.expiry,
            g.created_at, g.updated_at
         FROM plan_credit_grants g JOIN plans p ON p.id = g.plan_id
         JOIN credit_types t ON t.id = g.credit_id"
    };
}

/// A new plan grant, already validated.
#[derive(Debug, Clone)]
pub struct NewPlanGrant {
    pub plan_id: String,
    pub credit_id: String,
    pub amount_micros: i64,
    pub reset_cadence: String,
    pub reset_start: String,
    pub expiry: String,
}

/// The fields an update sets, already validated; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct PlanGrantUpdate {
    pub amount_micros: Option<i64>,
    pub reset_cadence: Option<String>,
    pub reset_start: Option<String>,
    pub expiry: Option<String>,
}

/// Plan grants, newest first: only those of `plan_ids` when any are given, only those of
/// `credit_id` when given.
pub async fn list_plan_grants(
    conn: &mut PgConnection,
    plan_ids: &[String],
    credit_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<PlanGrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        plan_grant_select!(),
        " WHERE (cardinality($1::text[]) = 0 OR g.plan_id = ANY($1))
           AND ($2::text IS NULL OR g.credit_id = $2)
         ORDER BY g.created_at DESC, g.id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(plan_ids)
    .bind(credit_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The plan grant, if there is one with this id.
pub async fn plan_grant(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<PlanGrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(plan_grant_select!(), " WHERE g.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Inserts a plan grant; returns its new id. A second grant of one credit type by one plan
/// is a conflict; a plan or credit type that does not exist is `NotFound` naming the field.
pub async fn insert_plan_grant(conn: &mut PgConnection, g: &NewPlanGrant) -> Result<String, Error> {
    let id = ids::new_id("bcpg");
    sqlx::query(
        "INSERT INTO plan_credit_grants (id, plan_id, credit_id, amount_micros, reset_cadence, reset_start, expiry)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&g.plan_id)
    .bind(&g.credit_id)
    .bind(g.amount_micros)
    .bind(&g.reset_cadence)
    .bind(&g.reset_start)
    .bind(&g.expiry)
    .execute(conn)
    .await
    .map_err(|e| plan_grant_error(e, g))?;
    Ok(id)
}

/// Constraint violations of a plan grant insert, in terms of its fields.
fn plan_grant_error(err: sqlx::Error, g: &NewPlanGrant) -> Error {
    if violated_constraint(&err, sqlstate::UNIQUE_VIOLATION)
        == Some("plan_credit_grants_plan_credit")
    {
        return Error::Conflict(format!(
            "plan {:?} already grants credit {:?}; update that plan grant",
            g.plan_id, g.credit_id
        ));
    }
    match violated_constraint(&err, sqlstate::FOREIGN_KEY_VIOLATION) {
        Some("plan_credit_grants_plan_id_fkey") => {
            Error::NotFound(format!("plan_id: plan {:?} not found", g.plan_id))
        }
        Some("plan_credit_grants_credit_id_fkey") => Error::NotFound(format!(
            "credit_id: credit type {:?} not found",
            g.credit_id
        )),
        _ => err.into(),
    }
}

/// Sets the fields given; `false` when there is no such plan grant.
pub async fn update_plan_grant(
    conn: &mut PgConnection,
    id: &str,
    u: &PlanGrantUpdate,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE plan_credit_grants SET amount_micros = COALESCE($2, amount_micros),
             reset_cadence = COALESCE($3, reset_cadence), reset_start = COALESCE($4, reset_start),
             expiry = COALESCE($5, expiry), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(u.amount_micros)
    .bind(&u.reset_cadence)
    .bind(&u.reset_start)
    .bind(&u.expiry)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Deletes the plan grant (grants issued from it keep their credits and lose the
/// reference); `false` when there is none.
pub async fn delete_plan_grant(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("DELETE FROM plan_credit_grants WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n > 0)
}
