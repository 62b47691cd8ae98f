//! `POST /flags/{key}/check` and `POST /flags/check`: answered from the in-memory snapshot,
//! never from Postgres. The decision itself is made by `engine::evaluate`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Auth;
use super::envelope::Envelope;
use super::extract::{parse_json, read_body, Path};
use super::openapi::{Enveloped, Errors};
use super::views::{key_pairs, EntitlementView};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::cache::{CheckOutcome, KeyMap};
use crate::engine::MetricPeriod;
use crate::metrics;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"company": {"id": "acme"}, "user": {"email": "ada@example.com"}}))]
pub struct CheckBody {
    /// Company keys, e.g. `{"id": "acme"}`; unknown keys evaluate with no company.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    company: Option<Map<String, Value>>,
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    user: Option<Map<String, Value>>,
}

/// `CheckFlagResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckView {
    pub flag: String,
    pub flag_id: String,
    pub value: bool,
    pub reason: String,
    pub rule_type: &'static str,
    pub rule_id: Option<String>,
    pub company_id: Option<String>,
    pub user_id: Option<String>,
    pub error: Option<String>,
    pub entitlement: Option<EntitlementView>,
    pub feature_allocation: Option<i64>,
    pub feature_usage: Option<i64>,
    pub feature_usage_event: Option<String>,
    pub feature_usage_period: Option<&'static str>,
    pub feature_usage_reset_at: Option<DateTime<Utc>>,
}

impl From<CheckOutcome> for CheckView {
    fn from(o: CheckOutcome) -> Self {
        let e = o.evaluation;
        let entitlement = e.entitlement.as_ref().map(EntitlementView::from);
        CheckView {
            flag: o.flag.key.clone(),
            flag_id: o.flag.id.clone(),
            value: e.value,
            reason: e.reason,
            rule_type: e.rule_type.as_str(),
            rule_id: e.rule_id,
            company_id: o.company_id,
            user_id: o.user_id,
            error: None,
            feature_allocation: entitlement.as_ref().and_then(|x| x.allocation),
            feature_usage: entitlement.as_ref().and_then(|x| x.usage),
            feature_usage_event: entitlement.as_ref().and_then(|x| x.event_name.clone()),
            feature_usage_period: e
                .entitlement
                .as_ref()
                .and_then(|x| x.metric_period)
                .map(MetricPeriod::as_str),
            feature_usage_reset_at: entitlement.as_ref().and_then(|x| x.metric_reset_at),
            entitlement,
        }
    }
}

/// The body, where an empty one means "no company, no user".
async fn context(req: Request, state: &AppState) -> AppResult<(KeyMap, KeyMap)> {
    let bytes = read_body(req, state).await?;
    let body: CheckBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        CheckBody::default()
    } else {
        parse_json(&bytes)?
    };
    let company = match &body.company {
        Some(c) => key_pairs("company", c)?,
        None => Vec::new(),
    };
    let user = match &body.user {
        Some(u) => key_pairs("user", u)?,
        None => Vec::new(),
    };
    Ok((company, user))
}

#[derive(Serialize)]
struct Empty {}

#[utoipa::path(post, path = "/flags/{key}/check", tag = "checks",
    params(("key" = String, Path, description = "The flag's key")),
    request_body(content = CheckBody, description = "The company and user to check for; may be empty"),
    responses((status = 200, description = "The flag's value and why", body = Enveloped<CheckView>), Errors))]
pub async fn check_one(
    State(state): State<AppState>,
    auth: Auth,
    Path(key): Path<String>,
    req: Request,
) -> AppResult<Response> {
    let (company, user) = context(req, &state).await?;
    let view = check_flag(&state, &auth, &key, &company, &user)?;
    Ok(axum::Json(Envelope {
        data: view,
        params: Empty {},
    })
    .into_response())
}

/// Evaluates flag `key` for the company and user the keys identify, from the snapshot,
/// counting it for metrics and insights: the REST and MCP checks.
pub fn check_flag(
    state: &AppState,
    auth: &Auth,
    key: &str,
    company: &KeyMap,
    user: &KeyMap,
) -> AppResult<CheckView> {
    let started = Instant::now();
    let catalog = state.cache.catalog();
    let Some(flag) = catalog.flags_by_key.get(key) else {
        metrics::CHECKS.inc("not_found");
        return Err(AppError::NotFound(format!("flag {key:?} not found")));
    };
    let outcome = auth.env.check(&catalog, flag, company, user, Utc::now());
    let value = outcome.evaluation.value;
    metrics::CHECKS.inc(if value { "true" } else { "false" });
    state.checks.record(auth.env_id(), &flag.id, value);
    metrics::CHECK_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(CheckView::from(outcome))
}

/// `CheckFlagsResponseData`.
#[derive(Serialize, utoipa::ToSchema)]
struct CheckAllView {
    flags: Vec<CheckView>,
    #[schema(value_type = Vec<Object>)]
    credit_spend_policies: Vec<Value>,
}

#[utoipa::path(post, path = "/flags/check", tag = "checks",
    request_body(content = CheckBody, description = "The company and user to check for; may be empty"),
    responses((status = 200, description = "Every flag's value for the company and user", body = Enveloped<CheckAllView>), Errors))]
pub async fn check_all(
    State(state): State<AppState>,
    auth: Auth,
    req: Request,
) -> AppResult<Response> {
    let (company, user) = context(req, &state).await?;
    let started = Instant::now();
    let catalog = state.cache.catalog();
    let now = Utc::now();
    let company = (!company.is_empty())
        .then(|| auth.env.find_company(&company))
        .flatten();
    let user = (!user.is_empty())
        .then(|| auth.env.find_user(&user))
        .flatten();
    let mut flags: Vec<_> = catalog.flags_by_key.values().collect();
    flags.sort_by(|a, b| a.key.cmp(&b.key));
    let views: Vec<CheckView> = flags
        .into_iter()
        .map(|flag| {
            let o = auth
                .env
                .check_resolved(&catalog, flag, company.clone(), user.clone(), now);
            metrics::CHECKS.inc(if o.evaluation.value { "true" } else { "false" });
            state
                .checks
                .record(auth.env_id(), &flag.id, o.evaluation.value);
            CheckView::from(o)
        })
        .collect();
    metrics::CHECK_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(axum::Json(Envelope {
        data: CheckAllView {
            flags: views,
            credit_spend_policies: Vec::new(),
        },
        params: Empty {},
    })
    .into_response())
}
