//! `/billing/credits/plan-grants`: the credits a plan includes each period. The
//! `grant_credits` job issues them to the plan's companies.

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
use crate::engine::period::{ResetCadence, ResetStart};
use crate::store::credit_plan_grants::{
    self as store, NewPlanGrant, PlanGrantRow, PlanGrantUpdate,
};
use crate::store::credit_types::require_credit_type;
use crate::store::credits::from_micros;

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PlanGrantListParams {
    plan_id: Option<String>,
    plan_ids: Option<Vec<String>>,
    credit_id: Option<String>,
}

/// `BillingPlanCreditGrantResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanGrantView {
    id: String,
    plan_id: String,
    plan_name: String,
    credit_id: String,
    credit_name: String,
    credit_amount: f64,
    reset_cadence: String,
    reset_start: String,
    expiry: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    auto_topup_availability: &'static str,
    auto_topup_enabled: bool,
    auto_topup_self_service: bool,
    billing_mode: &'static str,
    can_buy_bundles: bool,
    company_credit_amount: i64,
    postpaid_enabled: bool,
    price_tiers: Vec<Value>,
    rollover_percentage: i64,
    scaling: &'static str,
    warning_tiers: Vec<Value>,
}

impl From<PlanGrantRow> for PlanGrantView {
    fn from(g: PlanGrantRow) -> Self {
        PlanGrantView {
            rollover_percentage: if g.expiry == "never" { 100 } else { 0 },
            id: g.id,
            plan_id: g.plan_id,
            plan_name: g.plan_name,
            credit_id: g.credit_id,
            credit_name: g.credit_name,
            credit_amount: from_micros(g.amount_micros),
            reset_cadence: g.reset_cadence,
            reset_start: g.reset_start,
            expiry: g.expiry,
            created_at: g.created_at,
            updated_at: g.updated_at,
            auto_topup_availability: "off",
            auto_topup_enabled: false,
            auto_topup_self_service: false,
            billing_mode: "granted",
            can_buy_bundles: false,
            company_credit_amount: 0,
            postpaid_enabled: false,
            price_tiers: Vec::new(),
            scaling: "fixed",
            warning_tiers: Vec::new(),
        }
    }
}

resource::resource!(PlanGrants: PlanGrantView, "plan credit grant", "plan_credit_grants", None,
    |conn, _state, _auth, id| {
        Ok(store::plan_grant(conn, id).await?.map(PlanGrantView::from))
    }
);

#[utoipa::path(get, path = "/billing/credits/plan-grants", tag = "credits", params(openapi::PageParams, PlanGrantListParams),
    responses((status = 200, description = "Plan credit grants, newest first", body = openapi::Enveloped<Vec<PlanGrantView>>), openapi::Errors))]
pub async fn list_plan_grants(
    State(state): State<AppState>,
    _auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let mut plan_ids = query.get_all("plan_ids");
    plan_ids.extend(query.get("plan_id").map(str::to_string));
    let mut conn = state.pool.acquire().await?;
    let rows = store::list_plan_grants(
        &mut conn,
        &plan_ids,
        query.get("credit_id"),
        page.limit,
        page.offset,
    )
    .await?;
    Ok(envelope::ok(
        rows.into_iter()
            .map(PlanGrantView::from)
            .collect::<Vec<_>>(),
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
    responses((status = 200, description = "The plan credit grant, created", body = openapi::Enveloped<PlanGrantView>), openapi::Errors))]
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
    let amount_micros = credits_amount(
        "credit_amount",
        body.credit_amount
            .ok_or_else(|| AppError::bad_request("credit_amount: required"))?,
    )?;
    let reset_cadence = body.reset_cadence.unwrap_or_else(|| "monthly".into());
    let reset_start = body.reset_start.unwrap_or_else(|| "billing_period".into());
    let expiry = body.expiry.unwrap_or_else(|| "period_end".into());
    validate_plan_grant_fields(Some(&reset_cadence), Some(&reset_start), Some(&expiry))?;
    let mut edit = Edit::<PlanGrants>::begin(&state, &auth).await?;
    // The plan first, then the credit type: a request naming neither hears about the plan.
    crate::store::companies::plan_type(&mut edit.tx, "plan_id", &plan_id).await?;
    require_credit_type(&mut edit.tx, "credit_id", &credit_id).await?;
    let id = store::insert_plan_grant(
        &mut edit.tx,
        &NewPlanGrant {
            plan_id,
            credit_id,
            amount_micros,
            reset_cadence,
            reset_start,
            expiry,
        },
    )
    .await?;
    // The snapshot holds no plan grants (the job reads them): nothing to publish.
    edit.commit(Some(&id), vec![]).await?;
    tracing::info!(plan_grant_id = %id, "plan credit grant created");
    resource::show::<PlanGrants>(&state, &auth, &id).await
}

#[utoipa::path(get, path = "/billing/credits/plan-grants/{id}", tag = "credits", params(("id" = String, Path, description = "A plan credit grant id, `bcpg_…`")),
    responses((status = 200, description = "The plan credit grant", body = openapi::Enveloped<PlanGrantView>), openapi::Errors))]
pub async fn get_plan_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<PlanGrants>(&state, &auth, &id).await
}

#[utoipa::path(put, path = "/billing/credits/plan-grants/{id}", tag = "credits", request_body = PlanGrantBody, params(("id" = String, Path, description = "A plan credit grant id, `bcpg_…`")),
    responses((status = 200, description = "The plan credit grant, updated", body = openapi::Enveloped<PlanGrantView>), openapi::Errors))]
#[tracing::instrument(skip_all, fields(plan_grant_id = %id))]
pub async fn update_plan_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<PlanGrantBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let amount_micros = body
        .credit_amount
        .map(|a| credits_amount("credit_amount", a))
        .transpose()?;
    validate_plan_grant_fields(
        body.reset_cadence.as_deref(),
        body.reset_start.as_deref(),
        body.expiry.as_deref(),
    )?;
    let update = PlanGrantUpdate {
        amount_micros,
        reset_cadence: body.reset_cadence,
        reset_start: body.reset_start,
        expiry: body.expiry,
    };
    let mut edit = Edit::<PlanGrants>::begin(&state, &auth).await?;
    if !store::update_plan_grant(&mut edit.tx, &id, &update).await? {
        return Err(AppError::not_found("plan credit grant", &id));
    }
    edit.commit(Some(&id), vec![]).await?;
    resource::show::<PlanGrants>(&state, &auth, &id).await
}

#[utoipa::path(delete, path = "/billing/credits/plan-grants/{id}", tag = "credits", params(("id" = String, Path, description = "A plan credit grant id, `bcpg_…`")),
    responses((status = 200, description = "Deleted", body = openapi::Enveloped<openapi::Deleted>), openapi::Errors))]
pub async fn delete_plan_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<PlanGrants>::begin(&state, &auth).await?;
    if !store::delete_plan_grant(&mut edit.tx, &id).await? {
        return Err(AppError::not_found("plan credit grant", &id));
    }
    edit.commit(None, vec![]).await?;
    Ok(envelope::deleted())
}
