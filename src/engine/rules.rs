//! Standard and global-override flag rules: conditions over company, user, plan, base plan,
//! traits and metrics. Conditions in a rule are ANDed; each condition group is an OR of its
//! conditions, and groups are ANDed with the rest.

use serde::{Deserialize, Serialize};

use super::period::{MetricPeriod, MonthReset};
use super::{CompanyContext, TraitSet, UserContext};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Standard,
    GlobalOverride,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Standard => "standard",
            RuleKind::GlobalOverride => "global_override",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConditionType {
    Company,
    User,
    Plan,
    BasePlan,
    Trait,
    Metric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Eq,
    Ne,
    Gt,
    Lt,
    Gte,
    Lte,
    IsEmpty,
    NotEmpty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraitEntity {
    #[default]
    Company,
    User,
}

/// One condition, in Schematic's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Condition {
    pub condition_type: ConditionType,
    #[serde(default = "default_operator")]
    pub operator: Operator,
    #[serde(default)]
    pub resource_ids: Vec<String>,
    #[serde(default)]
    pub trait_id: Option<String>,
    #[serde(default)]
    pub trait_value: Option<String>,
    #[serde(default)]
    pub trait_entity_type: Option<TraitEntity>,
    #[serde(default)]
    pub event_subtype: Option<String>,
    #[serde(default)]
    pub metric_value: Option<i64>,
    #[serde(default)]
    pub metric_period: Option<MetricPeriod>,
    #[serde(default)]
    pub metric_period_month_reset: Option<MonthReset>,
}

fn default_operator() -> Operator {
    Operator::Eq
}

impl Condition {
    /// What is missing for this condition to be evaluable, named by field.
    pub fn validate(&self) -> Result<(), String> {
        match self.condition_type {
            ConditionType::Company
            | ConditionType::User
            | ConditionType::Plan
            | ConditionType::BasePlan => {
                if !matches!(self.operator, Operator::Eq | Operator::Ne) {
                    return Err(format!(
                        "operator: a {:?} condition takes eq or ne",
                        self.condition_type
                    )
                    .to_lowercase());
                }
                if self.resource_ids.is_empty() {
                    return Err("resource_ids: at least one id is required".into());
                }
            }
            ConditionType::Trait => {
                if self.trait_id.as_deref().unwrap_or("").is_empty() {
                    return Err("trait_id: a trait condition names its trait".into());
                }
                if !matches!(self.operator, Operator::IsEmpty | Operator::NotEmpty)
                    && self.trait_value.is_none()
                {
                    return Err("trait_value: required for this operator".into());
                }
            }
            ConditionType::Metric => {
                if self.event_subtype.as_deref().unwrap_or("").is_empty() {
                    return Err("event_subtype: a metric condition names its event".into());
                }
                if self.metric_value.is_none()
                    && !matches!(self.operator, Operator::IsEmpty | Operator::NotEmpty)
                {
                    return Err("metric_value: required for this operator".into());
                }
            }
        }
        Ok(())
    }
}

/// A flag rule as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub kind: RuleKind,
    pub priority: i32,
    pub value: bool,
    pub conditions: Vec<Condition>,
    pub condition_groups: Vec<Vec<Condition>>,
}

/// What a condition can look at.
pub struct Facts<'a> {
    pub company: Option<&'a CompanyContext>,
    pub user: Option<&'a UserContext>,
    pub now: DateTime<Utc>,
}

impl Rule {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.conditions.iter().all(|c| c.matches(facts))
            && self
                .condition_groups
                .iter()
                .all(|g| g.is_empty() || g.iter().any(|c| c.matches(facts)))
    }
}

impl Condition {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let contains = |id: &str| self.resource_ids.iter().any(|r| r == id);
        let membership = |found: bool| match self.operator {
            Operator::Ne => !found,
            _ => found,
        };
        match self.condition_type {
            ConditionType::Company => match facts.company {
                Some(c) => membership(contains(&c.id)),
                None => false,
            },
            ConditionType::User => match facts.user {
                Some(u) => membership(contains(&u.id)),
                None => false,
            },
            ConditionType::Plan => match facts.company {
                Some(c) => membership(c.plan_ids.iter().any(|p| contains(p))),
                None => false,
            },
            ConditionType::BasePlan => match facts.company {
                Some(c) => membership(c.base_plan_id.as_deref().is_some_and(contains)),
                None => false,
            },
            ConditionType::Trait => {
                let traits: Option<&TraitSet> = match self.trait_entity_type.unwrap_or_default() {
                    TraitEntity::Company => facts.company.map(|c| &c.traits),
                    TraitEntity::User => facts.user.map(|u| &u.traits),
                };
                let Some(traits) = traits else { return false };
                let name = self.trait_id.as_deref().unwrap_or("");
                let actual = traits.get(name).and_then(trait_as_string);
                compare(
                    self.operator,
                    actual.as_deref(),
                    self.trait_value.as_deref().unwrap_or(""),
                )
            }
            ConditionType::Metric => {
                let Some(c) = facts.company else { return false };
                let event = self.event_subtype.as_deref().unwrap_or("");
                let usage = c.usage_of(
                    event,
                    self.metric_period.unwrap_or(MetricPeriod::AllTime),
                    self.metric_period_month_reset.unwrap_or_default(),
                    facts.now,
                );
                let target = self.metric_value.unwrap_or(0).to_string();
                compare(self.operator, Some(&usage.to_string()), &target)
            }
        }
    }
}

/// A trait value as text; objects and arrays do not compare.
pub fn trait_as_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A trait value as a number, when it is one (numbers and numeric strings).
pub fn trait_as_number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// Compares numerically when both sides are numbers, otherwise as text (case-sensitive).
fn compare(op: Operator, actual: Option<&str>, expected: &str) -> bool {
    let empty = actual.is_none_or(|a| a.is_empty());
    match op {
        Operator::IsEmpty => return empty,
        Operator::NotEmpty => return !empty,
        _ => {}
    }
    let Some(actual) = actual else {
        return op == Operator::Ne;
    };
    let ordering = match (actual.trim().parse::<f64>(), expected.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(actual.cmp(expected)),
    };
    let Some(ord) = ordering else { return false };
    use std::cmp::Ordering::*;
    match op {
        Operator::Eq => ord == Equal,
        Operator::Ne => ord != Equal,
        Operator::Gt => ord == Greater,
        Operator::Lt => ord == Less,
        Operator::Gte => ord != Less,
        Operator::Lte => ord != Greater,
        Operator::IsEmpty | Operator::NotEmpty => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_table() {
        use Operator::*;
        let cases = [
            (Eq, Some("10"), "10.0", true),
            (Gt, Some("9"), "10", false), // numeric, not lexicographic
            (Lt, Some("9"), "10", true),
            (Gte, Some("10"), "10", true),
            (Lte, Some("11"), "10", false),
            (Eq, Some("enterprise"), "enterprise", true),
            (Ne, Some("enterprise"), "free", true),
            (Ne, None, "free", true),
            (Eq, None, "free", false),
            (Gt, None, "1", false),
            (IsEmpty, None, "", true),
            (IsEmpty, Some(""), "", true),
            (NotEmpty, Some("x"), "", true),
            (NotEmpty, None, "", false),
            (Gt, Some("b"), "a", true),
        ];
        for (op, actual, expected, want) in cases {
            assert_eq!(
                compare(op, actual, expected),
                want,
                "{op:?} {actual:?} {expected}"
            );
        }
    }

    #[test]
    fn validation_names_fields() {
        let c = crate::engine::fixtures::condition(ConditionType::Plan, Operator::Gt, vec![]);
        assert!(c.validate().unwrap_err().starts_with("operator"));
        let c = Condition {
            operator: Operator::Eq,
            ..c
        };
        assert!(c.validate().unwrap_err().starts_with("resource_ids"));
        let c = Condition {
            condition_type: ConditionType::Trait,
            ..c
        };
        assert!(c.validate().unwrap_err().starts_with("trait_id"));
    }
}
