//! Users: upsert by keys, with company memberships; delete; the reads behind the user views.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::catalog::contains_pattern;
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

keys::upsert_of!(UpsertUser);

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

    let done = keys::upsert(conn, Entity::User, env_id, &req.into()).await?;
    let (id, created) = (done.id, done.created);
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

/// Which users of an environment to list. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct UserFilter {
    pub ids: Vec<String>,
    pub company_id: Option<String>,
    /// Matches the name or any key value.
    pub q: Option<String>,
}

/// The ids of the environment's users `filter` selects, newest first.
pub async fn list_ids(
    conn: &mut PgConnection,
    env_id: &str,
    filter: &UserFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let q = filter.q.as_deref().map(contains_pattern);
    sqlx::query_scalar(
        "SELECT u.id FROM users u
         WHERE u.environment_id = $1
           AND (cardinality($2::text[]) = 0 OR u.id = ANY($2))
           AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM company_memberships m
                WHERE m.user_id = u.id AND m.company_id = $3))
           AND ($4::text IS NULL OR u.name ILIKE $4 OR EXISTS (SELECT 1 FROM user_keys k
                WHERE k.user_id = u.id AND k.value ILIKE $4))
         ORDER BY u.created_at DESC, u.id DESC LIMIT $5 OFFSET $6",
    )
    .bind(env_id)
    .bind(&filter.ids)
    .bind(&filter.company_id)
    .bind(&q)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// A user's membership of a company, with the company's name and times.
#[derive(Debug, sqlx::FromRow)]
pub struct MembershipRow {
    pub user_id: String,
    pub company_id: String,
    pub created_at: DateTime<Utc>,
    pub name: String,
    pub company_created_at: DateTime<Utc>,
    pub company_updated_at: DateTime<Utc>,
}

/// What a full view of some users is made of.
#[derive(Debug)]
pub struct DetailsRows {
    /// The users found, with their keys.
    pub found: keys::Found,
    /// Their memberships, oldest first.
    pub memberships: Vec<MembershipRow>,
}

/// The rows, keys and memberships of the environment's users `ids`.
pub async fn details_rows(
    conn: &mut PgConnection,
    env_id: &str,
    ids: &[String],
) -> Result<DetailsRows, sqlx::Error> {
    let found = keys::rows_and_keys(conn, Entity::User, env_id, ids).await?;
    let memberships: Vec<MembershipRow> = sqlx::query_as(
        "SELECT m.user_id, m.company_id, m.created_at, c.name, c.created_at AS company_created_at,
                c.updated_at AS company_updated_at
         FROM company_memberships m JOIN companies c ON c.id = m.company_id
         WHERE m.user_id = ANY($1) ORDER BY m.created_at",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(DetailsRows { found, memberships })
}

/// Deletes the environment's user `id` (what refers to it cascades). False when there was
/// none.
pub async fn delete(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM users WHERE environment_id = $1 AND id = $2")
            .bind(env_id)
            .bind(id)
            .execute(conn)
            .await?
            .rows_affected()
            > 0,
    )
}
