//! Entitlement value fields, shared by plan entitlements and company overrides: the request
//! shape, its validation against the feature, the stored row and the engine value.

use serde::{Deserialize, Serialize};

use super::plans::Billing;
use super::rows::{PgQuery, PgQueryAs};
use super::Error;
use crate::engine::{self, FeatureType};

/// The value columns as stored (and as returned by the API).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EntitlementValues {
    pub value_type: String,
    pub value_bool: Option<bool>,
    pub value_numeric: Option<i64>,
    pub value_trait_id: Option<String>,
    pub value_credit_id: Option<String>,
    pub credit_consumption_rate: Option<f64>,
    pub metric_period: Option<String>,
    pub metric_period_month_reset: Option<String>,
}

/// Binds the columns shared by plan entitlements and company overrides, in the order their
/// SQL names them, inside a query's `.bind(…)` chain.
pub trait BindValues<'q> {
    /// `value_type`, `value_bool`, `value_numeric`, `value_trait_id`, `value_credit_id`,
    /// `credit_consumption_rate`, `metric_period`, `metric_period_month_reset`.
    fn bind_values(self, v: &'q EntitlementValues) -> Self;
    /// `price_behavior`, `monthly_metered_price_id`, `yearly_metered_price_id`, `soft_limit`.
    fn bind_billing(self, b: &'q Billing) -> Self;
}

// `sqlx::query` and `sqlx::query_as` build different types with the same `bind`.
macro_rules! impl_bind_values {
    ($(impl<$($g:tt),*> for $ty:ty;)+) => {$(
        impl<$($g),*> BindValues<'q> for $ty {
            fn bind_values(self, v: &'q EntitlementValues) -> Self {
                self.bind(&v.value_type)
                    .bind(v.value_bool)
                    .bind(v.value_numeric)
                    .bind(&v.value_trait_id)
                    .bind(&v.value_credit_id)
                    .bind(v.credit_consumption_rate)
                    .bind(&v.metric_period)
                    .bind(&v.metric_period_month_reset)
            }

            fn bind_billing(self, b: &'q Billing) -> Self {
                self.bind(&b.price_behavior)
                    .bind(&b.monthly_metered_price_id)
                    .bind(&b.yearly_metered_price_id)
                    .bind(b.soft_limit)
            }
        }
    )+};
}

impl_bind_values! {
    impl<'q> for PgQuery<'q>;
    impl<'q, O> for PgQueryAs<'q, O>;
}

impl EntitlementValues {
    pub fn to_engine(&self) -> engine::Value {
        match self.value_type.as_str() {
            "boolean" => engine::Value::Bool(self.value_bool.unwrap_or(false)),
            "numeric" => engine::Value::Numeric(self.value_numeric.unwrap_or(0)),
            "unlimited" => engine::Value::Unlimited,
            "trait" => engine::Value::Trait(self.value_trait_id.clone().unwrap_or_default()),
            "credit" => engine::Value::Credit {
                credit_id: self.value_credit_id.clone().unwrap_or_default(),
                rate: self.credit_consumption_rate.unwrap_or(1.0),
            },
            // The schema's CHECK constraint admits nothing else.
            _ => engine::Value::Bool(false),
        }
    }
}

/// The value fields of a create or update request. `null` and absent mean the same.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ValueInput {
    pub value_type: Option<String>,
    pub value_bool: Option<bool>,
    pub value_numeric: Option<i64>,
    pub value_trait_id: Option<String>,
    pub value_credit_id: Option<String>,
    pub credit_consumption_rate: Option<f64>,
    pub metric_period: Option<String>,
    pub metric_period_month_reset: Option<String>,
}

const VALUE_TYPES: &str = "boolean, numeric, unlimited, trait or credit";

impl ValueInput {
    /// Applies this input over `current` (for updates; `None` for creates) and validates the
    /// result against the feature's type. Only the fields the value type uses are kept.
    pub fn resolve(
        &self,
        current: Option<&EntitlementValues>,
        feature_type: FeatureType,
    ) -> Result<EntitlementValues, Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        let value_type = match (&self.value_type, current) {
            (Some(t), _) => t.clone(),
            (None, Some(c)) => c.value_type.clone(),
            (None, None) => return bad("value_type: required".into()),
        };
        // Fields carry over from the current row only when the type is unchanged.
        let keep = current.filter(|c| c.value_type == value_type);
        let pick = |new: &Option<String>, old: Option<&Option<String>>| {
            new.clone()
                .or_else(|| old.cloned().flatten())
                .filter(|s| !s.is_empty())
        };
        let value_bool = self.value_bool.or(keep.and_then(|c| c.value_bool));
        let value_numeric = self.value_numeric.or(keep.and_then(|c| c.value_numeric));
        let value_trait_id = pick(&self.value_trait_id, keep.map(|c| &c.value_trait_id));
        let value_credit_id = pick(&self.value_credit_id, keep.map(|c| &c.value_credit_id));
        let rate = self
            .credit_consumption_rate
            .or(keep.and_then(|c| c.credit_consumption_rate));
        let metric_period = pick(&self.metric_period, current.map(|c| &c.metric_period));
        let month_reset = pick(
            &self.metric_period_month_reset,
            current.map(|c| &c.metric_period_month_reset),
        );

        if let Some(p) = &metric_period {
            if engine::MetricPeriod::parse(p).is_none() {
                return bad(format!(
                    "metric_period: {p:?} is not one of all_time, current_day, current_week, current_month"
                ));
            }
        }
        if let Some(r) = &month_reset {
            if engine::MonthReset::parse(r).is_none() {
                return bad(format!(
                    "metric_period_month_reset: {r:?} is not one of first_of_month, billing_cycle"
                ));
            }
        }

        let mut out = EntitlementValues {
            value_type: value_type.clone(),
            value_bool: None,
            value_numeric: None,
            value_trait_id: None,
            value_credit_id: None,
            credit_consumption_rate: None,
            metric_period: None,
            metric_period_month_reset: None,
        };
        match value_type.as_str() {
            "boolean" => {
                out.value_bool = Some(value_bool.ok_or_else(|| {
                    Error::invalid("value_bool: required when value_type is boolean")
                })?);
            }
            "numeric" => {
                let n = value_numeric.ok_or_else(|| {
                    Error::invalid("value_numeric: required when value_type is numeric")
                })?;
                if n < 0 {
                    return bad("value_numeric: must not be negative".into());
                }
                out.value_numeric = Some(n);
            }
            "unlimited" => {}
            "trait" => {
                out.value_trait_id = Some(value_trait_id.ok_or_else(|| {
                    Error::invalid(
                        "value_trait_id: required when value_type is trait (the name of a numeric company trait)",
                    )
                })?);
            }
            "credit" => {
                out.value_credit_id = Some(value_credit_id.ok_or_else(|| {
                    Error::invalid(
                        "value_credit_id: required when value_type is credit (the id of a credit type)",
                    )
                })?);
                out.credit_consumption_rate = Some(rate.unwrap_or(1.0));
            }
            other => return bad(format!("value_type: {other:?} is not one of {VALUE_TYPES}")),
        }
        if let Some(r) = rate {
            if !(r.is_finite() && r > 0.0) {
                return bad("credit_consumption_rate: must be a positive number".into());
            }
        }

        match feature_type {
            FeatureType::Boolean if value_type != "boolean" => {
                return bad(format!(
                    "value_type: a boolean feature takes a boolean value, not {value_type}"
                ));
            }
            FeatureType::Event | FeatureType::Trait if value_type != "boolean" => {
                out.metric_period = if feature_type == FeatureType::Event {
                    Some(metric_period.unwrap_or_else(|| "all_time".into()))
                } else {
                    None
                };
                if out.metric_period.as_deref() == Some("current_month") {
                    out.metric_period_month_reset =
                        Some(month_reset.unwrap_or_else(|| "first_of_month".into()));
                }
            }
            _ => {}
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> ValueInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (serde_json::json!({}), FeatureType::Boolean, "value_type"),
            (
                serde_json::json!({"value_type": "boolean"}),
                FeatureType::Boolean,
                "value_bool",
            ),
            (
                serde_json::json!({"value_type": "numeric"}),
                FeatureType::Event,
                "value_numeric",
            ),
            (
                serde_json::json!({"value_type": "numeric", "value_numeric": -1}),
                FeatureType::Event,
                "value_numeric",
            ),
            (
                serde_json::json!({"value_type": "trait"}),
                FeatureType::Trait,
                "value_trait_id",
            ),
            (
                serde_json::json!({"value_type": "nope"}),
                FeatureType::Event,
                "value_type",
            ),
            (
                serde_json::json!({"value_type": "numeric", "value_numeric": 5}),
                FeatureType::Boolean,
                "value_type",
            ),
            (
                serde_json::json!({"value_type": "numeric", "value_numeric": 5, "metric_period": "hourly"}),
                FeatureType::Event,
                "metric_period",
            ),
        ];
        for (v, ft, field) in cases {
            let err = input(v.clone()).resolve(None, ft).unwrap_err();
            assert!(err.to_string().starts_with(field), "{v} → {err}");
        }
    }

    #[test]
    fn keeps_only_the_fields_the_type_uses() {
        let v = input(serde_json::json!({"value_type": "numeric", "value_numeric": 5, "value_bool": true, "metric_period": "current_month"}))
            .resolve(None, FeatureType::Event)
            .unwrap();
        assert_eq!(v.value_bool, None);
        assert_eq!(v.value_numeric, Some(5));
        assert_eq!(
            v.metric_period_month_reset.as_deref(),
            Some("first_of_month")
        );
        // An update that changes only the number keeps the period.
        let updated = input(serde_json::json!({"value_numeric": 9}))
            .resolve(Some(&v), FeatureType::Event)
            .unwrap();
        assert_eq!(
            (updated.value_numeric, updated.metric_period.as_deref()),
            (Some(9), Some("current_month"))
        );
        // Switching type drops the old fields.
        let unlimited = input(serde_json::json!({"value_type": "unlimited"}))
            .resolve(Some(&v), FeatureType::Event)
            .unwrap();
        assert_eq!(unlimited.value_numeric, None);
    }
}
