//! `/users`.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::auth::Auth;
use super::envelope;
use super::extract::{Json, Page, Path, Query};
use super::openapi::{Deleted, Enveloped, Errors};
use super::views::{self, KeyView, TraitView};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::keys::{self, Entity};
use crate::store::users::{self as store, UpsertUser};

/// `CompanyResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompanySummary {
    pub id: String,
    pub name: String,
    pub environment_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `CompanyMembershipDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MembershipView {
    pub id: String,
    pub company_id: String,
    pub user_id: String,
    pub company: CompanySummary,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `UserDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub environment_id: String,
    pub name: String,
    pub keys: Vec<KeyView>,
    pub traits: Map<String, Value>,
    pub entity_traits: Vec<TraitView>,
    pub company_memberships: Vec<MembershipView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    name: String,
    traits: sqlx::types::Json<Map<String, Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    user_id: String,
    company_id: String,
    created_at: DateTime<Utc>,
    name: String,
    company_created_at: DateTime<Utc>,
    company_updated_at: DateTime<Utc>,
}

async fn details(
    conn: &mut PgConnection,
    env_id: &str,
    ids: &[String],
) -> AppResult<Vec<UserView>> {
    let rows: Vec<UserRow> = sqlx::query_as(
        "SELECT id, name, traits, created_at, updated_at FROM users WHERE environment_id = $1 AND id = ANY($2)",
    )
    .bind(env_id)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let keys: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT user_id, key, value, created_at FROM user_keys WHERE user_id = ANY($1) ORDER BY created_at, key",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let memberships: Vec<MembershipRow> = sqlx::query_as(
        "SELECT m.user_id, m.company_id, m.created_at, c.name, c.created_at AS company_created_at,
                c.updated_at AS company_updated_at
         FROM company_memberships m JOIN companies c ON c.id = m.company_id
         WHERE m.user_id = ANY($1) ORDER BY m.created_at",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: HashMap<String, UserView> = rows
        .into_iter()
        .map(|r| {
            let view = UserView {
                entity_traits: views::trait_views("user", &r.id, env_id, &r.traits.0, r.updated_at),
                id: r.id.clone(),
                environment_id: env_id.to_string(),
                name: r.name,
                keys: Vec::new(),
                traits: r.traits.0,
                company_memberships: Vec::new(),
                created_at: r.created_at,
                updated_at: r.updated_at,
                last_seen_at: None,
            };
            (r.id, view)
        })
        .collect();
    for (user_id, key, value, created_at) in keys {
        if let Some(v) = by_id.get_mut(&user_id) {
            v.keys.push(KeyView::new(
                "user", &user_id, env_id, key, value, created_at,
            ));
        }
    }
    for m in memberships {
        if let Some(v) = by_id.get_mut(&m.user_id) {
            v.company_memberships.push(MembershipView {
                id: format!("{}:{}", m.company_id, m.user_id),
                company: CompanySummary {
                    id: m.company_id.clone(),
                    name: m.name,
                    environment_id: env_id.to_string(),
                    created_at: m.company_created_at,
                    updated_at: m.company_updated_at,
                },
                company_id: m.company_id,
                user_id: m.user_id,
                created_at: m.created_at,
                updated_at: m.created_at,
            });
        }
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

async fn one(state: &AppState, auth: &Auth, id: &str) -> AppResult<UserView> {
    let mut conn = state.pool.acquire().await?;
    details(&mut conn, auth.env_id(), &[id.to_string()])
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found("user", id))
}

/// Which users of the caller's environment to list. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct UserFilter {
    pub ids: Vec<String>,
    pub company_id: Option<String>,
    /// Matches the name or any key value.
    pub q: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Only these user ids.
    ids: Option<Vec<String>>,
    /// Only members of this company.
    company_id: Option<String>,
    /// Matches the name or any key value.
    q: Option<String>,
}

#[utoipa::path(get, path = "/users", tag = "users",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Users, newest first", body = Enveloped<Vec<UserView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let filter = UserFilter {
        ids: query.get_all("ids"),
        company_id: query.get("company_id").map(str::to_string),
        q: query.get("q").map(str::to_string),
    };
    let data = list_users(&state, &auth, &filter, page).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

/// Users of the caller's environment, newest first, as full views.
pub async fn list_users(
    state: &AppState,
    auth: &Auth,
    filter: &UserFilter,
    page: Page,
) -> AppResult<Vec<UserView>> {
    let q = filter
        .q
        .as_deref()
        .map(|s| format!("%{}%", s.replace('%', "\\%").replace('_', "\\_")));
    let mut conn = state.pool.acquire().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT u.id FROM users u
         WHERE u.environment_id = $1
           AND (cardinality($2::text[]) = 0 OR u.id = ANY($2))
           AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM company_memberships m
                WHERE m.user_id = u.id AND m.company_id = $3))
           AND ($4::text IS NULL OR u.name ILIKE $4 OR EXISTS (SELECT 1 FROM user_keys k
                WHERE k.user_id = u.id AND k.value ILIKE $4))
         ORDER BY u.created_at DESC, u.id DESC LIMIT $5 OFFSET $6",
    )
    .bind(auth.env_id())
    .bind(&filter.ids)
    .bind(&filter.company_id)
    .bind(&q)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    details(&mut conn, auth.env_id(), &ids).await
}

#[utoipa::path(get, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "A user id, `user_…`")),
    responses((status = 200, description = "The user", body = Enveloped<UserView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, user_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    Ok(envelope::ok_empty(one(&state, &auth, &id).await?))
}

#[utoipa::path(get, path = "/users/lookup", tag = "users",
    params(super::openapi::KeysParams),
    responses((status = 200, description = "The user these keys identify", body = Enveloped<UserView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn lookup(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let keys = query.key_map("keys")?;
    keys::validate("keys", &keys)?;
    let mut conn = state.pool.acquire().await?;
    let id = keys::find(&mut conn, Entity::User, auth.env_id(), &keys)
        .await?
        .ok_or_else(|| AppError::NotFound("no user has these keys".into()))?;
    let view = details(&mut conn, auth.env_id(), std::slice::from_ref(&id))
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found("user", &id))?;
    Ok(envelope::ok(view, query.params(None)))
}

/// `UpsertUserRequestBody`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = UpsertUserRequestBody)]
#[schema(example = json!({"keys": {"email": "ada@example.com"}, "name": "Ada", "company": {"id": "acme"}}))]
pub struct UpsertBody {
    /// Identifying keys, e.g. `{"email": "ada@example.com"}`.
    #[schema(value_type = HashMap<String, String>)]
    pub keys: Map<String, Value>,
    pub name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub traits: Option<Map<String, Value>>,
    /// Keys of a company the user belongs to (created when no company matches).
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub company: Option<Map<String, Value>>,
    #[schema(value_type = Option<Vec<HashMap<String, String>>>)]
    pub companies: Option<Vec<Map<String, Value>>>,
    pub company_id: Option<String>,
    pub company_ids: Option<Vec<String>>,
    pub update_only: Option<bool>,
}

#[utoipa::path(post, path = "/users", tag = "users", request_body = UpsertBody,
    responses((status = 200, description = "The user, created or updated", body = Enveloped<UserView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn upsert(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<UpsertBody>,
) -> AppResult<Response> {
    Ok(envelope::ok_empty(upsert_user(&state, &auth, body).await?))
}

/// Creates or updates the user `body.keys` identify, with its memberships; the REST and
/// MCP upserts.
pub async fn upsert_user(state: &AppState, auth: &Auth, body: UpsertBody) -> AppResult<UserView> {
    auth.require_write()?;
    let mut company_keys = Vec::new();
    if let Some(c) = &body.company {
        company_keys.push(views::key_pairs("company", c)?);
    }
    for (i, c) in body.companies.iter().flatten().enumerate() {
        company_keys.push(views::key_pairs(&format!("companies[{i}]"), c)?);
    }
    let mut company_ids: Vec<String> = body.company_ids.clone().unwrap_or_default();
    company_ids.extend(body.company_id.clone());
    let req = UpsertUser {
        keys: views::key_pairs("keys", &body.keys)?,
        name: body.name,
        traits: body.traits,
        company_keys,
        company_ids,
        update_only: body.update_only.unwrap_or(false),
    };
    let mut tx = state.pool.begin().await?;
    let done = store::upsert(&mut tx, auth.env_id(), &req).await?;
    let env_id = auth.env_id().to_string();
    let mut changes = vec![Change::User {
        environment_id: env_id.clone(),
        id: done.id.clone(),
    }];
    changes.extend(done.companies.iter().map(|c| Change::Company {
        environment_id: env_id.clone(),
        id: c.clone(),
    }));
    state.commit(tx, &changes).await?;
    crate::metrics::WRITES.inc("users");
    tracing::info!(user_id = %done.id, created = done.created, "user upserted");
    one(state, auth, &done.id).await
}

#[utoipa::path(delete, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "A user id, `user_…`")),
    responses((status = 200, description = "Deleted", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, user_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut tx = state.pool.begin().await?;
    let n = sqlx::query("DELETE FROM users WHERE environment_id = $1 AND id = $2")
        .bind(auth.env_id())
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(AppError::not_found("user", &id));
    }
    state
        .commit(
            tx,
            &[Change::User {
                environment_id: auth.env_id().into(),
                id: id.clone(),
            }],
        )
        .await?;
    crate::metrics::WRITES.inc("users");
    Ok(envelope::deleted())
}
