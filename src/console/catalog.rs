//! `/console/plans` and `/console/features`: the catalog (shared by every environment) as
//! the snapshot holds it: plans with their entitlements, flags with their features and
//! rules.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::error::ConsoleResult;
use super::session::Console;
use super::{render, Layout};
use crate::api::AppState;
use crate::engine::{self, MetricPeriod};

pub struct PlanLine {
    pub id: String,
    pub key: String,
    pub name: String,
    pub is_add_on: bool,
    /// `(feature, value)`, by feature.
    pub entitlements: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "console/plans.html")]
struct PlansPage {
    layout: Layout,
    plans: Vec<PlanLine>,
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

pub async fn plans_page(
    State(state): State<AppState>,
    console: Console,
) -> ConsoleResult<Response> {
    let catalog = state.cache.catalog();
    let feature_names: std::collections::HashMap<&str, String> = catalog
        .flags_sorted
        .iter()
        .filter_map(|f| f.feature.as_ref())
        .map(|f| (f.id.as_str(), format!("{} ({})", f.name, f.key)))
        .collect();
    let mut plans: Vec<PlanLine> = catalog
        .plans
        .values()
        .map(|p| {
            let mut entitlements: Vec<(String, String)> = catalog
                .entitlements
                .iter()
                .filter_map(|(feature_id, by_plan)| {
                    by_plan.get(&p.id).map(|e| {
                        (
                            feature_names
                                .get(feature_id.as_str())
                                .cloned()
                                .unwrap_or_else(|| feature_id.clone()),
                            value_text(&e.candidate),
                        )
                    })
                })
                .collect();
            entitlements.sort();
            PlanLine {
                id: p.id.clone(),
                key: p.key.clone(),
                name: p.name.clone(),
                is_add_on: p.is_add_on,
                entitlements,
            }
        })
        .collect();
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    render(&PlansPage {
        layout: Layout::new(&state, &console),
        plans,
    })
}

#[derive(Template)]
#[template(path = "console/features.html")]
struct FeaturesPage {
    layout: Layout,
    /// `(flag key, feature, feature type, default, rules)`.
    flags: Vec<(String, String, String, bool, Vec<String>)>,
}

pub async fn features_page(
    State(state): State<AppState>,
    console: Console,
) -> ConsoleResult<Response> {
    let catalog = state.cache.catalog();
    let flags = catalog
        .flags_sorted
        .iter()
        .map(|f| {
            let (feature, kind) = f.feature.as_ref().map_or_else(
                || ("—".to_string(), "—".to_string()),
                |x| {
                    (
                        format!("{} ({})", x.name, x.key),
                        x.feature_type.as_str().to_string(),
                    )
                },
            );
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
            (f.key.clone(), feature, kind, f.default_value, rules)
        })
        .collect();
    render(&FeaturesPage {
        layout: Layout::new(&state, &console),
        flags,
    })
}
