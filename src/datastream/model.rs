//! THE mapping from the snapshot to the rules engine's model, as the SDKs' bundled engine
//! (`RulesengineFlag`, `RulesengineRule`, `RulesengineCondition`, `RulesengineCompany`,
//! `RulesengineUser`) takes it. Pure: plain data and a `now` in, plain data out.
//!
//! The SDK's engine evaluates rules by type (global override → company override → plan
//! entitlement → company-override-usage-exceeded → plan-entitlement-usage-exceeded →
//! standard by priority → default), first match wins, a company's rules counting for the
//! flag they name. DESIGN §5's semantics come out of that order:
//! - a plan entitlement becomes a `plan_entitlement` rule conditioned on the plan id (and, for
//!   a limit, on usage below the allocation: a `metric`, `trait` or `credit` condition),
//!   followed by a `plan_entitlement_usage_exceeded` rule `false` on the plan alone. Across
//!   plans and add-ons any allowing rule matches first: the most generous applies;
//! - a company override is a company rule of the same shape (`company_override`,
//!   `company_override_usage_exceeded`); one that no longer allows falls through to the plan
//!   rules, so a plan's 1000 still beats an override's 500, while a boolean `false` override
//!   matches before any plan rule: the negative override wins;
//! - an expired override is not sent (the connection re-renders the company at the instant
//!   it expires), and the fallback plan is among the plan ids of a company without a base plan;
//! - allocations that depend on the company (a pay-in-advance quantity, an allocation read
//!   from a trait) are company rules with the company's own figure.
//!
//! Usage travels as the company's `metrics`, one per event, period and month reset that any
//! rule asks about, valued for the window containing `now`, with `valid_until` its end.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cache::{Catalog, CompanyState, KeyPair, UserState};
use crate::engine::rules::{self, ConditionType};
use crate::engine::{
    self, Candidate, Condition, FeatureType, Flag, MetricPeriod, MonthReset, RuleKind, Value,
};

/// Schematic's account id, which the model requires; entitled has one account.
pub const ACCOUNT_ID: &str = "acct_entitled";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RFlag {
    pub account_id: &'static str,
    pub default_value: bool,
    pub environment_id: String,
    pub id: String,
    pub key: String,
    pub rules: Vec<RRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RRule {
    pub account_id: &'static str,
    pub condition_groups: Vec<RConditionGroup>,
    pub conditions: Vec<RCondition>,
    pub environment_id: String,
    pub flag_id: Option<String>,
    pub id: String,
    pub name: String,
    pub priority: i64,
    pub rule_type: &'static str,
    pub value: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RConditionGroup {
    pub conditions: Vec<RCondition>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RCondition {
    pub account_id: &'static str,
    pub condition_type: &'static str,
    pub environment_id: String,
    pub id: String,
    pub operator: &'static str,
    pub resource_ids: Vec<String>,
    pub trait_value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trait_definition: Option<RTraitDefinition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_subtype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_value: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_period: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_period_month_reset: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumption_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RTraitDefinition {
    pub comparable_type: &'static str,
    pub entity_type: &'static str,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RTrait {
    pub trait_definition: RTraitDefinition,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RMetric {
    pub account_id: &'static str,
    pub company_id: String,
    pub created_at: DateTime<Utc>,
    pub environment_id: String,
    pub event_subtype: String,
    pub month_reset: &'static str,
    pub period: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RCompany {
    pub account_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_plan_id: Option<String>,
    pub billing_product_ids: Vec<String>,
    pub credit_balances: BTreeMap<String, f64>,
    pub environment_id: String,
    pub id: String,
    pub keys: BTreeMap<String, String>,
    pub metrics: Vec<RMetric>,
    pub plan_ids: Vec<String>,
    pub plan_version_ids: Vec<String>,
    pub rules: Vec<RRule>,
    pub traits: Vec<RTrait>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RUser {
    pub account_id: &'static str,
    pub environment_id: String,
    pub id: String,
    pub keys: BTreeMap<String, String>,
    pub rules: Vec<RRule>,
    pub traits: Vec<RTrait>,
}

/// A rendered company and the next instant its rendering changes by the clock alone (an
/// override expires, a metric period resets).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub company: RCompany,
    pub next_change: Option<DateTime<Utc>>,
}

/// Every flag of the catalog, ordered by key.
pub fn flags(environment_id: &str, catalog: &Catalog) -> Vec<RFlag> {
    catalog
        .flags_sorted
        .iter()
        .map(|f| flag(environment_id, catalog, f))
        .collect()
}

/// One flag with its rules: global overrides, the entitlements of every plan that does not
/// depend on the company, standard rules.
pub fn flag(environment_id: &str, catalog: &Catalog, flag: &Flag) -> RFlag {
    let env = environment_id;
    let mut out = Vec::new();
    for rule in &flag.rules {
        let rule_type = match rule.kind {
            RuleKind::GlobalOverride => "global_override",
            RuleKind::Standard => "standard",
        };
        out.push(RRule {
            account_id: ACCOUNT_ID,
            condition_groups: rule
                .condition_groups
                .iter()
                .enumerate()
                .map(|(g, group)| RConditionGroup {
                    conditions: group
                        .iter()
                        .enumerate()
                        .map(|(i, c)| condition(env, &format!("{}_g{g}c{i}", rule.id), c))
                        .collect(),
                })
                .collect(),
            conditions: rule
                .conditions
                .iter()
                .enumerate()
                .map(|(i, c)| condition(env, &format!("{}_c{i}", rule.id), c))
                .collect(),
            environment_id: env.to_string(),
            flag_id: Some(flag.id.clone()),
            id: rule.id.clone(),
            name: rule.name.clone(),
            priority: i64::from(rule.priority),
            rule_type,
            value: rule.value,
        });
    }
    if let Some(feature) = &flag.feature {
        if let Some(by_plan) = catalog.entitlements.get(&feature.id) {
            let mut plans: Vec<_> = by_plan.iter().collect();
            plans.sort_by(|a, b| a.0.cmp(b.0));
            for (plan_id, info) in plans {
                if depends_on_company(info.pay_in_advance, &info.candidate) {
                    continue;
                }
                out.extend(entitlement_rules(
                    env,
                    flag,
                    &info.candidate,
                    Some(plan_id),
                    Limit::Static,
                ));
            }
        }
    }
    RFlag {
        account_id: ACCOUNT_ID,
        default_value: flag.default_value,
        environment_id: env.to_string(),
        id: flag.id.clone(),
        key: flag.key.clone(),
        rules: out,
    }
}

fn depends_on_company(pay_in_advance: bool, c: &Candidate) -> bool {
    pay_in_advance || matches!(c.value, Value::Trait(_))
}

/// Where a candidate's allocation comes from.
#[derive(Clone, Copy)]
enum Limit {
    /// Its own value.
    Static,
    /// The company's figure (pay-in-advance quantity, trait-valued allocation).
    Company(i64),
}

/// The rules one entitlement (of a plan when `plan_id` is set, else an override) becomes.
fn entitlement_rules(
    env: &str,
    flag: &Flag,
    c: &Candidate,
    plan_id: Option<&String>,
    limit: Limit,
) -> Vec<RRule> {
    let Some(feature) = &flag.feature else {
        return Vec::new();
    };
    let (ok_type, exceeded_type, id) = match (&c.source, plan_id) {
        (engine::Source::Plan { entitlement_id }, _) => (
            "plan_entitlement",
            "plan_entitlement_usage_exceeded",
            entitlement_id.as_str(),
        ),
        (engine::Source::Override { override_id }, _) => (
            "company_override",
            "company_override_usage_exceeded",
            override_id.as_str(),
        ),
    };
    // Rule ids are per flag: one entitlement may back several flags of a feature.
    let rule_id = format!("{id}_{}", flag.id);
    let base: Vec<RCondition> = plan_id
        .map(|p| RCondition {
            resource_ids: vec![p.clone()],
            ..bare(env, &format!("{rule_id}_plan"), "plan", "eq")
        })
        .into_iter()
        .collect();
    let rule = |suffix: &str, rule_type: &'static str, value: bool, conds: Vec<RCondition>| {
        RRule {
            account_id: ACCOUNT_ID,
            condition_groups: Vec::new(),
            conditions: conds,
            environment_id: env.to_string(),
            flag_id: Some(flag.id.clone()),
            id: format!("{rule_id}{suffix}"),
            name: c.label.clone(),
            // A denying entitlement comes after every allowing one of its type.
            priority: if value { 0 } else { 1 },
            rule_type,
            value,
        }
    };
    let allocation = match (&c.value, limit) {
        (Value::Bool(b), _) => return vec![rule("", ok_type, *b, base)],
        (Value::Unlimited, _) => return vec![rule("", ok_type, true, base)],
        (Value::Credit { credit_id, rate }, _) => {
            // The SDK's engine reads a credit condition as "balance ≥ consumption rate"
            // under the operator its own rules carry, `eq`.
            let mut with = base.clone();
            with.push(RCondition {
                credit_id: Some(credit_id.clone()),
                consumption_rate: Some(*rate),
                ..bare(env, &format!("{rule_id}_credit"), "credit", "eq")
            });
            return vec![
                rule("", ok_type, true, with),
                rule("_exceeded", exceeded_type, false, base),
            ];
        }
        (_, Limit::Company(n)) => n,
        (Value::Numeric(n), Limit::Static) => *n,
        (Value::Trait(_), Limit::Static) => 0,
    };
    let allocation = match c.metered {
        Some(engine::Metered {
            soft_limit: Some(soft),
        }) => soft,
        // Billed past the allocation, never denied.
        Some(engine::Metered { soft_limit: None }) => {
            return vec![rule("", ok_type, true, base)];
        }
        None => allocation,
    };
    let measure = match feature.feature_type {
        FeatureType::Event => {
            let (period, reset) = period_of(c);
            Some(RCondition {
                event_subtype: Some(feature.event_subtype.clone().unwrap_or_default()),
                metric_value: Some(allocation),
                metric_period: Some(period.as_str()),
                metric_period_month_reset: Some(reset_str(reset)),
                ..bare(env, &format!("{rule_id}_metric"), "metric", "lt")
            })
        }
        FeatureType::Trait => Some(RCondition {
            trait_value: allocation.to_string(),
            trait_definition: Some(RTraitDefinition {
                comparable_type: "int",
                entity_type: "company",
                id: feature.trait_id.clone().unwrap_or_default(),
            }),
            ..bare(env, &format!("{rule_id}_trait"), "trait", "lt")
        }),
        // Nothing measured: usage is zero, below any positive allocation.
        FeatureType::Boolean => None,
    };
    match measure {
        Some(m) => {
            let mut with = base.clone();
            with.push(m);
            vec![
                rule("", ok_type, true, with),
                rule("_exceeded", exceeded_type, false, base),
            ]
        }
        None if allocation > 0 => vec![rule("", ok_type, true, base)],
        None => vec![rule("_exceeded", exceeded_type, false, base)],
    }
}

/// The period and month reset a candidate counts usage in.
fn period_of(c: &Candidate) -> (MetricPeriod, MonthReset) {
    let period = c.metric_period.unwrap_or(MetricPeriod::AllTime);
    let reset = if period == MetricPeriod::CurrentMonth {
        c.month_reset
    } else {
        MonthReset::FirstOfMonth
    };
    (period, reset)
}

fn reset_str(r: MonthReset) -> &'static str {
    match r {
        MonthReset::FirstOfMonth => "first_of_month",
        MonthReset::BillingCycle => "billing_cycle",
    }
}

fn bare(env: &str, id: &str, condition_type: &'static str, operator: &'static str) -> RCondition {
    RCondition {
        account_id: ACCOUNT_ID,
        condition_type,
        environment_id: env.to_string(),
        id: id.to_string(),
        operator,
        resource_ids: Vec::new(),
        trait_value: String::new(),
        trait_definition: None,
        event_subtype: None,
        metric_value: None,
        metric_period: None,
        metric_period_month_reset: None,
        credit_id: None,
        consumption_rate: None,
    }
}

fn operator(op: rules::Operator) -> &'static str {
    use rules::Operator as O;
    match op {
        O::Eq => "eq",
        O::Ne => "ne",
        O::Gt => "gt",
        O::Lt => "lt",
        O::Gte => "gte",
        O::Lte => "lte",
        O::IsEmpty => "is_empty",
        O::NotEmpty => "not_empty",
    }
}

/// A comparable type the engine compares a value as: numbers as numbers.
fn comparable(value: &str) -> &'static str {
    if value.trim().parse::<f64>().is_ok() {
        "int"
    } else if value == "true" || value == "false" {
        "bool"
    } else {
        "string"
    }
}

/// A standard or global-override rule's condition.
fn condition(env: &str, id: &str, c: &Condition) -> RCondition {
    let op = operator(c.operator);
    match c.condition_type {
        ConditionType::Company
        | ConditionType::User
        | ConditionType::Plan
        | ConditionType::BasePlan => RCondition {
            resource_ids: c.resource_ids.clone(),
            ..bare(
                env,
                id,
                match c.condition_type {
                    ConditionType::Company => "company",
                    ConditionType::User => "user",
                    ConditionType::Plan => "plan",
                    _ => "base_plan",
                },
                op,
            )
        },
        ConditionType::Trait => {
            let value = c.trait_value.clone().unwrap_or_default();
            RCondition {
                trait_definition: Some(RTraitDefinition {
                    comparable_type: comparable(&value),
                    entity_type: match c.trait_entity_type.unwrap_or_default() {
                        rules::TraitEntity::Company => "company",
                        rules::TraitEntity::User => "user",
                    },
                    id: c.trait_id.clone().unwrap_or_default(),
                }),
                trait_value: value,
                ..bare(env, id, "trait", op)
            }
        }
        ConditionType::Metric => {
            let period = c.metric_period.unwrap_or(MetricPeriod::AllTime);
            RCondition {
                event_subtype: c.event_subtype.clone(),
                metric_value: c.metric_value,
                metric_period: Some(period.as_str()),
                metric_period_month_reset: Some(reset_str(
                    c.metric_period_month_reset.unwrap_or_default(),
                )),
                ..bare(env, id, "metric", op)
            }
        }
    }
}

fn traits(map: &engine::TraitSet, entity_type: &'static str) -> Vec<RTrait> {
    map.iter()
        .map(|(name, v)| {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            RTrait {
                trait_definition: RTraitDefinition {
                    comparable_type: comparable(&value),
                    entity_type,
                    id: name.to_string(),
                },
                value,
            }
        })
        .collect()
}

fn keys(pairs: &[KeyPair]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A company as the SDK's engine takes it. `plan_ids`/`base_plan_id` come from `context`,
/// the company's context with the fallback plan already applied.
pub fn company(
    environment_id: &str,
    catalog: &Catalog,
    state: &CompanyState,
    context: &engine::CompanyContext,
    now: DateTime<Utc>,
) -> Rendered {
    let env = environment_id;
    let mut next_change: Option<DateTime<Utc>> = None;
    let mut soonest = |t: DateTime<Utc>| {
        if t > now && next_change.is_none_or(|n| t < n) {
            next_change = Some(t);
        }
    };
    let mut rules = Vec::new();
    // Usage the rules ask about: (event, period, reset).
    let mut measured: Vec<(String, MetricPeriod, MonthReset)> = Vec::new();
    let measure = |m: &mut Vec<(String, MetricPeriod, MonthReset)>, x| {
        if !m.contains(&x) {
            m.push(x);
        }
    };
    let mut credits: BTreeSet<String> = BTreeSet::new();
    type Measured = Vec<(String, MetricPeriod, MonthReset)>;
    fn note(measured: &mut Measured, credits: &mut BTreeSet<String>, flag: &Flag, c: &Candidate) {
        if let Some(f) = &flag.feature {
            if f.feature_type == FeatureType::Event {
                let (p, r) = period_of(c);
                let x = (f.event_subtype.clone().unwrap_or_default(), p, r);
                if !measured.contains(&x) {
                    measured.push(x);
                }
            }
        }
        if let Value::Credit { credit_id, .. } = &c.value {
            credits.insert(credit_id.clone());
        }
    }
    for flag in &catalog.flags_sorted {
        for rule in &flag.rules {
            for c in rule
                .conditions
                .iter()
                .chain(rule.condition_groups.iter().flatten())
            {
                if c.condition_type == ConditionType::Metric {
                    if let Some(event) = &c.event_subtype {
                        measure(
                            &mut measured,
                            (
                                event.clone(),
                                c.metric_period.unwrap_or(MetricPeriod::AllTime),
                                c.metric_period_month_reset.unwrap_or_default(),
                            ),
                        );
                    }
                }
            }
        }
        let Some(feature) = &flag.feature else {
            continue;
        };
        if let Some(by_plan) = catalog.entitlements.get(&feature.id) {
            for (plan_id, info) in by_plan {
                note(&mut measured, &mut credits, flag, &info.candidate);
                if !context.plan_ids.iter().any(|p| **p == **plan_id)
                    || !depends_on_company(info.pay_in_advance, &info.candidate)
                {
                    continue;
                }
                let allocation = if info.pay_in_advance {
                    state
                        .memberships
                        .iter()
                        .find(|m| *m.plan_id == **plan_id)
                        .map(|m| m.quantity)
                        .unwrap_or(0)
                } else {
                    trait_allocation(&info.candidate, context)
                };
                rules.extend(entitlement_rules(
                    env,
                    flag,
                    &info.candidate,
                    Some(plan_id),
                    Limit::Company(allocation),
                ));
            }
        }
        if let Some(o) = state.override_for(&feature.id) {
            note(&mut measured, &mut credits, flag, o);
            if let Some(exp) = o.expires_at {
                if exp <= now {
                    continue;
                }
                soonest(exp);
            }
            let limit = match o.value {
                Value::Trait(_) => Limit::Company(trait_allocation(o, context)),
                _ => Limit::Static,
            };
            rules.extend(entitlement_rules(env, flag, o, None, limit));
        }
    }
    measured.sort_by(|a, b| {
        (&a.0, a.1.as_str(), reset_str(a.2)).cmp(&(&b.0, b.1.as_str(), reset_str(b.2)))
    });
    let metrics = measured
        .into_iter()
        .map(|(event, period, reset)| {
            let value = context.usage_of(&event, period, reset, now);
            let counted = engine::counter_reset(period, reset, context.billing_anchor);
            let win = engine::period::window(period, counted, context.billing_anchor, now);
            if let Some(end) = win.end {
                soonest(end);
            }
            RMetric {
                account_id: ACCOUNT_ID,
                company_id: context.id.to_string(),
                created_at: win.start,
                environment_id: env.to_string(),
                event_subtype: event,
                month_reset: reset_str(reset),
                period: period.as_str(),
                valid_until: win.end,
                value,
            }
        })
        .collect();
    for g in &context.credit_grants {
        credits.insert(g.credit_id.clone());
        if let Some(exp) = g.expires_at {
            soonest(exp);
        }
    }
    let credit_balances = credits
        .into_iter()
        .map(|id| {
            let remaining = context.credit_balance(&id, now).remaining;
            (id, remaining)
        })
        .collect();
    Rendered {
        company: RCompany {
            account_id: ACCOUNT_ID,
            base_plan_id: context.base_plan_id.as_deref().map(str::to_string),
            billing_product_ids: Vec::new(),
            credit_balances,
            environment_id: env.to_string(),
            id: context.id.to_string(),
            keys: keys(&state.keys),
            metrics,
            plan_ids: context.plan_ids.iter().map(|p| p.to_string()).collect(),
            plan_version_ids: Vec::new(),
            rules,
            traits: traits(&context.traits, "company"),
        },
        next_change,
    }
}

/// A trait-valued allocation: the company's numeric trait of that name, else 0.
fn trait_allocation(c: &Candidate, context: &engine::CompanyContext) -> i64 {
    match &c.value {
        Value::Trait(name) => context
            .traits
            .get(name)
            .and_then(rules::trait_as_number)
            .unwrap_or(0.0)
            .floor() as i64,
        _ => 0,
    }
}

pub fn user(environment_id: &str, state: &UserState) -> RUser {
    RUser {
        account_id: ACCOUNT_ID,
        environment_id: environment_id.to_string(),
        id: state.context.id.to_string(),
        keys: keys(&state.keys),
        rules: Vec::new(),
        traits: traits(&state.context.traits, "user"),
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
