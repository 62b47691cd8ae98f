//! `/plans`: base plans and add-ons. Catalog objects, shared by every environment; every
//! write invalidates the catalog snapshot.

use std::collections::HashMap;

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
use super::plan_entitlements::{self, FeatureView, PlanEntitlementView};
use super::resource::{self, Edit};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::catalog;
use crate::store::plans::{self as store, EntitlementFilter, PlanFields, PlanFilter};
use crate::store::Conn;

/// `PreviewObject`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanPreview {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// `FeatureInPlanResponseData`: a feature the plan has an entitlement for. `flags` is left
/// empty here (read them from `/flags`); `plans` lists every plan entitling the feature.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureInPlan {
    #[serde(flatten)]
    pub feature: FeatureView,
    pub flags: Vec<Value>,
    pub plans: Vec<PlanPreview>,
}

/// `PlanDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub plan_type: String,
    pub icon: &'static str,
    /// The Stripe product whose subscriptions put companies on this plan.
    pub billing_product_id: Option<String>,
    /// `provider_managed` (Stripe) with a billing product, else `no_billing`.
    pub billing_strategy: &'static str,
    /// `recurring` (Stripe subscriptions) with a billing product, else `none`.
    pub charge_type: &'static str,
    /// `stripe` with a billing product, else `schematic` (assigned through this API).
    pub controlled_by: &'static str,
    /// Companies of the caller's environment currently on the plan.
    pub company_count: i64,
    /// True for the caller's environment's `fallback_plan`.
    pub is_default: bool,
    pub is_trialable: bool,
    pub features: Vec<FeatureInPlan>,
    pub entitlements: Vec<PlanEntitlementView>,
    pub credits: Vec<Value>,
    pub currency_prices: Vec<Value>,
    pub versions: Vec<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Full views of `ids`, in that order (ids not found are skipped).
pub async fn details(conn: &mut Conn, auth: &Auth, ids: &[String]) -> AppResult<Vec<PlanView>> {
    let env_id = auth.env_id();
    let rows = store::rows(conn, ids).await?;
    let counts = store::company_counts(conn, env_id, ids).await?;
    let filter = EntitlementFilter {
        plan_ids: ids.to_vec(),
        ..Default::default()
    };
    let mut entitlements = plan_entitlements::fetch(conn, env_id, &filter).await?;
    // Oldest first within a plan reads more naturally.
    entitlements.reverse();
    let feature_ids: Vec<String> = entitlements.iter().map(|e| e.feature_id.clone()).collect();
    let entitling = catalog::plans_of_features(conn, &feature_ids).await?;
    let mut plans_by_feature: HashMap<String, Vec<PlanPreview>> = HashMap::new();
    for (feature_id, id, name, description) in entitling {
        plans_by_feature
            .entry(feature_id)
            .or_default()
            .push(PlanPreview {
                id,
                name,
                description,
            });
    }

    let fallback = &auth.env.config.fallback_plan;
    let mut by_id: HashMap<String, PlanView> = rows
        .into_iter()
        .map(|r| {
            let billed = r.billing_product_id.is_some();
            let view = PlanView {
                company_count: counts.get(&r.id).copied().unwrap_or(0),
                is_default: !fallback.is_empty() && *fallback == r.key,
                id: r.id.clone(),
                key: r.key,
                name: r.name,
                description: r.description,
                plan_type: r.plan_type,
                icon: "",
                billing_product_id: r.billing_product_id,
                billing_strategy: if billed {
                    "provider_managed"
                } else {
                    "no_billing"
                },
                charge_type: if billed { "recurring" } else { "none" },
                controlled_by: if billed { "stripe" } else { "schematic" },
                is_trialable: false,
                features: Vec::new(),
                entitlements: Vec::new(),
                credits: Vec::new(),
                currency_prices: Vec::new(),
                versions: Vec::new(),
                created_at: r.created_at,
                updated_at: r.updated_at,
            };
            (r.id, view)
        })
        .collect();
    for e in entitlements {
        if let Some(v) = by_id.get_mut(&e.plan_id) {
            v.features.push(FeatureInPlan {
                feature: e.feature.clone(),
                flags: Vec::new(),
                plans: plans_by_feature
                    .get(&e.feature_id)
                    .cloned()
                    .unwrap_or_default(),
            });
            v.entitlements.push(e);
        }
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

resource::resource!(Plans: PlanView, "plan", "plans", Some(&emit::PLAN),
    |conn, _state, auth, id| {
        Ok(details(conn, auth, &[id.to_string()]).await?.pop())
    }
);

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Only these plan ids.
    ids: Option<Vec<String>>,
    /// `plan` or `add_on`.
    plan_type: Option<String>,
    /// Matches the name or key.
    q: Option<String>,
    /// Only plans with (or without) a Stripe product.
    has_product_id: Option<bool>,
}

#[utoipa::path(get, path = "/plans", tag = "plans",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Plans, newest first", body = Enveloped<Vec<PlanView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let plan_type = query.get("plan_type").filter(|s| !s.is_empty());
    if let Some(t) = plan_type {
        store::validate_plan_type(t)?;
    }
    let filter = PlanFilter {
        ids: query.get_all("ids"),
        plan_type: plan_type.map(str::to_string),
        q: query.non_empty("q"),
        has_product_id: query.bool("has_product_id")?,
    };
    let mut conn = state.pool.acquire().await?;
    let ids = store::list_ids(&mut conn, &filter, page.limit, page.offset).await?;
    let data = details(&mut conn, &auth, &ids).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "A plan id, `plan_…`")),
    responses((status = 200, description = "The plan", body = Enveloped<PlanView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, plan_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Plans>(&state, &auth, &id).await
}

/// `null` and absent mean the same. The SDK sends `icon`, which entitled does not keep.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreatePlanRequestBody)]
#[schema(example = json!({"name": "Team", "plan_type": "plan", "description": "For small teams"}))]
pub struct CreateBody {
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    #[schema(value_type = super::openapi::PlanType)]
    plan_type: String,
    /// Derived from `name` when absent (the SDK never sends one): `"Pro Plan"` → `pro-plan`,
    /// then `pro-plan-2`, … if taken.
    key: Option<String>,
    description: Option<String>,
    billing_product_id: Option<String>,
}

/// `""` means none.
fn product_id(id: Option<String>) -> AppResult<Option<String>> {
    match id.filter(|s| !s.is_empty()) {
        Some(id) => {
            store::validate_billing_product_id(&id)?;
            Ok(Some(id))
        }
        None => Ok(None),
    }
}

#[utoipa::path(post, path = "/plans", tag = "plans", request_body = CreateBody,
    responses((status = 200, description = "The plan, created", body = Enveloped<PlanView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    catalog::validate_name("name", &body.name)?;
    store::validate_plan_type(&body.plan_type)?;
    let key = body.key.filter(|k| !k.is_empty());
    if let Some(k) = &key {
        catalog::validate_key("key", k)?;
    }
    let billing_product_id = product_id(body.billing_product_id)?;
    let mut edit = Edit::<Plans>::begin(&state, &auth).await?;
    let key = match key {
        Some(k) => k,
        None => store::free_key(&mut edit.tx, &store::key_from_name(&body.name)).await?,
    };
    let plan = store::insert(
        &mut edit.tx,
        &PlanFields {
            key,
            name: body.name,
            description: body.description.unwrap_or_default(),
            plan_type: body.plan_type,
            billing_product_id,
        },
    )
    .await?;
    edit.commit(Some(&plan.id), vec![Change::Catalog]).await?;
    tracing::info!(plan_id = %plan.id, key = %plan.key, "plan created");
    resource::show::<Plans>(&state, &auth, &plan.id).await
}

/// Absent or `null` fields keep their value; `billing_product_id: ""` unlinks the product.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdatePlanRequestBody)]
#[schema(example = json!({"description": "For growing teams"}))]
pub struct UpdateBody {
    name: Option<String>,
    key: Option<String>,
    description: Option<String>,
    #[schema(value_type = Option<super::openapi::PlanType>)]
    plan_type: Option<String>,
    billing_product_id: Option<String>,
}

#[utoipa::path(put, path = "/plans/{id}", tag = "plans", request_body = UpdateBody,
    params(("id" = String, Path, description = "A plan id, `plan_…`")),
    responses((status = 200, description = "The plan, updated", body = Enveloped<PlanView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, plan_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<UpdateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    if let Some(name) = &body.name {
        catalog::validate_name("name", name)?;
    }
    if let Some(t) = &body.plan_type {
        store::validate_plan_type(t)?;
    }
    let key = body.key.filter(|k| !k.is_empty());
    if let Some(k) = &key {
        catalog::validate_key("key", k)?;
    }
    let mut edit = Edit::<Plans>::of(&state, &auth, &id).await?;
    let current = store::get_for_update(&mut edit.tx, &id)
        .await?
        .ok_or_else(|| AppError::not_found("plan", &id))?;
    if let Some(t) = body.plan_type.as_ref().filter(|t| **t != current.plan_type) {
        // Memberships record base plan vs add-on; they would contradict the new type.
        let n = store::active_companies(&mut edit.tx, &id).await?;
        if n > 0 {
            return Err(AppError::Conflict(format!(
                "plan_type: cannot change plan {id:?} to {t} while {n} companies (across all environments) are on it"
            )));
        }
    }
    let billing_product_id = match body.billing_product_id {
        Some(p) => product_id(Some(p))?,
        None => current.billing_product_id,
    };
    let plan = store::update(
        &mut edit.tx,
        &id,
        &PlanFields {
            key: key.unwrap_or(current.key),
            name: body.name.unwrap_or(current.name),
            description: body.description.unwrap_or(current.description),
            plan_type: body.plan_type.unwrap_or(current.plan_type),
            billing_product_id,
        },
    )
    .await?;
    edit.commit(Some(&id), vec![Change::Catalog]).await?;
    tracing::info!(key = %plan.key, "plan updated");
    resource::show::<Plans>(&state, &auth, &id).await
}

#[utoipa::path(delete, path = "/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "A plan id, `plan_…`")),
    responses((status = 200, description = "Deleted", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, plan_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Plans>::of(&state, &auth, &id).await?;
    if store::get_for_update(&mut edit.tx, &id).await?.is_none() {
        return Err(AppError::not_found("plan", &id));
    }
    let n = store::active_companies(&mut edit.tx, &id).await?;
    if n > 0 {
        return Err(AppError::Conflict(format!(
            "plan {id:?} has {n} companies on it (across all environments); move them to another plan first"
        )));
    }
    store::delete(&mut edit.tx, &id).await?;
    edit.commit(None, vec![Change::Catalog]).await?;
    tracing::info!("plan deleted");
    Ok(envelope::deleted())
}
