//! Response shapes shared by several resources, in the `schematichq` SDK's field names.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::{EntitlementReport, MetricPeriod};

/// `FeatureEntitlement`: the entitlement behind a check or listed on a company.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntitlementView {
    pub feature_id: String,
    pub feature_key: String,
    pub value_type: &'static str,
    pub allocation: Option<i64>,
    pub usage: Option<i64>,
    pub event_name: Option<String>,
    pub metric_period: Option<&'static str>,
    pub metric_reset_at: Option<DateTime<Utc>>,
    pub credit_id: Option<String>,
    pub credit_total: Option<f64>,
    pub credit_used: Option<f64>,
    pub credit_remaining: Option<f64>,
}

impl From<&EntitlementReport> for EntitlementView {
    fn from(r: &EntitlementReport) -> Self {
        EntitlementView {
            feature_id: r.feature_id.clone(),
            feature_key: r.feature_key.clone(),
            value_type: r.value_type,
            allocation: r.allocation,
            usage: r.usage,
            event_name: r.event_name.clone(),
            metric_period: r.metric_period.map(MetricPeriod::as_str),
            metric_reset_at: r.metric_reset_at,
            credit_id: r.credit_id.clone(),
            credit_total: r.credit.map(|c| c.total),
            credit_used: r.credit.map(|c| c.used),
            credit_remaining: r.credit.map(|c| c.remaining),
        }
    }
}

/// [`EntitlementView`] borrowed from the engine's report, for answers serialised without
/// copying (the check paths); a test keeps the two equal.
#[derive(Serialize)]
pub struct EntitlementRef<'a> {
    feature_id: &'a str,
    feature_key: &'a str,
    value_type: &'static str,
    allocation: Option<i64>,
    usage: Option<i64>,
    event_name: Option<&'a str>,
    metric_period: Option<&'static str>,
    metric_reset_at: Option<DateTime<Utc>>,
    credit_id: Option<&'a str>,
    credit_total: Option<f64>,
    credit_used: Option<f64>,
    credit_remaining: Option<f64>,
}

impl<'a> From<&'a EntitlementReport> for EntitlementRef<'a> {
    fn from(r: &'a EntitlementReport) -> Self {
        EntitlementRef {
            feature_id: &r.feature_id,
            feature_key: &r.feature_key,
            value_type: r.value_type,
            allocation: r.allocation,
            usage: r.usage,
            event_name: r.event_name.as_deref(),
            metric_period: r.metric_period.map(MetricPeriod::as_str),
            metric_reset_at: r.metric_reset_at,
            credit_id: r.credit_id.as_deref(),
            credit_total: r.credit.map(|c| c.total),
            credit_used: r.credit.map(|c| c.used),
            credit_remaining: r.credit.map(|c| c.remaining),
        }
    }
}

/// `EntityKeyDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub definition_id: String,
    pub entity_id: String,
    pub entity_type: &'static str,
    pub environment_id: String,
    pub key: String,
    pub value: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl KeyView {
    pub fn new(
        entity_type: &'static str,
        entity_id: &str,
        environment_id: &str,
        key: String,
        value: String,
        created_at: DateTime<Utc>,
    ) -> Self {
        KeyView {
            id: format!("{entity_id}:{key}"),
            definition_id: format!("{entity_type}:{key}"),
            entity_id: entity_id.to_string(),
            entity_type,
            environment_id: environment_id.to_string(),
            key,
            value,
            created_at,
            updated_at: created_at,
        }
    }
}

/// `EntityTraitDetailResponseData`: one per trait, values as strings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TraitView {
    pub id: String,
    pub definition_id: String,
    pub environment_id: String,
    pub value: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub fn trait_views(
    entity_type: &str,
    entity_id: &str,
    environment_id: &str,
    traits: &Map<String, Value>,
    updated_at: DateTime<Utc>,
) -> Vec<TraitView> {
    traits
        .iter()
        .map(|(name, v)| TraitView {
            id: format!("{entity_id}:{name}"),
            definition_id: format!("{entity_type}:{name}"),
            environment_id: environment_id.to_string(),
            value: match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            created_at: updated_at,
            updated_at,
        })
        .collect()
}

/// Parses `keys` from a JSON body: an object of string (or number) values.
pub fn key_pairs(
    field: &str,
    keys: &Map<String, Value>,
) -> Result<Vec<(String, String)>, crate::api::error::AppError> {
    keys.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            _ => Err(crate::api::error::AppError::bad_request(format!(
                "{field}.{k}: must be a string"
            ))),
        })
        .collect()
}
