//! `POST /v1/billing/meter_events` for the fake Stripe: form-encoded `event_name`,
//! `identifier`, `timestamp`, `payload[<customer key>]`, `payload[<value key>]`, checked as
//! Stripe checks them:
//! - the event name must belong to an active meter (`put` one, object `billing.meter`), whose
//!   `customer_mapping.event_payload_key` and `value_settings.event_payload_key` name the
//!   payload keys that must be present (the value a number, negatives allowed);
//! - `timestamp` within the past 35 days and at most 5 minutes in the future;
//! - an `identifier` accepted in the last 24 hours is refused (400,
//!   `resource_already_exists`): the first event counts, a resend does not;
//! - two requests for one customer and meter that overlap in time: the later one gets 429
//!   (`rate_limit`), as Stripe's per-customer-and-meter concurrency rule says.
//!
//! Accepted events add to a per-customer-and-event total ([`FakeStripe::meter_total`]) and
//! are listed by [`FakeStripe::meter_events`].

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{unix_now, ApiError, FakeStripe, Kind, Live};

/// Stripe's window for past timestamps.
pub const MAX_AGE_SECS: i64 = 35 * 86_400;
/// Stripe's allowance for clocks ahead of its own.
pub const MAX_FUTURE_SECS: i64 = 5 * 60;
/// How long an identifier is remembered.
pub const IDENTIFIER_SECS: i64 = 24 * 3_600;

/// One accepted meter event.
#[derive(Debug, Clone)]
pub struct MeterEvent {
    pub identifier: String,
    pub event_name: String,
    pub customer: String,
    pub value: f64,
    pub timestamp: i64,
    /// When it was accepted.
    pub at: Instant,
}

#[derive(Default)]
pub(super) struct Ledger {
    /// (customer, event name) pairs with a request being handled.
    in_flight: HashSet<(String, String)>,
    /// Identifier → when it was accepted (Unix seconds).
    identifiers: HashMap<String, i64>,
    accepted: Vec<MeterEvent>,
    /// Requests refused because another one for the same customer and meter was in flight.
    overlaps: usize,
    /// Requests refused because their identifier was already accepted.
    duplicates: usize,
}

impl FakeStripe {
    /// Every accepted meter event, in the order accepted.
    pub fn meter_events(&self) -> Vec<MeterEvent> {
        self.control().meters.accepted.clone()
    }

    /// The sum of accepted values for a customer and event name.
    pub fn meter_total(&self, customer: &str, event_name: &str) -> f64 {
        self.control()
            .meters
            .accepted
            .iter()
            .filter(|e| e.customer == customer && e.event_name == event_name)
            .map(|e| e.value)
            .sum()
    }

    /// Requests refused with 429 because one for the same customer and meter was in flight.
    pub fn meter_overlaps(&self) -> usize {
        self.control().meters.overlaps
    }

    /// Requests refused because their identifier had been accepted already.
    pub fn meter_duplicates(&self) -> usize {
        self.control().meters.duplicates
    }
}

/// A (customer, event name) request in flight; removed from the ledger when dropped.
struct InFlight {
    fake: FakeStripe,
    slot: Option<(String, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.fake.control().meters.in_flight.remove(&slot);
        }
    }
}

/// Handles one authorized `POST /v1/billing/meter_events`; `latency` is spent while the
/// request is in flight (so overlapping requests can be seen).
pub(super) async fn post(fake: &FakeStripe, body: &[u8], latency: std::time::Duration) -> Response {
    let form: Vec<(String, String)> = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(e) => {
            return ApiError::invalid(format!("Invalid form body: {e}"), "body").into_response()
        }
    };
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let Some(event_name) = get("event_name") else {
        return ApiError::invalid("Missing required param: event_name.", "event_name")
            .into_response();
    };
    // The meter with that event name, and its payload keys.
    let meter = {
        let store = fake.store();
        let col = store.col(Kind::Meter);
        col.index
            .values()
            .filter(|e| e.live == Live::Yes)
            .filter_map(|e| e.value().cloned())
            .find(|m| m["event_name"] == event_name.as_str() && m["status"] == "active")
    };
    let Some(meter) = meter else {
        return ApiError::invalid(
            format!("No active meter with event_name '{event_name}'"),
            "event_name",
        )
        .into_response();
    };
    let customer_key = meter["customer_mapping"]["event_payload_key"]
        .as_str()
        .unwrap_or("stripe_customer_id")
        .to_string();
    let value_key = meter["value_settings"]["event_payload_key"]
        .as_str()
        .unwrap_or("value")
        .to_string();
    let Some(customer) = get(&format!("payload[{customer_key}]")) else {
        return ApiError::invalid(
            format!("Missing required payload key: {customer_key}"),
            &format!("payload[{customer_key}]"),
        )
        .into_response();
    };
    let value = match get(&format!("payload[{value_key}]")).map(|v| v.parse::<f64>()) {
        Some(Ok(v)) if v.is_finite() => v,
        Some(_) => {
            return ApiError::invalid(
                format!("payload[{value_key}] must be a number"),
                &format!("payload[{value_key}]"),
            )
            .into_response()
        }
        None => 1.0,
    };
    let now = unix_now();
    let timestamp = match get("timestamp").map(|t| t.parse::<i64>()) {
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            return ApiError::invalid("timestamp must be a Unix timestamp", "timestamp")
                .into_response()
        }
        None => now,
    };
    if timestamp < now - MAX_AGE_SECS {
        return ApiError::invalid("Timestamp must be within the past 35 days.", "timestamp")
            .into_response();
    }
    if timestamp > now + MAX_FUTURE_SECS {
        return ApiError::invalid(
            "Timestamp must not be more than 5 minutes in the future.",
            "timestamp",
        )
        .into_response();
    }
    let identifier =
        get("identifier").unwrap_or_else(|| format!("gen_{}", fake.control().log.len()));
    let slot = (customer.clone(), event_name.clone());
    {
        let mut control = fake.control();
        if !control.meters.in_flight.insert(slot.clone()) {
            control.meters.overlaps += 1;
            drop(control);
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "A meter event for this customer and meter is already being processed; send them one at a time.",
                }})),
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return r;
        }
    }
    // Frees the slot however the request ends (a client that hangs up drops this future).
    let guard = InFlight {
        fake: fake.clone(),
        slot: Some(slot),
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    drop(guard);
    let mut control = fake.control();
    let ledger = &mut control.meters;
    ledger
        .identifiers
        .retain(|_, at| *at > now - IDENTIFIER_SECS);
    if ledger.identifiers.contains_key(&identifier) {
        ledger.duplicates += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "type": "invalid_request_error",
                "code": "resource_already_exists",
                "param": "identifier",
                "message": format!("An event with identifier {identifier} already exists."),
            }})),
        )
            .into_response();
    }
    ledger.identifiers.insert(identifier.clone(), now);
    ledger.accepted.push(MeterEvent {
        identifier: identifier.clone(),
        event_name: event_name.clone(),
        customer: customer.clone(),
        value,
        timestamp,
        at: Instant::now(),
    });
    let payload: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("payload[")?.strip_suffix(']')?;
            Some((key.to_string(), json!(v)))
        })
        .collect();
    Json(json!({
        "object": "billing.meter_event",
        "created": now,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": false,
        "payload": payload,
        "timestamp": timestamp,
    }))
    .into_response()
}

/// The metered account [`FakeStripe::put_metered_account`] builds.
pub const METERED_METER: &str = "mtr_bench";
pub const METERED_EVENT: &str = "api_calls";
pub const METERED_PRICE: &str = "price_metered";
pub const METERED_BASE_PRICE: &str = "price_base";

impl FakeStripe {
    /// A metered account for benchmarks: meter `mtr_bench` (event `api_calls`), product
    /// `prod_base` with licensed price `price_base`, product `prod_usage` with metered price
    /// `price_metered`, and `customers` customers `cus_m<k>` (metadata `company_id =
    /// metered-<k>`, k from 1), each subscribed to both prices.
    pub fn put_metered_account(&self, customers: usize) {
        let fixture = |text: &str| super::fixture_object(text);
        let mut meter = fixture(include_str!(
            "../../fixtures/stripe/billing.meter.created.json"
        ));
        meter["id"] = json!(METERED_METER);
        meter["event_name"] = json!(METERED_EVENT);
        self.put(meter);
        for (product, price, metered) in [
            ("prod_base", METERED_BASE_PRICE, false),
            ("prod_usage", METERED_PRICE, true),
        ] {
            let mut p = fixture(super::PRODUCT_FIXTURE);
            p["id"] = json!(product);
            self.put(p);
            let mut pr = fixture(super::PRICE_FIXTURE);
            pr["id"] = json!(price);
            pr["product"] = json!(product);
            if metered {
                pr["recurring"]["usage_type"] = json!("metered");
                pr["recurring"]["meter"] = json!(METERED_METER);
            }
            self.put(pr);
        }
        let customer_tpl = fixture(super::CUSTOMER_FIXTURE);
        let sub_tpl = fixture(super::SUBSCRIPTION_FIXTURE);
        let now = unix_now();
        for k in 1..=customers {
            let id = format!("cus_m{k}");
            let mut c = customer_tpl.clone();
            c["id"] = json!(id);
            c["name"] = json!(format!("Metered {k}"));
            c["metadata"] = json!({"company_id": format!("metered-{k}")});
            self.put(c);
            let mut s = sub_tpl.clone();
            let sub_id = format!("sub_m{k}");
            s["id"] = json!(sub_id);
            s["customer"] = json!(id);
            s["status"] = json!("active");
            let item_tpl = s["items"]["data"][0].clone();
            let items: Vec<Value> = [
                ("base", "prod_base", METERED_BASE_PRICE),
                ("usage", "prod_usage", METERED_PRICE),
            ]
            .iter()
            .map(|(suffix, product, price)| {
                let mut item = item_tpl.clone();
                item["id"] = json!(format!("si_m{k}_{suffix}"));
                item["subscription"] = json!(sub_id);
                item["quantity"] = json!(1);
                item["current_period_start"] = json!(now - 86_400);
                item["current_period_end"] = json!(now + 29 * 86_400);
                item["price"]["id"] = json!(price);
                item["price"]["product"] = json!(product);
                item["plan"]["id"] = json!(price);
                item["plan"]["product"] = json!(product);
                item
            })
            .collect();
            s["items"]["data"] = Value::Array(items);
            self.put(s);
        }
    }
}
