//! `/billing/credits…`: credit types, bundles, plan credit grants, company grants,
//! zero-out, balances and the ledger.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;

use super::auth::Auth;
use super::envelope;
use super::extract::{Json, Path, Query};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::engine::period::{ResetCadence, ResetStart};
use crate::ids;
use crate::store::catalog::{slugify, validate_key, validate_name};
use crate::store::credits::{self, from_micros, to_micros, NewGrant};
use crate::store::error::{sqlstate, violated_constraint};

/// The largest amount one request may grant or configure, in credits.
const MAX_CREDITS: f64 = 1e12;

fn credits_amount(field: &str, v: f64) -> AppResult<i64> {
    if !(v.is_finite() && v > 0.0 && v <= MAX_CREDITS) {
        return Err(AppError::bad_request(format!(
            "{field}: must be a positive number of credits up to {MAX_CREDITS}"
        )));
    }
    let micros = to_micros(v);
    if micros == 0 {
        return Err(AppError::bad_request(format!(
            "{field}: must be at least 0.000001"
        )));
    }
    Ok(micros)
}

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

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct BundleListParams {
    credit_id: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PlanGrantListParams {
    plan_id: Option<String>,
    plan_ids: Option<Vec<String>>,
    credit_id: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct CompanyParam {
    /// The company, `comp_…`.
    company_id: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LedgerParams {
    company_id: String,
    credit_id: Option<String>,
}

/// Deletes one row of a catalog table by id (`table` is one of ours, never input): 404 when
/// there is none.
async fn delete_by_id(state: &AppState, table: &str, noun: &str, id: &str) -> AppResult<Response> {
    let n = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(AppError::not_found(noun, id));
    }
    Ok(envelope::deleted())
}

// ---- credit types -------------------------------------------------------------------------

/// `BillingCreditResponseData`.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CreditView {
    id: String,
    key: String,
    name: String,
    description: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    burn_strategy: &'static str,
    #[sqlx(skip)]
    cost_editable: bool,
    #[sqlx(skip)]
    currency_prices: Vec<Value>,
    #[sqlx(skip)]
    default_expiry_unit: &'static str,
    #[sqlx(skip)]
    default_rollover_policy: &'static str,
    #[sqlx(skip)]
    ledger_authority: &'static str,
}

fn credit_view(mut v: CreditView) -> CreditView {
    v.burn_strategy = "plan_first_then_expiration_priority";
    v.default_expiry_unit = "billing_periods";
    v.default_rollover_policy = "expire";
    v.ledger_authority = "entitled";
    v
}

const CREDIT_SELECT: &str =
    "SELECT id, key, name, description, created_at, updated_at FROM credit_types";

async fn credit(conn: &mut PgConnection, id: &str) -> AppResult<CreditView> {
    sqlx::query_as(&format!("{CREDIT_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(credit_view)
        .ok_or_else(|| AppError::not_found("credit type", id))
}

#[utoipa::path(get, path = "/billing/credits", tag = "credits", params(super::openapi::PageParams, CreditListParams),
    responses((status = 200, description = "Credit types, newest first", body = super::openapi::Enveloped<Vec<CreditView>>), super::openapi::Errors))]
pub async fn list_credits(
    State(state): State<AppState>,
    _auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let ids_filter = query.get_all("ids");
    let rows: Vec<CreditView> = sqlx::query_as(&format!(
        "{CREDIT_SELECT} WHERE (cardinality($1::text[]) = 0 OR id = ANY($1))
           AND ($2::text IS NULL OR name ILIKE '%' || $2 || '%')
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(&ids_filter)
    .bind(query.get("name"))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&state.pool)
    .await?;
    Ok(envelope::ok(
        rows.into_iter().map(credit_view).collect::<Vec<_>>(),
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
    responses((status = 200, description = "The credit type, created", body = super::openapi::Enveloped<CreditView>), super::openapi::Errors))]
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
    let id = ids::new_id("bcrd");
    let mut tx = state.pool.begin().await?;
    let res = sqlx::query(
        "INSERT INTO credit_types (id, key, name, description) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(&key)
    .bind(&name)
    .bind(body.description.unwrap_or_default())
    .execute(&mut *tx)
    .await;
    if let Err(e) = res {
        if violated_constraint(&e, sqlstate::UNIQUE_VIOLATION).is_some() {
            return Err(AppError::Conflict(format!(
                "key: a credit type with key {key:?} already exists"
            )));
        }
        return Err(e.into());
    }
    state.commit(tx, &[Change::Catalog]).await?;
    crate::metrics::WRITES.inc("credits");
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(credit(&mut conn, &id).await?))
}

#[utoipa::path(get, path = "/billing/credits/{id}", tag = "credits", params(("id" = String, Path, description = "A credit type id, `bcrd_…`")),
    responses((status = 200, description = "The credit type", body = super::openapi::Enveloped<CreditView>), super::openapi::Errors))]
pub async fn get_credit(
    State(state): State<AppState>,
    _auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(credit(&mut conn, &id).await?))
}

#[utoipa::path(put, path = "/billing/credits/{id}", tag = "credits", request_body = CreditBody, params(("id" = String, Path, description = "A credit type id, `bcrd_…`")),
    responses((status = 200, description = "The credit type, updated", body = super::openapi::Enveloped<CreditView>), super::openapi::Errors))]
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
    let n = sqlx::query(
        "UPDATE credit_types SET name = COALESCE($2, name), description = COALESCE($3, description),
             updated_at = now() WHERE id = $1",
    )
    .bind(&id)
    .bind(&body.name)
    .bind(&body.description)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(AppError::not_found("credit type", &id));
    }
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(credit(&mut conn, &id).await?))
}

#[utoipa::path(delete, path = "/billing/credits/{id}", tag = "credits", params(("id" = String, Path, description = "A credit type id, `bcrd_…`")),
    responses((status = 200, description = "Deleted", body = super::openapi::Enveloped<super::openapi::Deleted>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(credit_id = %id))]
pub async fn delete_credit(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut tx = state.pool.begin().await?;
    let res = sqlx::query("DELETE FROM credit_types WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await;
    match res {
        Ok(r) if r.rows_affected() == 0 => return Err(AppError::not_found("credit type", &id)),
        Ok(_) => {}
        Err(e) if violated_constraint(&e, sqlstate::FOREIGN_KEY_VIOLATION).is_some() => {
            return Err(AppError::Conflict(format!(
                "credit type {id:?} is in use by entitlements, bundles, plan grants or grants; remove those first"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    state.commit(tx, &[Change::Catalog]).await?;
    Ok(envelope::deleted())
}

// ---- bundles ------------------------------------------------------------------------------

/// `BillingCreditBundleResponseData`.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BundleView {
    id: String,
    credit_id: String,
    credit_name: String,
    name: String,
    #[serde(skip)]
    quantity_micros: i64,
    #[sqlx(skip)]
    quantity: f64,
    price_cents: Option<i64>,
    currency: Option<String>,
    expiry_days: Option<i32>,
    status: String,
    has_grants: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    compatible_plan_ids: Vec<String>,
    #[sqlx(skip)]
    currency_prices: Vec<Value>,
    #[sqlx(skip)]
    expiry_type: &'static str,
    #[sqlx(skip)]
    expiry_unit: &'static str,
}

const BUNDLE_SELECT: &str =
    "SELECT b.id, b.credit_id, t.name AS credit_name, b.name, b.quantity_micros,
        b.price_cents, b.currency, b.expiry_days, b.status,
        EXISTS (SELECT 1 FROM credit_grants g WHERE g.bundle_id = b.id) AS has_grants,
        b.created_at, b.updated_at
     FROM credit_bundles b JOIN credit_types t ON t.id = b.credit_id";

fn bundle_view(mut b: BundleView) -> BundleView {
    b.quantity = from_micros(b.quantity_micros);
    b.expiry_type = if b.expiry_days.is_some() {
        "duration"
    } else {
        "no_expiry"
    };
    b.expiry_unit = "days";
    b
}

async fn bundle(conn: &mut PgConnection, id: &str) -> AppResult<BundleView> {
    sqlx::query_as(&format!("{BUNDLE_SELECT} WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(bundle_view)
        .ok_or_else(|| AppError::not_found("credit bundle", id))
}

#[utoipa::path(get, path = "/billing/credits/bundles", tag = "credits", params(super::openapi::PageParams, BundleListParams),
    responses((status = 200, description = "Credit bundles, newest first", body = super::openapi::Enveloped<Vec<BundleView>>), super::openapi::Errors))]
pub async fn list_bundles(
    State(state): State<AppState>,
    _auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let rows: Vec<BundleView> = sqlx::query_as(&format!(
        "{BUNDLE_SELECT} WHERE ($1::text IS NULL OR b.credit_id = $1)
         ORDER BY b.created_at DESC, b.id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(query.get("credit_id"))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&state.pool)
    .await?;
    Ok(envelope::ok(
        rows.into_iter().map(bundle_view).collect::<Vec<_>>(),
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

#[utoipa::path(post, path = "/billing/credits/bundles", tag = "credits", request_body = BundleBody,
    responses((status = 200, description = "The bundle, created", body = super::openapi::Enveloped<BundleView>), super::openapi::Errors))]
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
    let micros = credits_amount(
        "quantity",
        body.quantity
            .ok_or_else(|| AppError::bad_request("quantity: required"))?,
    )?;
    validate_bundle_fields(
        body.price_cents.or(body.price_per_unit),
        body.currency.as_deref(),
        body.expiry_days,
        body.status.as_deref(),
    )?;
    let id = ids::new_id("bcbn");
    let mut conn = state.pool.acquire().await?;
    credits::require_credit(&mut conn, "credit_id", &credit_id).await?;
    sqlx::query(
        "INSERT INTO credit_bundles (id, credit_id, name, quantity_micros, price_cents, currency, expiry_days, status)
         VALUES ($1, $2, $3, $4, $5, lower($6), $7, COALESCE($8, 'active'))",
    )
    .bind(&id)
    .bind(&credit_id)
    .bind(&name)
    .bind(micros)
    .bind(body.price_cents.or(body.price_per_unit))
    .bind(&body.currency)
    .bind(body.expiry_days)
    .bind(&body.status)
    .execute(&mut *conn)
    .await?;
    crate::metrics::WRITES.inc("credit_bundles");
    Ok(envelope::ok_empty(bundle(&mut conn, &id).await?))
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

#[utoipa::path(get, path = "/billing/credits/bundles/{id}", tag = "credits", params(("id" = String, Path, description = "A bundle id, `bcbn_…`")),
    responses((status = 200, description = "The bundle", body = super::openapi::Enveloped<BundleView>), super::openapi::Errors))]
pub async fn get_bundle(
    State(state): State<AppState>,
    _auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(bundle(&mut conn, &id).await?))
}

#[utoipa::path(put, path = "/billing/credits/bundles/{id}", tag = "credits", request_body = BundleBody, params(("id" = String, Path, description = "A bundle id, `bcbn_…`")),
    responses((status = 200, description = "The bundle, updated", body = super::openapi::Enveloped<BundleView>), super::openapi::Errors))]
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
    let micros = body
        .quantity
        .map(|q| credits_amount("quantity", q))
        .transpose()?;
    let price = body.price_cents.or(body.price_per_unit);
    validate_bundle_fields(
        price,
        body.currency.as_deref(),
        body.expiry_days,
        body.status.as_deref(),
    )?;
    let n = sqlx::query(
        "UPDATE credit_bundles SET name = COALESCE($2, name), quantity_micros = COALESCE($3, quantity_micros),
             price_cents = COALESCE($4, price_cents), currency = COALESCE(lower($5), currency),
             expiry_days = COALESCE($6, expiry_days), status = COALESCE($7, status), updated_at = now()
         WHERE id = $1",
    )
    .bind(&id)
    .bind(&name)
    .bind(micros)
    .bind(price)
    .bind(&body.currency)
    .bind(body.expiry_days)
    .bind(&body.status)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(AppError::not_found("credit bundle", &id));
    }
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(bundle(&mut conn, &id).await?))
}

#[utoipa::path(delete, path = "/billing/credits/bundles/{id}", tag = "credits", params(("id" = String, Path, description = "A bundle id, `bcbn_…`")),
    responses((status = 200, description = "Deleted", body = super::openapi::Enveloped<super::openapi::Deleted>), super::openapi::Errors))]
pub async fn delete_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    delete_by_id(&state, "credit_bundles", "credit bundle", &id).await
}

// ---- plan credit grants -------------------------------------------------------------------

/// `BillingPlanCreditGrantResponseData`.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PlanGrantView {
    id: String,
    plan_id: String,
    plan_name: String,
    credit_id: String,
    credit_name: String,
    #[serde(skip)]
    amount_micros: i64,
    #[sqlx(skip)]
    credit_amount: f64,
    reset_cadence: String,
    reset_start: String,
    expiry: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    auto_topup_availability: &'static str,
    #[sqlx(skip)]
    auto_topup_enabled: bool,
    #[sqlx(skip)]
    auto_topup_self_service: bool,
    #[sqlx(skip)]
    billing_mode: &'static str,
    #[sqlx(skip)]
    can_buy_bundles: bool,
    #[sqlx(skip)]
    company_credit_amount: i64,
    #[sqlx(skip)]
    postpaid_enabled: bool,
    #[sqlx(skip)]
    price_tiers: Vec<Value>,
    #[sqlx(skip)]
    rollover_percentage: i64,
    #[sqlx(skip)]
    scaling: &'static str,
    #[sqlx(skip)]
    warning_tiers: Vec<Value>,
}

const PLAN_GRANT_SELECT: &str = "SELECT g.id, g.plan_id, p.name AS plan_name, g.credit_id,
        t.name AS credit_name, g.amount_micros, g.reset_cadence, g.reset_start, g.expiry,
        g.created_at, g.updated_at
     FROM plan_credit_grants g JOIN plans p ON p.id = g.plan_id JOIN credit_types t ON t.id = g.credit_id";

fn plan_grant_view(mut g: PlanGrantView) -> PlanGrantView {
    g.credit_amount = from_micros(g.amount_micros);
    g.auto_topup_availability = "off";
    g.billing_mode = "granted";
    g.rollover_percentage = if g.expiry == "never" { 100 } else { 0 };
    g.scaling = "fixed";
    g
}

async fn plan_grant(conn: &mut PgConnection, id: &str) -> AppResult<PlanGrantView> {
    sqlx::query_as(&format!("{PLAN_GRANT_SELECT} WHERE g.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(plan_grant_view)
        .ok_or_else(|| AppError::not_found("plan credit grant", id))
}

#[utoipa::path(get, path = "/billing/credits/plan-grants", tag = "credits", params(super::openapi::PageParams, PlanGrantListParams),
    responses((status = 200, description = "Plan credit grants, newest first", body = super::openapi::Enveloped<Vec<PlanGrantView>>), super::openapi::Errors))]
pub async fn list_plan_grants(
    State(state): State<AppState>,
    _auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let mut plan_ids = query.get_all("plan_ids");
    plan_ids.extend(query.get("plan_id").map(str::to_string));
    let rows: Vec<PlanGrantView> = sqlx::query_as(&format!(
        "{PLAN_GRANT_SELECT} WHERE (cardinality($1::text[]) = 0 OR g.plan_id = ANY($1))
           AND ($2::text IS NULL OR g.credit_id = $2)
         ORDER BY g.created_at DESC, g.id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(&plan_ids)
    .bind(query.get("credit_id"))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&state.pool)
    .await?;
    Ok(envelope::ok(
        rows.into_iter().map(plan_grant_view).collect::<Vec<_>>(),
        query.params(Some(page)),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PlanGrantBody {
    plan_id: Option<String>,
    credit_id: Option<String>,
    credit_amount: Option<f64>,
    reset_cadence: Option<String>,
    reset_start: Option<String>,
    expiry: Option<String>,
}

fn validate_plan_grant_fields(
    cadence: Option<&str>,
    start: Option<&str>,
    expiry: Option<&str>,
) -> AppResult<()> {
    if let Some(c) = cadence {
        ResetCadence::parse(c).ok_or_else(|| {
            AppError::bad_request(format!(
                "reset_cadence: {c:?} is not daily, weekly, monthly or yearly"
            ))
        })?;
    }
    if let Some(s) = start {
        ResetStart::parse(s).ok_or_else(|| {
            AppError::bad_request(format!(
                "reset_start: {s:?} is not billing_period or first_of_month"
            ))
        })?;
    }
    if let Some(e) = expiry {
        if e != "period_end" && e != "never" {
            return Err(AppError::bad_request(format!(
                "expiry: {e:?} is not period_end or never"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/billing/credits/plan-grants", tag = "credits", request_body = PlanGrantBody,
    responses((status = 200, description = "The plan credit grant, created", body = super::openapi::Enveloped<PlanGrantView>), super::openapi::Errors))]
#[tracing::instrument(skip_all)]
pub async fn create_plan_grant(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<PlanGrantBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let plan_id = body
        .plan_id
        .ok_or_else(|| AppError::bad_request("plan_id: required"))?;
    let credit_id = body
        .credit_id
        .ok_or_else(|| AppError::bad_request("credit_id: required"))?;
    let micros = credits_amount(
        "credit_amount",
        body.credit_amount
            .ok_or_else(|| AppError::bad_request("credit_amount: required"))?,
    )?;
    let cadence = body.reset_cadence.unwrap_or_else(|| "monthly".into());
    let start = body.reset_start.unwrap_or_else(|| "billing_period".into());
    let expiry = body.expiry.unwrap_or_else(|| "period_end".into());
    validate_plan_grant_fields(Some(&cadence), Some(&start), Some(&expiry))?;
    let mut conn = state.pool.acquire().await?;
    crate::store::companies::plan_type(&mut conn, "plan_id", &plan_id).await?;
    credits::require_credit(&mut conn, "credit_id", &credit_id).await?;
    let id = ids::new_id("bcpg");
    let res = sqlx::query(
        "INSERT INTO plan_credit_grants (id, plan_id, credit_id, amount_micros, reset_cadence, reset_start, expiry)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&plan_id)
    .bind(&credit_id)
    .bind(micros)
    .bind(&cadence)
    .bind(&start)
    .bind(&expiry)
    .execute(&mut *conn)
    .await;
    if let Err(e) = res {
        if violated_constraint(&e, sqlstate::UNIQUE_VIOLATION).is_some() {
            return Err(AppError::Conflict(format!(
                "plan {plan_id:?} already grants credit {credit_id:?}; update that plan grant"
            )));
        }
        return Err(e.into());
    }
    crate::metrics::WRITES.inc("plan_credit_grants");
    tracing::info!(plan_grant_id = %id, "plan credit grant created");
    Ok(envelope::ok_empty(plan_grant(&mut conn, &id).await?))
}

#[utoipa::path(get, path = "/billing/credits/plan-grants/{id}", tag = "credits", params(("id" = String, Path, description = "A plan credit grant id, `bcpg_…`")),
    responses((status = 200, description = "The plan credit grant", body = super::openapi::Enveloped<PlanGrantView>), super::openapi::Errors))]
pub async fn get_plan_grant(
    State(state): State<AppState>,
    _auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(plan_grant(&mut conn, &id).await?))
}

#[utoipa::path(put, path = "/billing/credits/plan-grants/{id}", tag = "credits", request_body = PlanGrantBody, params(("id" = String, Path, description = "A plan credit grant id, `bcpg_…`")),
    responses((status = 200, description = "The plan credit grant, updated", body = super::openapi::Enveloped<PlanGrantView>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(plan_grant_id = %id))]
pub async fn update_plan_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<PlanGrantBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let micros = body
        .credit_amount
        .map(|a| credits_amount("credit_amount", a))
        .transpose()?;
    validate_plan_grant_fields(
        body.reset_cadence.as_deref(),
        body.reset_start.as_deref(),
        body.expiry.as_deref(),
    )?;
    let n = sqlx::query(
        "UPDATE plan_credit_grants SET amount_micros = COALESCE($2, amount_micros),
             reset_cadence = COALESCE($3, reset_cadence), reset_start = COALESCE($4, reset_start),
             expiry = COALESCE($5, expiry), updated_at = now()
         WHERE id = $1",
    )
    .bind(&id)
    .bind(micros)
    .bind(&body.reset_cadence)
    .bind(&body.reset_start)
    .bind(&body.expiry)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(AppError::not_found("plan credit grant", &id));
    }
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(plan_grant(&mut conn, &id).await?))
}

#[utoipa::path(delete, path = "/billing/credits/plan-grants/{id}", tag = "credits", params(("id" = String, Path, description = "A plan credit grant id, `bcpg_…`")),
    responses((status = 200, description = "Deleted", body = super::openapi::Enveloped<super::openapi::Deleted>), super::openapi::Errors))]
pub async fn delete_plan_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    delete_by_id(&state, "plan_credit_grants", "plan credit grant", &id).await
}

// ---- company grants, balances, ledger -----------------------------------------------------

/// `CreditCompanyGrantView`.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GrantView {
    id: String,
    company_id: String,
    company_name: String,
    credit_id: String,
    credit_name: String,
    source: String,
    #[serde(rename = "grant_reason")]
    reason: String,
    plan_credit_grant_id: Option<String>,
    bundle_id: Option<String>,
    period_start: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    zeroed_at: Option<DateTime<Utc>>,
    zero_reason: Option<String>,
    #[serde(skip)]
    granted_micros: i64,
    #[serde(skip)]
    used_micros: i64,
    #[serde(skip)]
    zeroed_micros: i64,
    #[sqlx(skip)]
    quantity: f64,
    #[sqlx(skip)]
    quantity_used: f64,
    #[sqlx(skip)]
    quantity_zeroed: f64,
    #[sqlx(skip)]
    quantity_remaining: f64,
    #[sqlx(skip)]
    renewal_enabled: bool,
    #[sqlx(skip)]
    source_label: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const GRANT_SELECT: &str = "SELECT g.id, g.company_id, c.name AS company_name, g.credit_id,
        t.name AS credit_name, g.source, g.reason, g.plan_credit_grant_id, g.bundle_id,
        g.period_start, g.expires_at, g.zeroed_at, g.zero_reason, g.granted_micros,
        g.used_micros, g.zeroed_micros, g.created_at, g.updated_at
     FROM credit_grants g JOIN companies c ON c.id = g.company_id JOIN credit_types t ON t.id = g.credit_id";

fn grant_view(mut g: GrantView, now: DateTime<Utc>) -> GrantView {
    g.quantity = from_micros(g.granted_micros);
    g.quantity_used = from_micros(g.used_micros);
    g.quantity_zeroed = from_micros(g.zeroed_micros);
    let expired = g.expires_at.is_some_and(|e| e <= now);
    g.quantity_remaining = if expired {
        0.0
    } else {
        from_micros(g.granted_micros - g.used_micros - g.zeroed_micros)
    };
    g.renewal_enabled = g.source == "plan";
    g.source_label = if g.source == "plan" {
        "Plan grant".into()
    } else {
        format!("Company grant ({})", g.reason)
    };
    g
}

async fn grant(conn: &mut PgConnection, env_id: &str, id: &str) -> AppResult<GrantView> {
    sqlx::query_as(&format!(
        "{GRANT_SELECT} WHERE g.environment_id = $1 AND g.id = $2"
    ))
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .map(|g| grant_view(g, Utc::now()))
    .ok_or_else(|| AppError::not_found("credit grant", id))
}

/// The company of the caller's environment named by `company_id`, or 404.
async fn require_company(
    conn: &mut PgConnection,
    auth: &Auth,
    field: &str,
    id: &str,
) -> AppResult<()> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM companies WHERE environment_id = $1 AND id = $2)",
    )
    .bind(auth.env_id())
    .bind(id)
    .fetch_one(conn)
    .await?;
    if exists {
        Ok(())
    } else {
        Err(AppError::NotFound(format!(
            "{field}: company {id:?} not found"
        )))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CompanyGrantBody {
    company_id: String,
    credit_id: String,
    quantity: Option<f64>,
    reason: String,
    expires_at: Option<DateTime<Utc>>,
    bundle_id: Option<String>,
    credit_bundle_id: Option<String>,
}

#[utoipa::path(post, path = "/billing/credits/grants/company", tag = "credits", request_body = CompanyGrantBody,
    responses((status = 200, description = "The grant", body = super::openapi::Enveloped<GrantView>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn grant_to_company(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CompanyGrantBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    if !matches!(body.reason.as_str(), "free" | "purchased" | "adjustment") {
        return Err(AppError::bad_request(format!(
            "reason: {:?} is not free, purchased or adjustment",
            body.reason
        )));
    }
    let now = Utc::now();
    if body.expires_at.is_some_and(|e| e <= now) {
        return Err(AppError::bad_request("expires_at: must be in the future"));
    }
    let bundle_id = body
        .bundle_id
        .or(body.credit_bundle_id)
        .filter(|b| !b.is_empty());
    let mut tx = state.pool.begin().await?;
    require_company(&mut tx, &auth, "company_id", &body.company_id).await?;
    credits::require_credit(&mut tx, "credit_id", &body.credit_id).await?;
    let (micros, expires_at) = match &bundle_id {
        Some(b) => {
            let row: Option<(String, i64, Option<i32>)> = sqlx::query_as(
                "SELECT credit_id, quantity_micros, expiry_days FROM credit_bundles WHERE id = $1",
            )
            .bind(b)
            .fetch_optional(&mut *tx)
            .await?;
            let (credit, bundle_micros, days) = row.ok_or_else(|| {
                AppError::NotFound(format!("bundle_id: credit bundle {b:?} not found"))
            })?;
            if credit != body.credit_id {
                return Err(AppError::bad_request(format!(
                    "bundle_id: bundle {b:?} holds another credit type"
                )));
            }
            let micros = match body.quantity {
                Some(q) => credits_amount("quantity", q)?,
                None => bundle_micros,
            };
            let expiry = body
                .expires_at
                .or(days.map(|d| now + Duration::days(d as i64)));
            (micros, expiry)
        }
        None => {
            let q = body
                .quantity
                .ok_or_else(|| AppError::bad_request("quantity: required"))?;
            (credits_amount("quantity", q)?, body.expires_at)
        }
    };
    let id = credits::grant(
        &mut tx,
        &NewGrant {
            environment_id: auth.env_id().to_string(),
            company_id: body.company_id.clone(),
            credit_id: body.credit_id.clone(),
            micros,
            reason: body.reason.clone(),
            bundle_id,
            expires_at,
            ..Default::default()
        },
    )
    .await?
    .ok_or_else(|| AppError::Internal(anyhow::anyhow!("company grant insert returned no row")))?;
    state
        .commit(
            tx,
            &[Change::Credits {
                environment_id: auth.env_id().into(),
                company_id: body.company_id.clone(),
            }],
        )
        .await?;
    crate::metrics::WRITES.inc("credit_grants");
    tracing::info!(grant_id = %id, company_id = %body.company_id, micros, "credits granted");
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(
        grant(&mut conn, auth.env_id(), &id).await?,
    ))
}

fn company_id_param(query: &Query) -> AppResult<String> {
    query
        .get("company_id")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| AppError::bad_request("query parameter company_id: required"))
}

#[utoipa::path(get, path = "/billing/credits/grants/company/list", tag = "credits", params(super::openapi::PageParams, CompanyParam),
    responses((status = 200, description = "The company's grants, newest first", body = super::openapi::Enveloped<Vec<GrantView>>), super::openapi::Errors))]
pub async fn list_company_grants(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let company_id = company_id_param(&query)?;
    let mut conn = state.pool.acquire().await?;
    require_company(&mut conn, &auth, "company_id", &company_id).await?;
    let now = Utc::now();
    let rows: Vec<GrantView> = sqlx::query_as(&format!(
        "{GRANT_SELECT} WHERE g.environment_id = $1 AND g.company_id = $2
         ORDER BY g.created_at DESC, g.id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(auth.env_id())
    .bind(&company_id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let data: Vec<GrantView> = rows.into_iter().map(|g| grant_view(g, now)).collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct ZeroOutBody {
    reason: Option<String>,
}

#[utoipa::path(put, path = "/billing/credits/grants/{id}/zero-out", tag = "credits", request_body(content = ZeroOutBody, description = "Optional"), params(("id" = String, Path, description = "A grant id, `bcgr_…`")),
    responses((status = 200, description = "The grant, zeroed", body = super::openapi::Enveloped<GrantView>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn zero_out(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> AppResult<Response> {
    auth.require_write()?;
    let bytes = super::extract::read_body(req, &state).await?;
    let body: ZeroOutBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        ZeroOutBody::default()
    } else {
        super::extract::parse_json(&bytes)?
    };
    let reason = body
        .reason
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "manual".into());
    let mut tx = state.pool.begin().await?;
    let company: Option<String> = sqlx::query_scalar(
        "SELECT company_id FROM credit_grants WHERE environment_id = $1 AND id = $2",
    )
    .bind(auth.env_id())
    .bind(&id)
    .fetch_optional(&mut *tx)
    .await?;
    let company = company.ok_or_else(|| AppError::not_found("credit grant", &id))?;
    credits::zero_out(&mut tx, &id, &reason).await?;
    state
        .commit(
            tx,
            &[Change::Credits {
                environment_id: auth.env_id().into(),
                company_id: company,
            }],
        )
        .await?;
    crate::metrics::WRITES.inc("credit_grants");
    let mut conn = state.pool.acquire().await?;
    Ok(envelope::ok_empty(
        grant(&mut conn, auth.env_id(), &id).await?,
    ))
}

/// `{credit_id, credit_key, granted, used, zeroed, remaining}` plus the SDK's fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    #[serde(flatten)]
    balance: credits::Balance,
    reserved: f64,
    settled: f64,
    source: &'static str,
}

#[utoipa::path(get, path = "/billing/credits/balance", tag = "credits", params(CompanyParam),
    responses((status = 200, description = "Per credit type: granted, used, zeroed, remaining", body = super::openapi::Enveloped<Vec<BalanceView>>), super::openapi::Errors))]
pub async fn balance(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let company_id = company_id_param(&query)?;
    let mut conn = state.pool.acquire().await?;
    require_company(&mut conn, &auth, "company_id", &company_id).await?;
    let rows = credits::balances(&mut conn, &company_id, Utc::now()).await?;
    let data: Vec<BalanceView> = rows
        .into_iter()
        .map(|b| BalanceView {
            settled: b.used,
            balance: b,
            reserved: 0.0,
            source: "entitled",
        })
        .collect();
    Ok(envelope::ok(data, query.params(None)))
}

/// A ledger row: `{id, company_id, credit_id, grant_id, event_type, amount, reason,
/// feature_id, usage_event_id, created_at}`.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerView {
    id: String,
    company_id: String,
    credit_id: String,
    grant_id: String,
    event_type: String,
    #[serde(skip)]
    amount_micros: i64,
    #[sqlx(skip)]
    amount: f64,
    reason: String,
    feature_id: Option<String>,
    usage_event_id: Option<String>,
    created_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/billing/credits/ledger", tag = "credits", params(super::openapi::PageParams, LedgerParams),
    responses((status = 200, description = "Ledger rows, newest first", body = super::openapi::Enveloped<Vec<LedgerView>>), super::openapi::Errors))]
pub async fn ledger(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let company_id = company_id_param(&query)?;
    let mut conn = state.pool.acquire().await?;
    require_company(&mut conn, &auth, "company_id", &company_id).await?;
    let rows: Vec<LedgerView> = sqlx::query_as(
        "SELECT id, company_id, credit_id, grant_id, event_type, amount_micros, reason, feature_id,
                usage_event_id, created_at
         FROM credit_ledger WHERE environment_id = $1 AND company_id = $2
           AND ($3::text IS NULL OR credit_id = $3)
         ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5",
    )
    .bind(auth.env_id())
    .bind(&company_id)
    .bind(query.get("credit_id"))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let data: Vec<LedgerView> = rows
        .into_iter()
        .map(|mut r| {
            r.amount = from_micros(r.amount_micros);
            r
        })
        .collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}
