//! `/flags` and `PUT /flags/{id}/rules`. Flags are catalog objects shared by every
//! environment; every write reloads the check snapshot through `Change::Catalog`.

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
use super::features::FeatureSummary;
use super::openapi::{Deleted, Enveloped, Errors};
use super::resource::{self, Edit, Resource};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::engine::rules::{ConditionType, Operator, TraitEntity};
use crate::engine::{Condition, MetricPeriod, MonthReset, RuleKind};
use crate::store::catalog::{self as store, FlagFields, FlagFilter, FlagRow, NewRule, RuleRow};
use crate::store::Conn;

/// `FlagResponseData`: a flag without its feature and rules.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlagSummary {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub flag_type: String,
    pub default_value: bool,
    pub feature_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<FlagRow> for FlagSummary {
    fn from(r: FlagRow) -> Self {
        FlagSummary {
            id: r.id,
            key: r.key,
            name: r.name,
            description: r.description,
            flag_type: r.flag_type,
            default_value: r.default_value,
            feature_id: r.feature_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `FlagDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlagView {
    #[serde(flatten)]
    pub flag: FlagSummary,
    pub feature: Option<FeatureSummary>,
    pub rules: Vec<RuleView>,
}

/// `RuleDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuleView {
    pub id: String,
    pub flag_id: String,
    pub name: String,
    pub priority: i32,
    pub value: bool,
    pub rule_type: String,
    pub environment_id: String,
    pub conditions: Vec<ConditionView>,
    pub condition_groups: Vec<GroupView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `RuleConditionGroupDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupView {
    pub id: String,
    pub rule_id: String,
    pub flag_id: String,
    pub environment_id: String,
    pub conditions: Vec<ConditionView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `RuleConditionDetailResponseData`. Conditions are stored inside their rule, so their ids
/// are derived from the rule's id and their position.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConditionView {
    pub id: String,
    pub rule_id: String,
    pub flag_id: String,
    pub condition_group_id: Option<String>,
    pub condition_type: ConditionType,
    pub operator: Operator,
    pub resource_ids: Vec<String>,
    pub resources: Vec<Value>,
    pub trait_id: Option<String>,
    pub trait_value: String,
    pub trait_entity_type: Option<TraitEntity>,
    pub event_subtype: Option<String>,
    pub metric_value: Option<i64>,
    pub metric_period: Option<MetricPeriod>,
    pub metric_period_month_reset: Option<MonthReset>,
    pub environment_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RuleView {
    fn new(mut r: RuleRow, env_id: &str) -> Self {
        let conditions = std::mem::take(&mut r.conditions.0);
        let groups = std::mem::take(&mut r.condition_groups.0);
        let condition = |id: String, group: Option<&str>, c: Condition| ConditionView {
            id,
            rule_id: r.id.clone(),
            flag_id: r.flag_id.clone(),
            condition_group_id: group.map(str::to_string),
            condition_type: c.condition_type,
            operator: c.operator,
            resource_ids: c.resource_ids,
            resources: Vec::new(),
            trait_id: c.trait_id,
            trait_value: c.trait_value.unwrap_or_default(),
            trait_entity_type: c.trait_entity_type,
            event_subtype: c.event_subtype,
            metric_value: c.metric_value,
            metric_period: c.metric_period,
            metric_period_month_reset: c.metric_period_month_reset,
            environment_id: env_id.to_string(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        };
        let conditions = conditions
            .into_iter()
            .enumerate()
            .map(|(i, c)| condition(format!("{}:c{i}", r.id), None, c))
            .collect();
        let condition_groups = groups
            .into_iter()
            .enumerate()
            .map(|(g, group)| {
                let group_id = format!("{}:g{g}", r.id);
                GroupView {
                    conditions: group
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| condition(format!("{group_id}:c{i}"), Some(&group_id), c))
                        .collect(),
                    id: group_id,
                    rule_id: r.id.clone(),
                    flag_id: r.flag_id.clone(),
                    environment_id: env_id.to_string(),
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                }
            })
            .collect();
        RuleView {
            id: r.id.clone(),
            flag_id: r.flag_id.clone(),
            name: r.name.clone(),
            priority: r.priority,
            value: r.value,
            rule_type: r.rule_type.clone(),
            environment_id: env_id.to_string(),
            conditions,
            condition_groups,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Full views of these flags, in their order, with their features and rules.
pub async fn views(conn: &mut Conn, env_id: &str, flags: Vec<FlagRow>) -> AppResult<Vec<FlagView>> {
    let flag_ids: Vec<String> = flags.iter().map(|f| f.id.clone()).collect();
    let feature_ids: Vec<String> = flags.iter().filter_map(|f| f.feature_id.clone()).collect();
    let features: HashMap<String, FeatureSummary> = store::features(conn, &feature_ids)
        .await?
        .iter()
        .map(|f| (f.id.clone(), FeatureSummary::from(f)))
        .collect();
    let mut rules: HashMap<String, Vec<RuleView>> = HashMap::new();
    for r in store::rules_of_flags(conn, &flag_ids).await? {
        rules
            .entry(r.flag_id.clone())
            .or_default()
            .push(RuleView::new(r, env_id));
    }
    let mut features = features;
    Ok(flags
        .into_iter()
        .map(|f| FlagView {
            feature: f.feature_id.as_ref().and_then(|id| features.remove(id)),
            rules: rules.remove(&f.id).unwrap_or_default(),
            flag: FlagSummary::from(f),
        })
        .collect())
}

/// Full views of `ids`, in that order (ids not found are skipped).
pub async fn details(conn: &mut Conn, env_id: &str, ids: &[String]) -> AppResult<Vec<FlagView>> {
    let mut rows: HashMap<String, FlagRow> = store::flags(conn, ids)
        .await?
        .into_iter()
        .map(|f| (f.id.clone(), f))
        .collect();
    let ordered = ids.iter().filter_map(|id| rows.remove(id)).collect();
    views(conn, env_id, ordered).await
}

resource::resource!(Flags: FlagView, "flag", "flags", Some(&emit::FLAG),
    |conn, _state, auth, id| {
        Ok(details(conn, auth.env_id(), &[id.to_string()]).await?.pop())
    }
);

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Only these flag ids.
    ids: Option<Vec<String>>,
    /// Only the flag of this feature.
    feature_id: Option<String>,
    /// Matches the name or key.
    q: Option<String>,
}

#[utoipa::path(get, path = "/flags", tag = "flags",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Flags, newest first", body = Enveloped<Vec<FlagView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let filter = FlagFilter {
        ids: query.get_all("ids"),
        feature_id: query.non_empty("feature_id"),
        q: query.non_empty("q"),
    };
    let mut conn = state.pool.acquire().await?;
    let ids = store::list_flag_ids(&mut conn, &filter, page.limit, page.offset).await?;
    let data = details(&mut conn, auth.env_id(), &ids).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/flags/{id}", tag = "flags",
    params(("id" = String, Path, description = "A flag id, `flag_…`")),
    responses((status = 200, description = "The flag with its rules", body = Enveloped<FlagView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, flag_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Flags>(&state, &auth, &id).await
}

/// `CreateOrUpdateFlagRequestBody`. `null` and absent mean the same.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"key": "new-dashboard", "name": "New dashboard", "default_value": false}))]
pub struct FlagBody {
    key: Option<String>,
    name: Option<String>,
    description: Option<String>,
    flag_type: Option<String>,
    default_value: Option<bool>,
    feature_id: Option<String>,
}

fn given(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

impl FlagBody {
    /// Applies this body over `current` (for updates; `None` for creates).
    fn resolve(&self, current: Option<&FlagRow>) -> AppResult<FlagFields> {
        let bad = |m: String| Err(AppError::BadRequest(m));
        if let Some(t) = given(&self.flag_type) {
            if t != "boolean" {
                return bad(format!("flag_type: must be boolean, got {t:?}"));
            }
        }
        let key = match (given(&self.key), current) {
            (Some(k), _) => k.to_string(),
            (None, Some(c)) => c.key.clone(),
            (None, None) => return bad("key: required".into()),
        };
        store::validate_key("key", &key)?;
        if let Some(c) = current {
            if let (Some(feature_id), true) = (&c.feature_id, key != c.key) {
                return bad(format!(
                    "key: this flag belongs to feature {feature_id:?} and keeps its key {:?}",
                    c.key
                ));
            }
        }
        let name = match (given(&self.name), current) {
            (Some(n), _) => n.to_string(),
            (None, Some(c)) => c.name.clone(),
            (None, None) => return bad("name: required".into()),
        };
        store::validate_name("name", &name)?;
        Ok(FlagFields {
            key,
            name,
            description: self
                .description
                .clone()
                .or_else(|| current.map(|c| c.description.clone()))
                .unwrap_or_default(),
            default_value: self
                .default_value
                .or(current.map(|c| c.default_value))
                .unwrap_or(false),
            feature_id: given(&self.feature_id)
                .map(str::to_string)
                .or_else(|| current.and_then(|c| c.feature_id.clone())),
        })
    }
}

#[utoipa::path(post, path = "/flags", tag = "flags", request_body = FlagBody,
    responses((status = 200, description = "The flag, created", body = Enveloped<FlagView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<FlagBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let fields = body.resolve(None)?;
    let mut edit = Edit::<Flags>::begin(&state, &auth).await?;
    let id = store::insert_flag(&mut edit.tx, &fields).await?;
    edit.commit(Some(&id), vec![Change::Catalog]).await?;
    tracing::info!(flag_id = %id, key = %fields.key, feature_id = ?fields.feature_id, "flag created");
    resource::show::<Flags>(&state, &auth, &id).await
}

#[utoipa::path(put, path = "/flags/{id}", tag = "flags", request_body = FlagBody,
    params(("id" = String, Path, description = "A flag id, `flag_…`")),
    responses((status = 200, description = "The flag, updated", body = Enveloped<FlagView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, flag_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<FlagBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Flags>::of(&state, &auth, &id).await?;
    let current = store::flag_for_update(&mut edit.tx, &id)
        .await?
        .ok_or_else(|| AppError::not_found("flag", &id))?;
    let fields = body.resolve(Some(&current))?;
    store::update_flag(&mut edit.tx, &id, &fields).await?;
    edit.commit(Some(&id), vec![Change::Catalog]).await?;
    tracing::info!(key = %fields.key, default_value = fields.default_value, "flag updated");
    resource::show::<Flags>(&state, &auth, &id).await
}

#[utoipa::path(delete, path = "/flags/{id}", tag = "flags",
    params(("id" = String, Path, description = "A flag id, `flag_…`")),
    responses((status = 200, description = "Deleted", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, flag_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Flags>::of(&state, &auth, &id).await?;
    if !store::delete_flag(&mut edit.tx, &id).await? {
        return Err(AppError::not_found("flag", &id));
    }
    edit.commit(None, vec![Change::Catalog]).await?;
    tracing::info!("flag deleted");
    Ok(envelope::deleted())
}

/// `{rules: [CreateOrUpdateRuleRequestBody, …]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"rules": [{"name": "Beta companies", "priority": 1, "value": true, "conditions": [{"condition_type": "trait", "operator": "eq", "trait_id": "beta", "trait_value": "true"}]}]}))]
pub struct RulesBody {
    rules: Vec<RuleInput>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RuleInput {
    name: Option<String>,
    priority: i32,
    value: bool,
    rule_type: Option<String>,
    conditions: Option<Vec<Condition>>,
    condition_groups: Option<Vec<GroupInput>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct GroupInput {
    conditions: Option<Vec<Condition>>,
}

/// Plan ids a condition references, with the condition's path, to check they exist.
type PlanRefs = Vec<(String, Vec<String>)>;

impl RulesBody {
    /// Validates every rule and condition, naming the offending one by its path.
    fn resolve(self) -> AppResult<(Vec<NewRule>, PlanRefs)> {
        let mut plan_refs = Vec::new();
        let mut check = |path: String, c: &Condition| -> AppResult<()> {
            c.validate()
                .map_err(|m| AppError::BadRequest(format!("{path}.{m}")))?;
            if matches!(
                c.condition_type,
                ConditionType::Plan | ConditionType::BasePlan
            ) {
                plan_refs.push((path, c.resource_ids.clone()));
            }
            Ok(())
        };
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.into_iter().enumerate() {
            let kind = match r.rule_type.as_deref().filter(|s| !s.is_empty()) {
                None | Some("standard") => RuleKind::Standard,
                Some("global_override") => RuleKind::GlobalOverride,
                Some(other) => {
                    return Err(AppError::bad_request(format!(
                        "rules[{i}].rule_type: must be standard or global_override, got {other:?}"
                    )))
                }
            };
            let conditions = r.conditions.unwrap_or_default();
            for (j, c) in conditions.iter().enumerate() {
                check(format!("rules[{i}].conditions[{j}]"), c)?;
            }
            let mut groups = Vec::new();
            for (g, group) in r
                .condition_groups
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let group = group.conditions.unwrap_or_default();
                for (j, c) in group.iter().enumerate() {
                    check(
                        format!("rules[{i}].condition_groups[{g}].conditions[{j}]"),
                        c,
                    )?;
                }
                groups.push(group);
            }
            rules.push(NewRule {
                name: r.name.unwrap_or_default(),
                kind,
                priority: r.priority,
                value: r.value,
                conditions,
                condition_groups: groups,
            });
        }
        Ok((rules, plan_refs))
    }
}

/// `RulesDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RulesView {
    pub flag: FlagSummary,
    pub rules: Vec<RuleView>,
}

#[utoipa::path(put, path = "/flags/{id}/rules", tag = "flags", request_body = RulesBody,
    params(("id" = String, Path, description = "A flag id, `flag_…`")),
    responses((status = 200, description = "The flag's rules, replaced", body = Enveloped<RulesView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, flag_id = %id))]
pub async fn put_rules(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<RulesBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut tx = state.pool.begin().await?;
    let written = put_rules_in(&mut tx, &state, &auth, &id, body, false).await?;
    state.commit(tx, &written.changes).await?;
    crate::metrics::WRITES.inc("flags");
    tracing::info!("flag rules replaced");
    let view = resource::one::<Flags>(&state, &auth, &id).await?;
    Ok(envelope::ok_empty(RulesView {
        flag: view.flag,
        rules: view.rules,
    }))
}

/// Replaces flag `id`'s rules in `tx` with the API's validation (paths name the offending
/// rule and condition), writing the `flag_rules.updated` message when wanted; the caller
/// commits with the returned changes. `views`: build the flag's views before and after
/// (for an audit entry) even when no message wants them.
pub async fn put_rules_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    id: &str,
    body: RulesBody,
    views: bool,
) -> AppResult<emit::Written> {
    let (rules, plan_refs) = body.resolve()?;
    if store::flag_for_update(tx, id).await?.is_none() {
        return Err(AppError::not_found("flag", id));
    }
    let wanted: Vec<String> = plan_refs.iter().flat_map(|(_, ids)| ids.clone()).collect();
    let missing = store::missing_plans(tx, &wanted).await?;
    if let Some(plan_id) = missing.first() {
        let path = plan_refs
            .iter()
            .find(|(_, ids)| ids.contains(plan_id))
            .map(|(p, _)| p.as_str())
            .unwrap_or("rules");
        return Err(AppError::NotFound(format!(
            "{path}.resource_ids: plan {plan_id:?} not found"
        )));
    }
    let watch = state.wants(auth, "flag_rules.updated");
    let before = emit::view(watch || views, Flags::find_in(tx, state, auth, id)).await?;
    store::replace_rules(tx, id, &rules).await?;
    let mut changes = vec![Change::Catalog];
    let after = emit::view(watch || views, Flags::find_in(tx, state, auth, id)).await?;
    if let (true, Some(before), Some(after)) = (watch, &before, &after) {
        let event = crate::outbound::Event::new(
            "flag_rules.updated",
            serde_json::json!({"flag": after, "rules": after["rules"]}),
        )
        .with_previous(serde_json::json!({"flag": before, "rules": before["rules"]}));
        changes.extend(emit::write(state, auth, tx, [Some(event)]).await?);
    }
    tracing::info!(rules = rules.len(), "flag rules replaced");
    Ok(emit::Written {
        id: id.to_string(),
        company_id: None,
        before,
        after,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> AppResult<(Vec<NewRule>, PlanRefs)> {
        serde_json::from_value::<RulesBody>(v).unwrap().resolve()
    }

    #[test]
    fn rules_are_validated_by_path() {
        let (ok, plans) = rules(json!({"rules": [
            {"name": "r", "priority": 1, "value": true,
             "conditions": [{"condition_type": "plan", "operator": "eq", "resource_ids": ["plan_a"]}],
             "condition_groups": [{"conditions": [
                {"condition_type": "trait", "operator": "gt", "trait_id": "seats", "trait_value": "5"},
                {"condition_type": "base_plan", "operator": "ne", "resource_ids": ["plan_b"]}]}]},
            {"priority": 2, "value": false, "rule_type": "global_override", "conditions": null}
        ]}))
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].condition_groups[0].len(), 2);
        assert_eq!(ok[1].kind, RuleKind::GlobalOverride);
        assert_eq!(ok[1].name, "");
        assert_eq!(
            plans,
            vec![
                (
                    "rules[0].conditions[0]".to_string(),
                    vec!["plan_a".to_string()]
                ),
                (
                    "rules[0].condition_groups[0].conditions[1]".to_string(),
                    vec!["plan_b".to_string()]
                )
            ]
        );

        let err = |v: Value| rules(v).unwrap_err().to_string();
        assert!(err(
            json!({"rules": [{"priority": 1, "value": true, "rule_type": "plan_entitlement"}]})
        )
        .starts_with("rules[0].rule_type:"));
        assert!(err(json!({"rules": [{"priority": 1, "value": true,
            "conditions": [{"condition_type": "company", "operator": "eq", "resource_ids": []}]}]}))
        .starts_with("rules[0].conditions[0].resource_ids:"));
        assert!(err(json!({"rules": [{"priority": 1, "value": true,
            "condition_groups": [{"conditions": [{"condition_type": "metric", "operator": "gt", "metric_value": 3}]}]}]}))
        .starts_with("rules[0].condition_groups[0].conditions[0].event_subtype:"));
    }
}
