//! `/billing/credits`: credit types. Catalog objects shared by every environment.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::auth::Auth;
use crate::api::envelope;
use crate::api::error::{AppError, AppResult};
use crate::api::extract::{Json, Path, Query};
use crate::api::openapi;
use crate::api::resource::{self, Edit};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::catalog::{slugify, validate_key, validate_name};
use crate::store::credit_types::{self as store, CreditTypeRow};

/// Query parameters (documentation types).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct CreditListParams {
    /// Credit type ids.
    ids: Option<Vec<String>>,
    /// Part of the name.
    name: Option<String>,
}

/// `BillingCreditResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditView {
    id: String,
    key: String,
    name: String,
    description: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    burn_strategy: &'static str,
    cost_editable: bool,
    currency_prices: Vec<Value>,
    default_expiry_unit: &'static str,
    default_rollover_policy: &'static str,
    ledger_authority: &'static str,
}

impl From<CreditTypeRow> for CreditView {
    fn from(r: CreditTypeRow) -> Self {
        CreditView {
            id: r.id,
            key: r.key,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
            burn_strategy: "plan_first_then_expiration_priority",
            cost_editable: false,
            currency_prices: Vec::new(),
            default_expiry_unit: "billing_periods",
            default_rollover_policy: "expire",
            ledger_authority: "entitled",
        }
    }
}

resource::resource!(Credits: CreditView, "credit type", "credits", None,
    |conn, _state, _auth, id| {
        Ok(store::credit_type(conn, id).await?.map(CreditView::from))
    }
);

#[utoipa::path(get, path = "/billing/credits", tag = "credits", params(openapi::PageParams, CreditListParams),
    responses((status = 200, description = "Credit types, newest first", body = openapi::Enveloped<Vec<CreditView>>), openapi::Errors))]
pub async fn list_credits(
    State(state): State<AppState>,
    _auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let ids = query.get_all("ids");
    let mut conn = state.pool.acquire().await?;
    let rows =
        store::list_credit_types(&mut conn, &ids, query.get("name"), page.limit, page.offset)
            .await?;
    Ok(envelope::ok(
        rows.into_iter().map(CreditView::from).collect::<Vec<_>>(),
        query.params(Some(page)),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreditBody {
    name: Option<String>,
    key: Option<String>,
    description: Option<String>,
}

#[utoipa::path(post, path = "/billing/credits", tag = "credits", request_body = CreditBody,
    responses((status = 200, description = "The credit type, created", body = openapi::Enveloped<CreditView>), openapi::Errors))]
#[tracing::instrument(skip_all)]
pub async fn create_credit(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreditBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let name = body.name.unwrap_or_default();
    validate_name("name", &name)?;
    let key = body
        .key
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| slugify(&name));
    validate_key("key", &key)?;
    let description = body.description.unwrap_or_default();
    let mut edit = Edit::<Credits>::begin(&state, &auth).await?;
    let id = store::insert_credit_type(&mut edit.tx, &key, &name, &description).await?;
    edit.commit(Some(&id), vec![Change::Catalog]).await?;
    resource::show::<Credits>(&state, &auth, &id).await
}

#[utoipa::path(get, path = "/billing/credits/{id}", tag = "credits", params(("id" = String, Path, description = "A credit type id, `bcrd_…`")),
    responses((status = 200, description = "The credit type", body = openapi::Enveloped<CreditView>), openapi::Errors))]
pub async fn get_credit(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Credits>(&state, &auth, &id).await
}

#[utoipa::path(put, path = "/billing/credits/{id}", tag = "credits", request_body = CreditBody, params(("id" = String, Path, description = "A credit type id, `bcrd_…`")),
    responses((status = 200, description = "The credit type, updated", body = openapi::Enveloped<CreditView>), openapi::Errors))]
#[tracing::instrument(skip_all, fields(credit_id = %id))]
pub async fn update_credit(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<CreditBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    if let Some(n) = &body.name {
        validate_name("name", n)?;
    }
    let mut edit = Edit::<Credits>::begin(&state, &auth).await?;
    let found = store::update_credit_type(
        &mut edit.tx,
        &id,
        body.name.as_deref(),
        body.description.as_deref(),
    )
    .await?;
    if !found {
        return Err(AppError::not_found("credit type", &id));
    }
    // The snapshot holds whether credit types exist, not their names: nothing to publish.
    edit.commit(Some(&id), vec![]).await?;
    resource::show::<Credits>(&state, &auth, &id).await
}

#[utoipa::path(delete, path = "/billing/credits/{id}", tag = "credits", params(("id" = String, Path, description = "A credit type id, `bcrd_…`")),
    responses((status = 200, description = "Deleted", body = openapi::Enveloped<openapi::Deleted>), openapi::Errors))]
#[tracing::instrument(skip_all, fields(credit_id = %id))]
pub async fn delete_credit(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Credits>::begin(&state, &auth).await?;
    if !store::delete_credit_type(&mut edit.tx, &id).await? {
        return Err(AppError::not_found("credit type", &id));
    }
    edit.commit(None, vec![Change::Catalog]).await?;
    Ok(envelope::deleted())
}
