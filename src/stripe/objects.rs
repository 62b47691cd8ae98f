//! The Stripe objects entitled reads, as our own serde structs with only the fields we use.
//! Unknown fields are ignored, so other API versions parse as long as these fields keep
//! their meaning. Shapes are those of API version `2026-09-30.endive`: billing periods live
//! on subscription items (`items.data[].current_period_start/end`), not on the subscription.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// What the webhook endpoint needs from an event before storing it.
#[derive(Debug, Deserialize)]
pub struct EventHead {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    #[serde(default)]
    pub livemode: bool,
    pub api_version: Option<String>,
    pub data: EventHeadData,
}

#[derive(Debug, Deserialize)]
pub struct EventHeadData {
    pub object: ObjectHead,
}

#[derive(Debug, Deserialize)]
pub struct ObjectHead {
    pub id: Option<String>,
}

/// A whole event with its object, when it is applied.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// An id, or the object it names when expanded (`{"id": …, …}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    pub fn id(&self) -> &str {
        match self {
            IdOrObject::Id(id) | IdOrObject::Object { id } => id,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Product {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub livemode: bool,
    pub created: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recurring {
    pub interval: String,
    pub interval_count: Option<i32>,
    pub usage_type: Option<String>,
    /// The meter a metered price bills (`usage_type = metered`).
    pub meter: Option<String>,
}

/// A Billing Meter (`/v1/billing/meters`, object `billing.meter`).
#[derive(Debug, Clone, Deserialize)]
pub struct Meter {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
    pub event_name: String,
    pub customer_mapping: Option<PayloadKey>,
    pub value_settings: Option<PayloadKey>,
    pub default_aggregation: Option<Aggregation>,
    #[serde(default = "active")]
    pub status: String,
    #[serde(default)]
    pub livemode: bool,
    pub created: Option<i64>,
}

/// `customer_mapping` and `value_settings`: which payload key carries the customer / value.
#[derive(Debug, Clone, Deserialize)]
pub struct PayloadKey {
    pub event_payload_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Aggregation {
    pub formula: String,
}

/// Stripe's defaults for a meter's payload keys.
pub const DEFAULT_CUSTOMER_PAYLOAD_KEY: &str = "stripe_customer_id";
pub const DEFAULT_VALUE_PAYLOAD_KEY: &str = "value";

fn active() -> String {
    "active".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub id: String,
    pub product: IdOrObject,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub currency: String,
    pub unit_amount: Option<i64>,
    pub billing_scheme: Option<String>,
    #[serde(default, rename = "type")]
    pub price_type: Option<String>,
    pub recurring: Option<Recurring>,
    pub nickname: Option<String>,
    pub lookup_key: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub livemode: bool,
    pub created: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    pub id: String,
    pub price: ItemPrice,
    /// Absent for metered prices.
    pub quantity: Option<i64>,
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
}

/// The price embedded in an item: only its id and product matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemPrice {
    pub id: String,
    pub product: IdOrObject,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub customer: IdOrObject,
    pub status: String,
    pub created: i64,
    pub trial_end: Option<i64>,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<i64>,
    pub items: List<SubscriptionItem>,
}

fn yes() -> bool {
    true
}

/// A Unix timestamp from Stripe as a time, or an error naming the field.
pub fn time(field: &str, secs: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| format!("{field}: {secs} is not a valid time"))
}

pub fn opt_time(field: &str, secs: Option<i64>) -> Result<Option<DateTime<Utc>>, String> {
    secs.map(|s| time(field, s)).transpose()
}

/// Subscription statuses that grant access.
pub fn status_grants_access(status: &str) -> bool {
    matches!(status, "trialing" | "active" | "past_due")
}

pub const SUBSCRIPTION_STATUSES: &[&str] = &[
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endive_subscription_parses_with_periods_on_items() {
        let raw = include_str!("../../fixtures/stripe/customer.subscription.created.json");
        let event: Event = serde_json::from_str(raw).unwrap();
        let sub: Subscription = serde_json::from_value(event.data.object).unwrap();
        assert_eq!(sub.status, "trialing");
        let item = &sub.items.data[0];
        assert!(item.current_period_start.is_some() && item.current_period_end.is_some());
        assert!(item.price.product.id().starts_with("prod_"));
    }

    #[test]
    fn ids_or_expanded_objects() {
        let id: IdOrObject = serde_json::from_str(r#""prod_1""#).unwrap();
        let obj: IdOrObject = serde_json::from_str(r#"{"id": "prod_1", "name": "x"}"#).unwrap();
        assert_eq!((id.id(), obj.id()), ("prod_1", "prod_1"));
    }
}
