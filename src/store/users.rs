//! Users: upsert by keys, with company memberships.

use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::companies::{self, UpsertCompany};
use super::keys::{self, Entity};
use crate::error::AppError;
use crate::ids;

#[derive(Debug, Default, Clone)]
pub struct UpsertUser {
    pub keys: Vec<(String, String)>,
    pub name: Option<String>,
    pub traits: Option<Map<String, Value>>,
    /// Companies by keys; created when the keys match none.
    pub company_keys: Vec<Vec<(String, String)>>,
    /// Companies by id; each must exist in the environment.
    pub company_ids: Vec<String>,
    pub update_only: bool,
}

/// What an upsert did: the user, and every company it created or joined.
pub struct Upserted {
    pub id: String,
    pub created: bool,
    pub companies: Vec<String>,
}

pub async fn upsert(
    conn: &mut PgConnection,
    env_id: &str,
    req: &UpsertUser,
) -> Result<Upserted, AppError> {
    keys::validate("keys", &req.keys)?;
    let mut companies = Vec::new();
    for (i, ck) in req.company_keys.iter().enumerate() {
        keys::validate(&format!("company[{i}]"), ck)?;
        let (company_id, _) = companies::upsert(
            conn,
            env_id,
            &UpsertCompany {
                keys: ck.clone(),
                ..Default::default()
            },
        )
        .await?;
        companies.push(company_id);
    }
    for (i, company_id) in req.company_ids.iter().enumerate() {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM companies WHERE environment_id = $1 AND id = $2)",
        )
        .bind(env_id)
        .bind(company_id)
        .fetch_one(&mut *conn)
        .await?;
        if !exists {
            return Err(AppError::NotFound(format!(
                "company_ids[{i}]: company {company_id:?} not found"
            )));
        }
        companies.push(company_id.clone());
    }

    keys::lock(conn, Entity::User, env_id, &req.keys).await?;
    let (id, created) = match keys::find(conn, Entity::User, env_id, &req.keys).await? {
        Some(id) => (id, false),
        None if req.update_only => {
            return Err(AppError::NotFound(
                "no user has these keys (update_only is set)".into(),
            ))
        }
        None => {
            let id = ids::new_id(ids::prefix::USER);
            sqlx::query("INSERT INTO users (id, environment_id) VALUES ($1, $2)")
                .bind(&id)
                .bind(env_id)
                .execute(&mut *conn)
                .await?;
            (id, true)
        }
    };
    keys::put(conn, Entity::User, env_id, &id, &req.keys).await?;
    if req.name.is_some() || req.traits.is_some() {
        sqlx::query(
            "UPDATE users SET name = COALESCE($2, name),
                 traits = jsonb_strip_nulls(traits || $3), updated_at = now()
             WHERE id = $1",
        )
        .bind(&id)
        .bind(&req.name)
        .bind(sqlx::types::Json(req.traits.clone().unwrap_or_default()))
        .execute(&mut *conn)
        .await?;
    }
    for company_id in &companies {
        sqlx::query(
            "INSERT INTO company_memberships (environment_id, company_id, user_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(env_id)
        .bind(company_id)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    }
    companies.sort();
    companies.dedup();
    Ok(Upserted {
        id,
        created,
        companies,
    })
}
