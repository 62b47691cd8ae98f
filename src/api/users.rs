//! `/users`.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Auth;
use super::emit;
use super::envelope;
use super::extract::{Json, Page, Path, Query};
use super::openapi::{Deleted, Enveloped, Errors};
use super::resource::{self, Edit};
use super::views::{self, KeyView, TraitView};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::keys::{Entity, Found};
pub use crate::store::users::UserFilter;
use crate::store::users::{self as store, UpsertUser};
use crate::store::Conn;

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

async fn details(conn: &mut Conn, env_id: &str, ids: &[String]) -> AppResult<Vec<UserView>> {
    let store::DetailsRows {
        found: Found { rows, keys },
        memberships,
    } = store::details_rows(conn, env_id, ids).await?;
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

resource::resource!(Users: UserView, "user", "users", Some(&emit::USER),
    |conn, _state, auth, id| {
        Ok(details(conn, auth.env_id(), &[id.to_string()]).await?.pop())
    }
);

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
    let mut conn = state.pool.acquire().await?;
    let ids = store::list_ids(&mut conn, auth.env_id(), filter, page.limit, page.offset).await?;
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
    resource::show::<Users>(&state, &auth, &id).await
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
    resource::lookup::<Users>(&state, &auth, &query, Entity::User).await
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
    let mut edit = Edit::<Users>::begin(state, auth).await?;
    // The user the keys name now, if a message is wanted. Errors propagate: a failed
    // statement aborts the transaction.
    if edit.watch {
        let user = crate::store::keys::Entity::User;
        if let Some(id) =
            crate::store::keys::find(&mut edit.tx, user, auth.env_id(), &req.keys).await?
        {
            edit.read_before(&id).await?;
        }
    }
    let done = store::upsert(&mut edit.tx, auth.env_id(), &req).await?;
    let env_id = auth.env_id().to_string();
    let mut changes = vec![Change::User {
        environment_id: env_id.clone(),
        id: done.id.clone(),
    }];
    changes.extend(done.companies.iter().map(|c| Change::Company {
        environment_id: env_id.clone(),
        id: c.clone(),
    }));
    edit.commit(Some(&done.id), changes).await?;
    tracing::info!(user_id = %done.id, created = done.created, "user upserted");
    resource::one::<Users>(state, auth, &done.id).await
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
    let mut edit = Edit::<Users>::of(&state, &auth, &id).await?;
    if !store::delete(&mut edit.tx, auth.env_id(), &id).await? {
        return Err(AppError::not_found("user", &id));
    }
    edit.commit(None, vec![Change::user(auth.env_id(), &id)])
        .await?;
    Ok(envelope::deleted())
}
