//! `GET /feature-usage`: per feature, what the company is entitled to and how much it used,
//! evaluated now from the snapshot exactly as checks are.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::auth::Auth;
use super::envelope;
use super::extract::Query;
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::engine::RuleType;

/// `FeatureUsageResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureUsageView {
    pub access: bool,
    pub allocation: Option<i64>,
    pub allocation_type: &'static str,
    pub is_unlimited: bool,
    pub usage: Option<i64>,
    pub period: Option<&'static str>,
    pub month_reset: Option<&'static str>,
    pub metric_reset_at: Option<DateTime<Utc>>,
    /// `plan_entitlement` or `company_override`.
    pub entitlement_type: &'static str,
    pub entitlement_id: String,
    pub entitlement_expiration_date: Option<DateTime<Utc>>,
    pub credit_total: Option<f64>,
    pub credit_used: Option<f64>,
    pub credit_remaining: Option<f64>,
    pub feature: FeatureRef,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureRef {
    pub id: String,
    pub key: String,
    pub name: String,
    pub feature_type: &'static str,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
}

/// Every feature the company has an entitlement for, sorted by feature key.
pub fn usage_of(state: &AppState, auth: &Auth, company_id: &str) -> Vec<FeatureUsageView> {
    let Some(company) = auth.env.company(company_id) else {
        return Vec::new();
    };
    let catalog = state.cache.catalog();
    let now = Utc::now();
    let mut out: Vec<FeatureUsageView> = catalog
        .flags_by_key
        .values()
        .filter_map(|flag| {
            let feature = flag.feature.as_ref()?;
            let o = auth.env.check_resolved(
                &catalog,
                flag,
                Some((company_id.to_string(), company.clone())),
                None,
                now,
            );
            let e = o.evaluation.entitlement?;
            let entitlement_type = match o.evaluation.rule_type {
                RuleType::CompanyOverride | RuleType::CompanyOverrideUsageExceeded => {
                    "company_override"
                }
                _ => "plan_entitlement",
            };
            Some(FeatureUsageView {
                access: o.evaluation.value,
                allocation: e.allocation,
                allocation_type: e.value_type,
                is_unlimited: e.value_type == "unlimited",
                usage: e.usage,
                period: e.metric_period.map(|p| p.as_str()),
                month_reset: e.month_reset.map(|r| r.as_str()),
                metric_reset_at: e.metric_reset_at,
                entitlement_type,
                entitlement_id: o.evaluation.rule_id.unwrap_or_default(),
                entitlement_expiration_date: e.expires_at,
                credit_total: e.credit.map(|c| c.total),
                credit_used: e.credit.map(|c| c.used),
                credit_remaining: e.credit.map(|c| c.remaining),
                feature: FeatureRef {
                    id: feature.id.clone(),
                    key: feature.key.clone(),
                    name: feature.name.clone(),
                    feature_type: feature.feature_type.as_str(),
                    event_subtype: feature.event_subtype.clone(),
                    trait_id: feature.trait_id.clone(),
                },
            })
        })
        .collect();
    out.sort_by(|a, b| a.feature.key.cmp(&b.feature.key));
    out
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// The company, by id…
    company_id: Option<String>,
    /// …or by keys: `company_keys[<key>]=<value>`.
    #[param(style = DeepObject, explode)]
    company_keys: Option<std::collections::HashMap<String, String>>,
    /// Only these features.
    feature_ids: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/feature-usage", tag = "companies",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Per feature: access, allocation and usage", body = super::openapi::Enveloped<Vec<FeatureUsageView>>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let company_id = match query.get("company_id").filter(|s| !s.is_empty()) {
        Some(id) => {
            auth.env
                .company(id)
                .ok_or_else(|| AppError::not_found("company", id))?;
            id.to_string()
        }
        None => {
            let keys = query.key_map("company_keys")?;
            if keys.is_empty() {
                return Err(AppError::bad_request(
                    "send company_id or company_keys[<key>]=<value>",
                ));
            }
            auth.env
                .find_company(&keys)
                .map(|(id, _)| id)
                .ok_or_else(|| AppError::NotFound("no company has these company_keys".into()))?
        }
    };
    let feature_ids = query.get_all("feature_ids");
    let rows: Vec<FeatureUsageView> = usage_of(&state, &auth, &company_id)
        .into_iter()
        .filter(|r| feature_ids.is_empty() || feature_ids.contains(&r.feature.id))
        .skip(page.offset as usize)
        .take(page.limit as usize)
        .collect();
    Ok(envelope::ok(rows, query.params(Some(page))))
}
