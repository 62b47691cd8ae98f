//! `/plan-entitlements`: what a plan grants for one feature. Catalog objects, shared by every
//! environment; every write invalidates the catalog snapshot.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Auth;
use super::emit;
use super::envelope;
use super::extract::{Json, Path, Query};
use super::openapi::{Deleted, Enveloped, Errors};
use super::overrides::{value_body, value_input};
use super::resource::{self, Edit, Resource};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::catalog::JoinedFeature;
use crate::store::companies::plan_type;
use crate::store::plans::{self as store, Billing, EntitlementFilter};
use crate::store::values::{EntitlementValues, ValueInput};
use crate::store::Conn;

/// `FeatureResponseData`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = FeatureResponseData)]
pub struct FeatureView {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub feature_type: String,
    /// Usage of event features comes from tracked events.
    pub event_source: &'static str,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
    pub icon: &'static str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl FeatureView {
    /// The view of a feature joined into another row; `id` is that row's `feature_id`.
    pub fn joined(id: String, f: JoinedFeature) -> Self {
        FeatureView {
            id,
            key: f.key,
            name: f.name,
            description: f.description,
            feature_type: f.feature_type,
            event_source: "track",
            event_subtype: f.event_subtype,
            trait_id: f.trait_id,
            icon: "",
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

/// `PlanResponseData`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanSummary {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub plan_type: String,
    pub icon: &'static str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PlanEntitlementResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanEntitlementView {
    pub id: String,
    pub plan_id: String,
    pub feature_id: String,
    pub environment_id: String,
    /// Checks name this id as the matching rule.
    pub rule_id: String,
    #[serde(flatten)]
    pub values: EntitlementValues,
    /// The SDK's name for `credit_consumption_rate`.
    pub consumption_rate: Option<f64>,
    /// `price_behavior`, `monthly_metered_price_id`, `yearly_metered_price_id`, `soft_limit`.
    #[serde(flatten)]
    pub billing: Billing,
    /// The SDK's expanded metered prices: not expanded here (the ids are above).
    #[schema(value_type = Option<Object>)]
    pub metered_monthly_price: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub metered_yearly_price: Option<Value>,
    pub feature: FeatureView,
    pub plan: PlanSummary,
    pub currency_prices: Vec<Value>,
    pub warning_tiers: Vec<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Entitlements with their feature and plan, newest first.
pub async fn fetch(
    conn: &mut Conn,
    env_id: &str,
    filter: &EntitlementFilter,
) -> AppResult<Vec<PlanEntitlementView>> {
    let rows = store::list_entitlements(conn, filter).await?;
    Ok(rows
        .into_iter()
        .map(|r| PlanEntitlementView {
            environment_id: env_id.to_string(),
            rule_id: r.id.clone(),
            consumption_rate: r.values.credit_consumption_rate,
            feature: FeatureView::joined(r.feature_id.clone(), r.feature),
            plan: PlanSummary {
                id: r.plan_id.clone(),
                key: r.p_key,
                name: r.p_name,
                description: r.p_description,
                plan_type: r.p_plan_type,
                icon: "",
                created_at: r.p_created_at,
                updated_at: r.p_updated_at,
            },
            id: r.id,
            plan_id: r.plan_id,
            feature_id: r.feature_id,
            values: r.values,
            billing: r.billing,
            metered_monthly_price: None,
            metered_yearly_price: None,
            currency_prices: Vec::new(),
            warning_tiers: Vec::new(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

resource::resource!(PlanEntitlements: PlanEntitlementView, "plan entitlement", "plan_entitlements", Some(&emit::PLAN_ENTITLEMENT),
    |conn, _state, auth, id| {
        let filter = EntitlementFilter {
            ids: vec![id.to_string()],
            ..Default::default()
        };
        Ok(fetch(conn, auth.env_id(), &filter).await?.pop())
    }
);

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    ids: Option<Vec<String>>,
    plan_id: Option<String>,
    plan_ids: Option<Vec<String>>,
    feature_id: Option<String>,
    feature_ids: Option<Vec<String>>,
    /// Matches the feature's or plan's name or key.
    q: Option<String>,
}

#[utoipa::path(get, path = "/plan-entitlements", tag = "plan-entitlements",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Plan entitlements, newest first", body = Enveloped<Vec<PlanEntitlementView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let filter = EntitlementFilter {
        ids: query.get_all("ids"),
        plan_ids: query.get_one_and_all("plan_id", "plan_ids"),
        feature_ids: query.get_one_and_all("feature_id", "feature_ids"),
        q: query.non_empty("q"),
        limit: Some(page.limit),
        offset: page.offset,
    };
    let mut conn = state.pool.acquire().await?;
    let data = fetch(&mut conn, auth.env_id(), &filter).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/plan-entitlements/{id}", tag = "plan-entitlements",
    params(("id" = String, Path, description = "A plan entitlement id, `pltl_…`")),
    responses((status = 200, description = "The plan entitlement", body = Enveloped<PlanEntitlementView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, entitlement_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<PlanEntitlements>(&state, &auth, &id).await
}

value_body! {
    /// The body of a create.
    #[derive(Default, Deserialize, utoipa::ToSchema)]
    #[schema(as = CreatePlanEntitlementRequestBody)]
    pub struct CreateBody {
        pub plan_id: String,
        pub feature_id: String,
        ;
        #[schema(value_type = Option<super::openapi::PriceBehavior>)]
        pub price_behavior: Option<String>,
        /// A Stripe price id whose `recurring.meter` is set: where billable usage is reported.
        pub monthly_metered_price_id: Option<String>,
        pub yearly_metered_price_id: Option<String>,
        /// With `pay_as_you_go` / `overage`: usage at or above this is denied (≥ the allocation).
        pub soft_limit: Option<i64>,
    }
}

/// A text field of an update: absent or `null` keeps the current value; `""` clears it.
fn keep_or_clear(new: Option<String>, current: Option<String>) -> Option<String> {
    match new {
        None => current,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s),
    }
}

/// The billing fields as they will be stored, checked: known behaviour, a metered price for
/// the behaviours that bill, prices on a meter in the key's environment, a soft limit not
/// below the allocation. Errors name the field.
async fn billing(
    conn: &mut Conn,
    auth: &Auth,
    billing: Billing,
    values: &crate::store::values::EntitlementValues,
) -> AppResult<Billing> {
    let allocation = (values.value_type == "numeric")
        .then_some(values.value_numeric)
        .flatten();
    billing.validate(allocation)?;
    for (field, id) in [
        (
            "monthly_metered_price_id",
            &billing.monthly_metered_price_id,
        ),
        ("yearly_metered_price_id", &billing.yearly_metered_price_id),
    ] {
        if let Some(id) = id {
            crate::store::meters::validate_metered_price(conn, auth.env_id(), field, id).await?;
        }
    }
    Ok(billing)
}

#[utoipa::path(post, path = "/plan-entitlements", tag = "plan-entitlements", request_body = CreateBody,
    responses((status = 200, description = "The plan entitlement, created", body = Enveloped<PlanEntitlementView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<PlanEntitlements>::begin(&state, &auth).await?;
    let written = create_in(&mut edit.tx, &state, &auth, body, edit.watch).await?;
    let id = written.id.clone();
    edit.finish(written).await?;
    tracing::info!(entitlement_id = %id, "plan entitlement created");
    resource::show::<PlanEntitlements>(&state, &auth, &id).await
}

/// Creates a plan entitlement in `tx` with the API's validation; the caller commits.
pub async fn create_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    body: CreateBody,
    views: bool,
) -> AppResult<emit::Written> {
    let input = value_input!(body);
    let requested = Billing {
        price_behavior: keep_or_clear(body.price_behavior, None),
        monthly_metered_price_id: keep_or_clear(body.monthly_metered_price_id, None),
        yearly_metered_price_id: keep_or_clear(body.yearly_metered_price_id, None),
        soft_limit: body.soft_limit,
    };
    plan_type(tx, "plan_id", &body.plan_id).await?;
    let feature_type = store::feature_type(tx, "feature_id", &body.feature_id).await?;
    let values = input.resolve(None, feature_type)?;
    let billing = billing(tx, auth, requested, &values).await?;
    let id =
        store::insert_entitlement(tx, &body.plan_id, &body.feature_id, &values, &billing).await?;
    let after = emit::view(views, PlanEntitlements::find_in(tx, state, auth, &id)).await?;
    Ok(emit::Written {
        id,
        company_id: None,
        before: None,
        after,
        changes: vec![Change::Catalog],
    })
}

value_body! {
    /// Absent or `null` fields keep their current value.
    #[derive(Deserialize, utoipa::ToSchema)]
    #[schema(as = UpdatePlanEntitlementRequestBody)]
    pub struct UpdateBody {
        ;
        #[schema(value_type = Option<super::openapi::PriceBehavior>)]
        price_behavior: Option<String>,
        /// `""` clears it.
        monthly_metered_price_id: Option<String>,
        /// `""` clears it.
        yearly_metered_price_id: Option<String>,
        soft_limit: Option<i64>,
    }
}

#[utoipa::path(put, path = "/plan-entitlements/{id}", tag = "plan-entitlements", request_body = UpdateBody,
    params(("id" = String, Path, description = "A plan entitlement id, `pltl_…`")),
    responses((status = 200, description = "The plan entitlement, updated", body = Enveloped<PlanEntitlementView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, entitlement_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<UpdateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let input = value_input!(body);
    let mut edit = Edit::<PlanEntitlements>::of(&state, &auth, &id).await?;
    let current = store::entitlement_for_update(&mut edit.tx, &id)
        .await?
        .ok_or_else(|| AppError::not_found("plan entitlement", &id))?;
    let feature_type = store::feature_type(&mut edit.tx, "feature_id", &current.feature_id).await?;
    let values = input.resolve(Some(&current.values), feature_type)?;
    let requested = Billing {
        price_behavior: keep_or_clear(body.price_behavior, current.billing.price_behavior),
        monthly_metered_price_id: keep_or_clear(
            body.monthly_metered_price_id,
            current.billing.monthly_metered_price_id,
        ),
        yearly_metered_price_id: keep_or_clear(
            body.yearly_metered_price_id,
            current.billing.yearly_metered_price_id,
        ),
        soft_limit: body.soft_limit.or(current.billing.soft_limit),
    };
    let billing = billing(&mut edit.tx, &auth, requested, &values).await?;
    store::update_entitlement(&mut edit.tx, &id, &values, &billing).await?;
    edit.commit(Some(&id), vec![Change::Catalog]).await?;
    tracing::info!("plan entitlement updated");
    resource::show::<PlanEntitlements>(&state, &auth, &id).await
}

#[utoipa::path(delete, path = "/plan-entitlements/{id}", tag = "plan-entitlements",
    params(("id" = String, Path, description = "A plan entitlement id, `pltl_…`")),
    responses((status = 200, description = "Deleted", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, entitlement_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<PlanEntitlements>::begin(&state, &auth).await?;
    let written = delete_in(&mut edit.tx, &state, &auth, &id, edit.watch).await?;
    edit.finish(written).await?;
    tracing::info!("plan entitlement deleted");
    Ok(envelope::deleted())
}

/// Deletes plan entitlement `id` in `tx`; the caller commits.
pub async fn delete_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    id: &str,
    views: bool,
) -> AppResult<emit::Written> {
    let before = emit::view(views, PlanEntitlements::find_in(tx, state, auth, id)).await?;
    if !store::delete_entitlement(tx, id).await? {
        return Err(AppError::not_found("plan entitlement", id));
    }
    Ok(emit::Written {
        id: id.to_string(),
        company_id: None,
        before,
        after: None,
        changes: vec![Change::Catalog],
    })
}
