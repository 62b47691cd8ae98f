//! Companies: upsert by keys, traits, plan memberships, delete, and the reads behind the
//! company views (list, details). Every function takes the caller's connection or
//! transaction; the caller owns the boundary.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::catalog::contains_pattern;
use super::keys::{self, Entity};
use super::Error;
use crate::ids;

/// What `POST /companies` (and identify/track) asks for.
#[derive(Debug, Default, Clone)]
pub struct UpsertCompany {
    pub keys: Vec<(String, String)>,
    pub name: Option<String>,
    pub traits: Option<Map<String, Value>>,
    pub base_plan_id: Option<String>,
    pub add_on_ids: Option<Vec<String>>,
    /// Fail with 404 instead of creating.
    pub update_only: bool,
}

keys::upsert_of!(UpsertCompany);

/// Creates or updates the company `keys` identify. Returns its id and whether it was created.
pub async fn upsert(
    conn: &mut PgConnection,
    env_id: &str,
    req: &UpsertCompany,
) -> Result<(String, bool), Error> {
    let done = keys::upsert(conn, Entity::Company, env_id, &req.into()).await?;
    let (id, created) = (done.id, done.created);
    if let Some(plan_id) = &req.base_plan_id {
        set_base_plan(conn, env_id, &id, plan_id).await?;
    }
    if let Some(add_ons) = &req.add_on_ids {
        set_add_ons(conn, env_id, &id, add_ons).await?;
    }
    Ok((id, created))
}

/// The plan's type, or 404 naming the field that referenced it.
pub async fn plan_type(
    conn: &mut PgConnection,
    field: &str,
    plan_id: &str,
) -> Result<String, Error> {
    sqlx::query_scalar("SELECT plan_type FROM plans WHERE id = $1")
        .bind(plan_id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{field}: plan {plan_id:?} not found")))
}

/// Makes `plan_id` the company's base plan (ending a different current one).
pub async fn set_base_plan(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    plan_id: &str,
) -> Result<(), Error> {
    if plan_type(conn, "base_plan_id", plan_id).await? != "plan" {
        return Err(Error::invalid(format!(
            "base_plan_id: {plan_id:?} is an add-on; use add_on_ids"
        )));
    }
    let current: Option<String> = sqlx::query_scalar(
        "SELECT plan_id FROM company_plans WHERE company_id = $1 AND is_base AND ended_at IS NULL",
    )
    .bind(company_id)
    .fetch_optional(&mut *conn)
    .await?;
    if current.as_deref() == Some(plan_id) {
        return Ok(());
    }
    sqlx::query(
        "UPDATE company_plans SET ended_at = now(), updated_at = now()
         WHERE company_id = $1 AND is_base AND ended_at IS NULL",
    )
    .bind(company_id)
    .execute(&mut *conn)
    .await?;
    insert_manual(conn, env_id, company_id, plan_id, true).await
}

/// Makes the company's manual add-ons exactly `plan_ids`.
pub async fn set_add_ons(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    plan_ids: &[String],
) -> Result<(), Error> {
    for (i, plan_id) in plan_ids.iter().enumerate() {
        let field = format!("add_on_ids[{i}]");
        if plan_type(conn, &field, plan_id).await? != "add_on" {
            return Err(Error::invalid(format!(
                "{field}: {plan_id:?} is a base plan; use base_plan_id"
            )));
        }
    }
    sqlx::query(
        "UPDATE company_plans SET ended_at = now(), updated_at = now()
         WHERE company_id = $1 AND NOT is_base AND source = 'manual' AND ended_at IS NULL
           AND plan_id <> ALL($2)",
    )
    .bind(company_id)
    .bind(plan_ids)
    .execute(&mut *conn)
    .await?;
    for plan_id in plan_ids {
        insert_manual(conn, env_id, company_id, plan_id, false).await?;
    }
    Ok(())
}

/// A manual membership of `plan_id`, unless the company is a current member already.
async fn insert_manual(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    plan_id: &str,
    is_base: bool,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO company_plans (id, environment_id, company_id, plan_id, is_base, source)
         VALUES ($1, $2, $3, $4, $5, 'manual')
         ON CONFLICT (company_id, plan_id) WHERE ended_at IS NULL DO NOTHING",
    )
    .bind(ids::new_id(ids::prefix::COMPANY_PLAN))
    .bind(env_id)
    .bind(company_id)
    .bind(plan_id)
    .bind(is_base)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets or increments one trait. `incr` on a non-numeric trait is a 400.
pub async fn update_trait(
    conn: &mut PgConnection,
    company_id: &str,
    name: &str,
    set: Option<&Value>,
    incr: Option<f64>,
) -> Result<(), Error> {
    let res = match (set, incr) {
        (Some(v), None) => {
            sqlx::query(
                "UPDATE companies SET traits = jsonb_set(traits, ARRAY[$2], $3), updated_at = now()
                 WHERE id = $1",
            )
            .bind(company_id)
            .bind(name)
            .bind(sqlx::types::Json(v))
            .execute(&mut *conn)
            .await
        }
        (None, Some(by)) => {
            sqlx::query(
                "UPDATE companies SET traits = jsonb_set(traits, ARRAY[$2],
                     to_jsonb(COALESCE((traits ->> $2)::numeric, 0) + $3::numeric)), updated_at = now()
                 WHERE id = $1",
            )
            .bind(company_id)
            .bind(name)
            .bind(by)
            .execute(&mut *conn)
            .await
        }
        _ => return Err(Error::invalid("send exactly one of set or incr")),
    };
    match res {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("22P02") => Err(
            Error::invalid(format!("incr: trait {name:?} is not a number")),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Which companies of an environment to list. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct CompanyFilter {
    pub ids: Vec<String>,
    pub plan_ids: Vec<String>,
    /// Matches the name or any key value.
    pub q: Option<String>,
    pub without_plan: bool,
}

/// The ids of the environment's companies `filter` selects, newest first.
pub async fn list_ids(
    conn: &mut PgConnection,
    env_id: &str,
    filter: &CompanyFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let q = filter.q.as_deref().map(contains_pattern);
    sqlx::query_scalar(
        "SELECT c.id FROM companies c
         WHERE c.environment_id = $1
           AND (cardinality($2::text[]) = 0 OR c.id = ANY($2))
           AND (cardinality($3::text[]) = 0 OR EXISTS (SELECT 1 FROM company_plans cp
                WHERE cp.company_id = c.id AND cp.ended_at IS NULL AND cp.plan_id = ANY($3)))
           AND ($4::text IS NULL OR c.name ILIKE $4 OR EXISTS (SELECT 1 FROM company_keys k
                WHERE k.company_id = c.id AND k.value ILIKE $4))
           AND (NOT $5 OR NOT EXISTS (SELECT 1 FROM company_plans cp
                WHERE cp.company_id = c.id AND cp.ended_at IS NULL))
         ORDER BY c.created_at DESC, c.id DESC LIMIT $6 OFFSET $7",
    )
    .bind(env_id)
    .bind(&filter.ids)
    .bind(&filter.plan_ids)
    .bind(&q)
    .bind(filter.without_plan)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// A current plan membership of a company, with the plan's names.
#[derive(Debug, sqlx::FromRow)]
pub struct CompanyPlanRow {
    pub company_id: String,
    pub plan_id: String,
    pub is_base: bool,
    pub source: String,
    pub quantity: i64,
    pub started_at: DateTime<Utc>,
    pub name: String,
    pub description: String,
    pub billing_product_id: Option<String>,
}

/// What a full view of some companies is made of.
#[derive(Debug)]
pub struct DetailsRows {
    /// The companies found, with their keys.
    pub found: keys::Found,
    /// Their current plans, oldest first.
    pub plans: Vec<CompanyPlanRow>,
    /// Members per company; companies without members are absent.
    pub user_counts: HashMap<String, i64>,
}

/// The rows, keys, current plans and member counts of the environment's companies `ids`.
pub async fn details_rows(
    conn: &mut PgConnection,
    env_id: &str,
    ids: &[String],
) -> Result<DetailsRows, sqlx::Error> {
    let found = keys::rows_and_keys(conn, Entity::Company, env_id, ids).await?;
    let plans: Vec<CompanyPlanRow> = sqlx::query_as(
        "SELECT cp.company_id, cp.plan_id, cp.is_base, cp.source, cp.quantity, cp.started_at,
                p.name, p.description, p.billing_product_id
         FROM company_plans cp JOIN plans p ON p.id = cp.plan_id
         WHERE cp.company_id = ANY($1) AND cp.ended_at IS NULL ORDER BY cp.started_at",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let user_counts: HashMap<String, i64> = sqlx::query_as(
        "SELECT company_id, count(*) FROM company_memberships WHERE company_id = ANY($1) GROUP BY 1",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    Ok(DetailsRows {
        found,
        plans,
        user_counts,
    })
}

/// Deletes the environment's company `id` (what refers to it cascades). False when there was
/// none.
pub async fn delete(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM companies WHERE environment_id = $1 AND id = $2")
            .bind(env_id)
            .bind(id)
            .execute(conn)
            .await?
            .rows_affected()
            > 0,
    )
}
