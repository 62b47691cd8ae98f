//! Users: upsert by keys, with company memberships.

use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::companies::{self, UpsertCompany};
use super::keys::{self, Entity};
use super::Error;

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
) -> Result<Upserted, Error> {
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
            return Err(Error::NotFound(format!(
                "company_ids[{i}]: company {company_id:?} not found"
            )));
        }
        companies.push(company_id.clone());
    }

    let (id, created) = keys::upsert(
        conn,
        Entity::User,
        env_id,
        &req.keys,
        req.name.as_deref(),
        req.traits.as_ref(),
        req.update_only,
    )
    .await?;
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
