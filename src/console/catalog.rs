//! `/console/plans` and `/console/features`: the catalog (shared by every environment):
//! plans with their entitlements, flags with their features and rules; features (with their
//! flags) are created and edited through the API's own write functions, audited.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::error::{ConsoleError, ConsoleResult};
use super::session::{Console, Form, Posted};
use super::{
    audit_and_commit, commit_or_refused, Layout, ENTITLEMENT_CREATE, ENTITLEMENT_DELETE,
    FEATURE_CREATE, FEATURE_UPDATE, RULES_REPLACE,
};
use crate::api::features::{self, FeatureBody, FlagInput};
use crate::api::flags;
use crate::api::{plan_entitlements, AppState};
use crate::engine::{self, MetricPeriod};
use crate::store;

pub struct EntitlementLine {
    pub id: String,
    pub feature: String,
    pub value: String,
}

pub struct PlanLine {
    pub id: String,
    pub key: String,
    pub name: String,
    pub is_add_on: bool,
    /// The linked Stripe product.
    pub product: Option<String>,
    /// By feature.
    pub entitlements: Vec<EntitlementLine>,
}

#[derive(Template)]
#[template(path = "console/plans.html")]
struct PlansPage {
    layout: Layout,
    plans: Vec<PlanLine>,
    /// `(id, "name (key)")` of every feature with a flag.
    features: Vec<(String, String)>,
    value_types: &'static [&'static str],
    metric_periods: &'static [&'static str],
    errors: HashMap<&'static str, String>,
}

/// How an entitlement's value reads: `true`, `1000 per current_month`, `unlimited`, ….
pub fn value_text(c: &engine::Candidate) -> String {
    let v = match &c.value {
        engine::Value::Bool(b) => b.to_string(),
        engine::Value::Numeric(n) => n.to_string(),
        engine::Value::Unlimited => "unlimited".into(),
        engine::Value::Trait(t) => format!("trait {t}"),
        engine::Value::Credit { credit_id, rate } => format!("credit {credit_id} × {rate}"),
    };
    match c.metric_period {
        Some(p) => format!("{v} per {}", MetricPeriod::as_str(p)),
        None => v,
    }
}

async fn plans_html(
    state: &AppState,
    console: &Console,
    errors: HashMap<&'static str, String>,
) -> ConsoleResult<String> {
    let catalog = state.cache.catalog();
    let mut features: Vec<(String, String)> = catalog
        .flags_sorted
        .iter()
        .filter_map(|f| f.feature.as_ref())
        .map(|f| (f.id.clone(), format!("{} ({})", f.name, f.key)))
        .collect();
    features.sort_by(|a, b| a.1.cmp(&b.1));
    features.dedup_by(|a, b| a.0 == b.0);
    let names: HashMap<&str, &str> = features
        .iter()
        .map(|(id, n)| (id.as_str(), n.as_str()))
        .collect();
    let ids: Vec<String> = catalog.plans.keys().cloned().collect();
    let mut conn = state.pool.acquire().await?;
    let products: HashMap<String, Option<String>> = store::plans::rows(&mut conn, &ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r.billing_product_id))
        .collect();
    drop(conn);
    let mut plans: Vec<PlanLine> = catalog
        .plans
        .values()
        .map(|p| {
            let mut entitlements: Vec<EntitlementLine> = catalog
                .entitlements
                .iter()
                .filter_map(|(feature_id, by_plan)| {
                    let e = by_plan.get(&p.id)?;
                    let id = match &e.candidate.source {
                        engine::Source::Plan { entitlement_id } => entitlement_id.clone(),
                        engine::Source::Override { override_id } => override_id.clone(),
                    };
                    Some(EntitlementLine {
                        id,
                        feature: names
                            .get(feature_id.as_str())
                            .map_or_else(|| feature_id.clone(), |n| n.to_string()),
                        value: value_text(&e.candidate),
                    })
                })
                .collect();
            entitlements.sort_by(|a, b| a.feature.cmp(&b.feature));
            PlanLine {
                id: p.id.clone(),
                key: p.key.clone(),
                name: p.name.clone(),
                is_add_on: p.is_add_on,
                product: products.get(&p.id).cloned().flatten(),
                entitlements,
            }
        })
        .collect();
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PlansPage {
        layout: Layout::new(state, console),
        plans,
        features,
        value_types: super::company::VALUE_TYPES,
        metric_periods: super::company::METRIC_PERIODS,
        errors,
    }
    .render()?)
}

pub async fn plans_page(
    State(state): State<AppState>,
    console: Console,
) -> ConsoleResult<Response> {
    let html = plans_html(&state, &console, HashMap::new()).await?;
    Ok(axum::response::Html(html).into_response())
}

/// The plans page again with `message` at the top, answered with `status`.
async fn plans_refused(
    state: &AppState,
    console: &Console,
    status: axum::http::StatusCode,
    message: String,
) -> ConsoleResult<Response> {
    let mut errors = HashMap::new();
    errors.insert("form", message);
    let html = plans_html(state, console, errors).await?;
    Ok((status, axum::response::Html(html)).into_response())
}

#[tracing::instrument(skip_all, fields(console_user, plan_id = %plan_id))]
pub async fn create_entitlement(
    State(state): State<AppState>,
    Path(plan_id): Path<String>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let Posted { console, form } = posted;
    console.require_admin()?;
    let value_type = form.get("value_type").unwrap_or("").to_string();
    let v = match super::company::value_fields(
        &value_type,
        form.get("value").unwrap_or(""),
        form.get("credit_consumption_rate").unwrap_or(""),
    ) {
        Ok(v) => v,
        Err(m) => {
            return plans_refused(&state, &console, axum::http::StatusCode::BAD_REQUEST, m).await
        }
    };
    let body = plan_entitlements::CreateBody {
        plan_id,
        feature_id: form.get("feature_id").unwrap_or("").to_string(),
        value_type: Some(value_type).filter(|s| !s.is_empty()),
        value_bool: v.value_bool,
        value_numeric: v.value_numeric,
        value_trait_id: v.value_trait_id,
        value_credit_id: v.value_credit_id,
        credit_consumption_rate: v.credit_consumption_rate,
        metric_period: text(&form, "metric_period"),
        metric_period_month_reset: text(&form, "metric_period_month_reset"),
        ..Default::default()
    };
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let done = plan_entitlements::create_in(&mut tx, &state, &auth, body, true).await;
    match commit_or_refused(&state, &console, tx, ENTITLEMENT_CREATE, done).await? {
        Ok(()) => Ok(Redirect::to("/console/plans").into_response()),
        Err((status, message)) => plans_refused(&state, &console, status, message).await,
    }
}

#[tracing::instrument(skip_all, fields(console_user, entitlement_id = %id))]
pub async fn delete_entitlement(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let console = posted.console;
    console.require_admin()?;
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let written = plan_entitlements::delete_in(&mut tx, &state, &auth, &id, true).await?;
    audit_and_commit(&state, &console, tx, ENTITLEMENT_DELETE, written).await?;
    Ok(Redirect::to("/console/plans").into_response())
}

pub struct FlagLine {
    pub key: String,
    pub flag_id: String,
    pub feature_id: String,
    pub name: String,
    pub description: String,
    pub feature: String,
    pub kind: String,
    pub default_value: bool,
    pub rules: Vec<String>,
}

/// The new-feature form as sent, to show it again with its errors.
#[derive(Default)]
pub struct FeatureForm {
    pub name: String,
    pub key: String,
    pub feature_type: String,
    pub event_subtype: String,
    pub trait_id: String,
}

#[derive(Template)]
#[template(path = "console/features.html")]
struct FeaturesPage {
    layout: Layout,
    flags: Vec<FlagLine>,
    feature_types: &'static [&'static str],
    form: FeatureForm,
    errors: HashMap<&'static str, String>,
}

async fn features_html(
    state: &AppState,
    console: &Console,
    form: FeatureForm,
    errors: HashMap<&'static str, String>,
) -> ConsoleResult<String> {
    let catalog = state.cache.catalog();
    let ids: Vec<String> = catalog
        .flags_sorted
        .iter()
        .filter_map(|f| f.feature.as_ref().map(|x| x.id.clone()))
        .collect();
    let mut conn = state.pool.acquire().await?;
    let rows: HashMap<String, store::catalog::FeatureRow> =
        store::catalog::features(&mut conn, &ids)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    drop(conn);
    let flags = catalog
        .flags_sorted
        .iter()
        .map(|f| {
            let row = f.feature.as_ref().and_then(|x| rows.get(&x.id));
            let rules = f
                .rules
                .iter()
                .map(|r| {
                    format!(
                        "{} · {} · priority {} → {} ({} conditions)",
                        r.name,
                        r.kind.as_str(),
                        r.priority,
                        r.value,
                        r.conditions.len() + r.condition_groups.iter().map(Vec::len).sum::<usize>()
                    )
                })
                .collect();
            FlagLine {
                key: f.key.clone(),
                flag_id: f.id.clone(),
                feature_id: row.map(|r| r.id.clone()).unwrap_or_default(),
                name: row.map(|r| r.name.clone()).unwrap_or_default(),
                description: row.map(|r| r.description.clone()).unwrap_or_default(),
                feature: row.map_or_else(|| "—".into(), |r| format!("{} ({})", r.name, r.key)),
                kind: row.map_or_else(|| "—".into(), |r| r.feature_type.clone()),
                default_value: f.default_value,
                rules,
            }
        })
        .collect();
    Ok(FeaturesPage {
        layout: Layout::new(state, console),
        flags,
        feature_types: &["boolean", "event", "trait"],
        form: FeatureForm {
            feature_type: if form.feature_type.is_empty() {
                "boolean".into()
            } else {
                form.feature_type.clone()
            },
            ..form
        },
        errors,
    }
    .render()?)
}

pub async fn features_page(
    State(state): State<AppState>,
    console: Console,
) -> ConsoleResult<Response> {
    let html = features_html(&state, &console, FeatureForm::default(), HashMap::new()).await?;
    Ok(axum::response::Html(html).into_response())
}

/// The form field an API message about a feature concerns.
fn feature_field(message: &str) -> &'static str {
    match message.split(':').next().unwrap_or("").trim() {
        "name" => "name",
        "key" | "flag.key" => "key",
        "feature_type" => "feature_type",
        "event_subtype" => "event_subtype",
        "trait_id" => "trait_id",
        _ => "form",
    }
}

fn text(form: &Form, name: &str) -> Option<String> {
    form.text(name).map(str::to_string)
}

fn default_value(form: &Form) -> Option<bool> {
    form.text("default_value").map(|v| v == "true")
}

#[tracing::instrument(skip_all, fields(console_user))]
pub async fn create_feature(
    State(state): State<AppState>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let Posted { console, form } = posted;
    console.require_admin()?;
    let body = FeatureBody {
        name: text(&form, "name"),
        key: text(&form, "key"),
        feature_type: text(&form, "feature_type"),
        event_subtype: text(&form, "event_subtype"),
        trait_id: text(&form, "trait_id"),
        flag: Some(FlagInput {
            default_value: default_value(&form),
            ..Default::default()
        }),
        ..Default::default()
    };
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let done = features::create_in(&mut tx, &state, &auth, &body, true).await;
    match commit_or_refused(&state, &console, tx, FEATURE_CREATE, done).await? {
        Ok(()) => Ok(Redirect::to("/console/features").into_response()),
        Err((status, message)) => {
            let mut errors = HashMap::new();
            errors.insert(feature_field(&message), message);
            let sent = FeatureForm {
                name: body.name.unwrap_or_default(),
                key: body.key.unwrap_or_default(),
                feature_type: body.feature_type.unwrap_or_default(),
                event_subtype: body.event_subtype.unwrap_or_default(),
                trait_id: body.trait_id.unwrap_or_default(),
            };
            let html = features_html(&state, &console, sent, errors).await?;
            Ok((status, axum::response::Html(html)).into_response())
        }
    }
}

#[tracing::instrument(skip_all, fields(console_user, feature_id = %id))]
pub async fn update_feature(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let Posted { console, form } = posted;
    console.require_admin()?;
    let body = FeatureBody {
        name: text(&form, "name"),
        description: Some(form.get("description").unwrap_or("").trim().to_string()),
        flag: Some(FlagInput {
            default_value: default_value(&form),
            ..Default::default()
        }),
        ..Default::default()
    };
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let done = features::update_in(&mut tx, &state, &auth, &id, &body, true).await;
    match commit_or_refused(&state, &console, tx, FEATURE_UPDATE, done).await? {
        Ok(()) => Ok(Redirect::to("/console/features").into_response()),
        Err((status, message)) => {
            let mut errors = HashMap::new();
            errors.insert("form", message);
            let html = features_html(&state, &console, FeatureForm::default(), errors).await?;
            Ok((status, axum::response::Html(html)).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "console/flag_rules.html")]
struct RulesPage {
    layout: Layout,
    id: String,
    key: String,
    default_value: bool,
    /// `(priority, name, type, value, conditions as JSON)`.
    rules: Vec<(i32, String, String, bool, String)>,
    /// The textarea: the rules as `PUT /flags/{id}/rules` takes them (or as sent).
    json: String,
    error: String,
}

/// A rule view as the rules body spells it: the ids, resources and timestamps the API adds
/// to its views left out, and nulls dropped.
fn editable(v: &serde_json::Value) -> serde_json::Value {
    const VIEW_ONLY: &[&str] = &[
        "id",
        "rule_id",
        "flag_id",
        "condition_group_id",
        "environment_id",
        "resources",
        "created_at",
        "updated_at",
    ];
    match v {
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .filter(|(k, v)| !VIEW_ONLY.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| (k.clone(), editable(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(editable).collect()),
        other => other.clone(),
    }
}

async fn rules_html(
    state: &AppState,
    console: &Console,
    id: &str,
    sent: Option<String>,
    error: String,
) -> ConsoleResult<String> {
    let mut conn = state.pool.acquire().await?;
    let view = flags::details(&mut conn, console.env_id(), &[id.to_string()])
        .await?
        .pop()
        .ok_or_else(|| ConsoleError::NotFound(format!("flag {id:?} not found")))?;
    drop(conn);
    let rules_json = serde_json::to_value(&view.rules).map_err(anyhow::Error::from)?;
    let json = sent.unwrap_or_else(|| {
        serde_json::to_string_pretty(&serde_json::json!({"rules": editable(&rules_json)}))
            .unwrap_or_default()
    });
    let rules = view
        .rules
        .iter()
        .zip(rules_json.as_array().into_iter().flatten())
        .map(|(r, j)| {
            let conditions = serde_json::json!({
                "conditions": editable(&j["conditions"]),
                "condition_groups": editable(&j["condition_groups"]),
            });
            (
                r.priority,
                r.name.clone(),
                r.rule_type.clone(),
                r.value,
                conditions.to_string(),
            )
        })
        .collect();
    let flag = serde_json::to_value(&view.flag).map_err(anyhow::Error::from)?;
    Ok(RulesPage {
        layout: Layout::new(state, console),
        id: id.to_string(),
        key: flag["key"].as_str().unwrap_or_default().to_string(),
        default_value: flag["default_value"].as_bool().unwrap_or(false),
        rules,
        json,
        error,
    }
    .render()?)
}

pub async fn rules_page(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> ConsoleResult<Response> {
    let html = rules_html(&state, &console, &id, None, String::new()).await?;
    Ok(axum::response::Html(html).into_response())
}

#[tracing::instrument(skip_all, fields(console_user, flag_id = %id))]
pub async fn put_rules(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let Posted { console, form } = posted;
    console.require_admin()?;
    let sent = form.get("rules").unwrap_or("").to_string();
    let refuse = |status: axum::http::StatusCode, message: String| {
        let (state, console, id, sent) = (&state, &console, &id, sent.clone());
        async move {
            let html = rules_html(state, console, id, Some(sent), message).await?;
            Ok::<_, ConsoleError>((status, axum::response::Html(html)).into_response())
        }
    };
    let body: flags::RulesBody = match serde_json::from_str(&sent) {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                axum::http::StatusCode::BAD_REQUEST,
                format!("rules: not a rules body ({e})"),
            )
            .await
        }
    };
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let done = flags::put_rules_in(&mut tx, &state, &auth, &id, body, true).await;
    match commit_or_refused(&state, &console, tx, RULES_REPLACE, done).await? {
        Ok(()) => Ok(Redirect::to(&format!("/console/flags/{id}/rules")).into_response()),
        Err((status, message)) => refuse(status, message).await,
    }
}
