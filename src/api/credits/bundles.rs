//! `/billing/credits/bundles`: purchasable packs of one credit type. Catalog objects shared
//! by every environment; a company grant may name the bundle it came from.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::credits_amount;
use crate::api::auth::Auth;
use crate::api::envelope;
use crate::api::error::{AppError, AppResult};
use crate::api::extract::{Json, Path, Query};
use crate::api::openapi;
use crate::api::resource::{self, Edit};
use crate::api::AppState;
use crate::store::catalog::validate_name;
use crate::store::credit_bundles::{self as store, BundleRow, BundleUpdate, NewBundle};
use crate::store::credits::from_micros;

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct BundleListParams {
    credit_id: Option<String>,
}

/// `BillingCreditBundleResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BundleView {
    id: String,
    credit_id: String,
    credit_name: String,
    name: String,
    quantity: f64,
    price_cents: Option<i64>,
    currency: Option<String>,
    expiry_days: Option<i32>,
    status: String,
    has_grants: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    compatible_plan_ids: Vec<String>,
    currency_prices: Vec<Value>,
    expiry_type: &'static str,
    expiry_unit: &'static str,
}

impl From<BundleRow> for BundleView {
    fn from(b: BundleRow) -> Self {
        BundleView {
            expiry_type: if b.expiry_days.is_some() {
                "duration"
            } else {
                "no_expiry"
            },
            id: b.id,
            credit_id: b.credit_id,
            credit_name: b.credit_name,
            name: b.name,
            quantity: from_micros(b.quantity_micros),
            price_cents: b.price_cents,
            currency: b.currency,
            expiry_days: b.expiry_days,
            status: b.status,
            has_grants: b.has_grants,
            created_at: b.created_at,
            updated_at: b.updated_at,
            compatible_plan_ids: Vec::new(),
            currency_prices: Vec::new(),
            expiry_unit: "days",
        }
    }
}

resource::resource!(Bundles: BundleView, "credit bundle", "credit_bundles", None,
    |conn, _state, _auth, id| {
        Ok(store::bundle(conn, id).await?.map(BundleView::from))
    }
);

#[utoipa::path(get, path = "/billing/credits/bundles", tag = "credits", params(openapi::PageParams, BundleListParams),
    responses((status = 200, description = "Credit bundles, newest first", body = openapi::Enveloped<Vec<BundleView>>), openapi::Errors))]
pub async fn list_bundles(
    State(state): State<AppState>,
    _auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let mut conn = state.pool.acquire().await?;
    let rows =
        store::list_bundles(&mut conn, query.get("credit_id"), page.limit, page.offset).await?;
    Ok(envelope::ok(
        rows.into_iter().map(BundleView::from).collect::<Vec<_>>(),
        query.params(Some(page)),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct BundleBody {
    credit_id: Option<String>,
    name: Option<String>,
    bundle_name: Option<String>,
    quantity: Option<f64>,
    price_per_unit: Option<i64>,
    price_cents: Option<i64>,
    currency: Option<String>,
    expiry_days: Option<i32>,
    status: Option<String>,
}

fn validate_bundle_fields(
    price: Option<i64>,
    currency: Option<&str>,
    expiry_days: Option<i32>,
    status: Option<&str>,
) -> AppResult<()> {
    if price.is_some_and(|p| p < 0) {
        return Err(AppError::bad_request("price_cents: must not be negative"));
    }
    if let Some(c) = currency {
        if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_alphabetic()) {
            return Err(AppError::bad_request(format!(
                "currency: {c:?} is not a three-letter ISO code"
            )));
        }
    }
    if expiry_days.is_some_and(|d| d <= 0) {
        return Err(AppError::bad_request("expiry_days: must be positive"));
    }
    if let Some(s) = status {
        if s != "active" && s != "inactive" {
            return Err(AppError::bad_request(format!(
                "status: {s:?} is not active or inactive"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/billing/credits/bundles", tag = "credits", request_body = BundleBody,
    responses((status = 200, description = "The bundle, created", body = openapi::Enveloped<BundleView>), openapi::Errors))]
#[tracing::instrument(skip_all)]
pub async fn create_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<BundleBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let name = body.name.or(body.bundle_name).unwrap_or_default();
    validate_name("name", &name)?;
    let credit_id = body
        .credit_id
        .ok_or_else(|| AppError::bad_request("credit_id: required"))?;
    let quantity_micros = credits_amount(
        "quantity",
        body.quantity
            .ok_or_else(|| AppError::bad_request("quantity: required"))?,
    )?;
    let price_cents = body.price_cents.or(body.price_per_unit);
    validate_bundle_fields(
        price_cents,
        body.currency.as_deref(),
        body.expiry_days,
        body.status.as_deref(),
    )?;
    let mut edit = Edit::<Bundles>::begin(&state, &auth).await?;
    // A credit type that does not exist is a 404 naming `credit_id`.
    let id = store::insert_bundle(
        &mut edit.tx,
        &NewBundle {
            credit_id,
            name,
            quantity_micros,
            price_cents,
            currency: body.currency,
            expiry_days: body.expiry_days,
            status: body.status,
        },
    )
    .await?;
    // The snapshot holds no bundles: nothing to publish.
    edit.commit(Some(&id), vec![]).await?;
    resource::show::<Bundles>(&state, &auth, &id).await
}

#[utoipa::path(get, path = "/billing/credits/bundles/{id}", tag = "credits", params(("id" = String, Path, description = "A bundle id, `bcbn_…`")),
    responses((status = 200, description = "The bundle", body = openapi::Enveloped<BundleView>), openapi::Errors))]
pub async fn get_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Bundles>(&state, &auth, &id).await
}

#[utoipa::path(put, path = "/billing/credits/bundles/{id}", tag = "credits", request_body = BundleBody, params(("id" = String, Path, description = "A bundle id, `bcbn_…`")),
    responses((status = 200, description = "The bundle, updated", body = openapi::Enveloped<BundleView>), openapi::Errors))]
#[tracing::instrument(skip_all, fields(bundle_id = %id))]
pub async fn update_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<BundleBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let name = body.name.or(body.bundle_name);
    if let Some(n) = &name {
        validate_name("name", n)?;
    }
    let quantity_micros = body
        .quantity
        .map(|q| credits_amount("quantity", q))
        .transpose()?;
    let price_cents = body.price_cents.or(body.price_per_unit);
    validate_bundle_fields(
        price_cents,
        body.currency.as_deref(),
        body.expiry_days,
        body.status.as_deref(),
    )?;
    let update = BundleUpdate {
        name,
        quantity_micros,
        price_cents,
        currency: body.currency,
        expiry_days: body.expiry_days,
        status: body.status,
    };
    let mut edit = Edit::<Bundles>::begin(&state, &auth).await?;
    if !store::update_bundle(&mut edit.tx, &id, &update).await? {
        return Err(AppError::not_found("credit bundle", &id));
    }
    edit.commit(Some(&id), vec![]).await?;
    resource::show::<Bundles>(&state, &auth, &id).await
}

#[utoipa::path(delete, path = "/billing/credits/bundles/{id}", tag = "credits", params(("id" = String, Path, description = "A bundle id, `bcbn_…`")),
    responses((status = 200, description = "Deleted", body = openapi::Enveloped<openapi::Deleted>), openapi::Errors))]
pub async fn delete_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Bundles>::begin(&state, &auth).await?;
    if !store::delete_bundle(&mut edit.tx, &id).await? {
        return Err(AppError::not_found("credit bundle", &id));
    }
    edit.commit(None, vec![]).await?;
    Ok(envelope::deleted())
}
