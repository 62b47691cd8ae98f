//! `/billing/credits/grants…`, `/billing/credits/balance` and `/billing/credits/ledger`: a
//! company's grants (granting, listing, zeroing out), its balance per credit type and its
//! ledger. Grants belong to the caller's environment.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::credits_amount;
use crate::api::auth::Auth;
use crate::api::envelope;
use crate::api::error::{AppError, AppResult};
use crate::api::extract::{self, Json, Path, Query};
use crate::api::openapi;
use crate::api::resource::{self, Edit};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::credit_bundles::bundle_terms;
use crate::store::credit_types::require_credit_type;
use crate::store::credits::{
    self as store, from_micros, CreditBalanceRow, GrantRow, LedgerRow, NewGrant,
};
use crate::store::overrides::require_company;

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

/// `CreditCompanyGrantView`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    quantity: f64,
    quantity_used: f64,
    quantity_zeroed: f64,
    quantity_remaining: f64,
    renewal_enabled: bool,
    source_label: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl GrantView {
    /// The grant as of `now`: nothing remains of an expired grant.
    fn new(g: GrantRow, now: DateTime<Utc>) -> GrantView {
        let expired = g.expires_at.is_some_and(|e| e <= now);
        let is_plan = g.source == "plan";
        GrantView {
            quantity: from_micros(g.granted_micros),
            quantity_used: from_micros(g.used_micros),
            quantity_zeroed: from_micros(g.zeroed_micros),
            quantity_remaining: if expired {
                0.0
            } else {
                from_micros(g.granted_micros - g.used_micros - g.zeroed_micros)
            },
            renewal_enabled: is_plan,
            source_label: if is_plan {
                "Plan grant".into()
            } else {
                format!("Company grant ({})", g.reason)
            },
            id: g.id,
            company_id: g.company_id,
            company_name: g.company_name,
            credit_id: g.credit_id,
            credit_name: g.credit_name,
            source: g.source,
            reason: g.reason,
            plan_credit_grant_id: g.plan_credit_grant_id,
            bundle_id: g.bundle_id,
            period_start: g.period_start,
            expires_at: g.expires_at,
            zeroed_at: g.zeroed_at,
            zero_reason: g.zero_reason,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

resource::resource!(Grants: GrantView, "credit grant", "credit_grants", None,
    |conn, _state, auth, id| {
        Ok(store::grant_in_environment(conn, auth.env_id(), id)
            .await?
            .map(|g| GrantView::new(g, Utc::now())))
    }
);

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
    responses((status = 200, description = "The grant", body = openapi::Enveloped<GrantView>), openapi::Errors))]
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
    let mut edit = Edit::<Grants>::begin(&state, &auth).await?;
    require_company(&mut edit.tx, auth.env_id(), "company_id", &body.company_id).await?;
    require_credit_type(&mut edit.tx, "credit_id", &body.credit_id).await?;
    let (micros, expires_at) = match &bundle_id {
        Some(b) => {
            let terms = bundle_terms(&mut edit.tx, b).await?.ok_or_else(|| {
                AppError::NotFound(format!("bundle_id: credit bundle {b:?} not found"))
            })?;
            if terms.credit_id != body.credit_id {
                return Err(AppError::bad_request(format!(
                    "bundle_id: bundle {b:?} holds another credit type"
                )));
            }
            let micros = match body.quantity {
                Some(q) => credits_amount("quantity", q)?,
                None => terms.quantity_micros,
            };
            let expiry = body
                .expires_at
                .or(terms.expiry_days.map(|d| now + Duration::days(d as i64)));
            (micros, expiry)
        }
        None => {
            let q = body
                .quantity
                .ok_or_else(|| AppError::bad_request("quantity: required"))?;
            (credits_amount("quantity", q)?, body.expires_at)
        }
    };
    let id = store::grant(
        &mut edit.tx,
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
    edit.commit(
        Some(&id),
        vec![Change::credits(auth.env_id(), &body.company_id)],
    )
    .await?;
    tracing::info!(grant_id = %id, company_id = %body.company_id, micros, "credits granted");
    resource::show::<Grants>(&state, &auth, &id).await
}

/// The company a listing's `company_id` names (a 400 when absent, a 404 when it is not the
/// caller's environment's), with a connection to read it with.
async fn company_of_query(
    state: &AppState,
    auth: &Auth,
    query: &Query,
) -> AppResult<(String, sqlx::pool::PoolConnection<sqlx::Postgres>)> {
    let company_id = query
        .get("company_id")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| AppError::bad_request("query parameter company_id: required"))?;
    let mut conn = state.pool.acquire().await?;
    require_company(&mut conn, auth.env_id(), "company_id", &company_id).await?;
    Ok((company_id, conn))
}

#[utoipa::path(get, path = "/billing/credits/grants/company/list", tag = "credits", params(openapi::PageParams, CompanyParam),
    responses((status = 200, description = "The company's grants, newest first", body = openapi::Enveloped<Vec<GrantView>>), openapi::Errors))]
pub async fn list_company_grants(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let (company_id, mut conn) = company_of_query(&state, &auth, &query).await?;
    let now = Utc::now();
    let rows = store::grants_of_company(
        &mut conn,
        auth.env_id(),
        &company_id,
        page.limit,
        page.offset,
    )
    .await?;
    let data: Vec<GrantView> = rows.into_iter().map(|g| GrantView::new(g, now)).collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct ZeroOutBody {
    reason: Option<String>,
}

#[utoipa::path(put, path = "/billing/credits/grants/{id}/zero-out", tag = "credits", request_body(content = ZeroOutBody, description = "Optional"), params(("id" = String, Path, description = "A grant id, `bcgr_…`")),
    responses((status = 200, description = "The grant, zeroed", body = openapi::Enveloped<GrantView>), openapi::Errors))]
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn zero_out(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> AppResult<Response> {
    auth.require_write()?;
    let bytes = extract::read_body(req, &state).await?;
    let body: ZeroOutBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        ZeroOutBody::default()
    } else {
        extract::parse_json(&bytes)?
    };
    let reason = body
        .reason
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "manual".into());
    let mut edit = Edit::<Grants>::begin(&state, &auth).await?;
    let company = store::company_of_grant(&mut edit.tx, auth.env_id(), &id)
        .await?
        .ok_or_else(|| AppError::not_found("credit grant", &id))?;
    store::zero_out(&mut edit.tx, &id, &reason).await?;
    edit.commit(Some(&id), vec![Change::credits(auth.env_id(), &company)])
        .await?;
    resource::show::<Grants>(&state, &auth, &id).await
}

/// `{credit_id, credit_key, granted, used, zeroed, remaining}` per credit type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Balance {
    credit_id: String,
    credit_key: String,
    credit_name: String,
    granted: f64,
    used: f64,
    zeroed: f64,
    /// What checks see now: unexpired grants only.
    remaining: f64,
}

/// `{credit_id, credit_key, granted, used, zeroed, remaining}` plus the SDK's fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    #[serde(flatten)]
    balance: Balance,
    reserved: f64,
    settled: f64,
    source: &'static str,
}

impl From<CreditBalanceRow> for BalanceView {
    fn from(b: CreditBalanceRow) -> Self {
        let used = from_micros(b.used_micros);
        BalanceView {
            balance: Balance {
                credit_id: b.credit_id,
                credit_key: b.credit_key,
                credit_name: b.credit_name,
                granted: from_micros(b.granted_micros),
                used,
                zeroed: from_micros(b.zeroed_micros),
                remaining: from_micros(b.remaining_micros),
            },
            reserved: 0.0,
            settled: used,
            source: "entitled",
        }
    }
}

#[utoipa::path(get, path = "/billing/credits/balance", tag = "credits", params(CompanyParam),
    responses((status = 200, description = "Per credit type: granted, used, zeroed, remaining", body = openapi::Enveloped<Vec<BalanceView>>), openapi::Errors))]
pub async fn balance(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let (company_id, mut conn) = company_of_query(&state, &auth, &query).await?;
    let rows = store::balance_of_company(&mut conn, &company_id, Utc::now()).await?;
    let data: Vec<BalanceView> = rows.into_iter().map(BalanceView::from).collect();
    Ok(envelope::ok(data, query.params(None)))
}

/// A ledger row: `{id, company_id, credit_id, grant_id, event_type, amount, reason,
/// feature_id, usage_event_id, created_at}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerView {
    id: String,
    company_id: String,
    credit_id: String,
    grant_id: String,
    event_type: String,
    amount: f64,
    reason: String,
    feature_id: Option<String>,
    usage_event_id: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<LedgerRow> for LedgerView {
    fn from(r: LedgerRow) -> Self {
        LedgerView {
            id: r.id,
            company_id: r.company_id,
            credit_id: r.credit_id,
            grant_id: r.grant_id,
            event_type: r.event_type,
            amount: from_micros(r.amount_micros),
            reason: r.reason,
            feature_id: r.feature_id,
            usage_event_id: r.usage_event_id,
            created_at: r.created_at,
        }
    }
}

#[utoipa::path(get, path = "/billing/credits/ledger", tag = "credits", params(openapi::PageParams, LedgerParams),
    responses((status = 200, description = "Ledger rows, newest first", body = openapi::Enveloped<Vec<LedgerView>>), openapi::Errors))]
pub async fn ledger(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let (company_id, mut conn) = company_of_query(&state, &auth, &query).await?;
    let rows = store::ledger_of_company(
        &mut conn,
        auth.env_id(),
        &company_id,
        query.get("credit_id"),
        page.limit,
        page.offset,
    )
    .await?;
    let data: Vec<LedgerView> = rows.into_iter().map(LedgerView::from).collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}
