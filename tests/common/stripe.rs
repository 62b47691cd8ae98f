//! Stripe test helpers: events built from `fixtures/stripe/` (real `2026-09-30.endive`
//! shapes), signing, and sending them to the webhook endpoint.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::TestApp;

pub const SECRET: &str = "whsec_entitled_tests_0123456789abcdef";
pub const API_KEY: &str = "sk_test_entitled_fake";

/// Configuration TOML for one environment with our webhook secret; `extra` adds lines to the
/// environment's table (e.g. `stripe_refetch_on_webhook = false`).
pub fn config(extra: &str) -> String {
    format!(
        "[[environments]]\nkey = \"development\"\nname = \"Development\"\n\
         stripe_webhook_secrets = [\"{SECRET}\"]\n{extra}\n"
    )
}

/// [`config`] pointing the environment at a (fake) Stripe API at `api_base` with our API key;
/// `extra` adds lines as there.
pub fn fake_config(api_base: &str, extra: &str) -> String {
    config(&format!(
        "stripe_api_key = \"{API_KEY}\"\nstripe_api_base = \"{api_base}\"\n{extra}"
    ))
}

/// A fixture event as stored in `fixtures/stripe/{name}.json`.
pub fn fixture(name: &str) -> Value {
    let path = format!("fixtures/stripe/{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// An event of `kind` around `object`, shaped like the fixture of that kind.
pub fn event(kind: &str, id: &str, created: i64, object: Value) -> Value {
    let template = if std::path::Path::new(&format!("fixtures/stripe/{kind}.json")).exists() {
        kind
    } else {
        "customer.updated"
    };
    let mut e = fixture(template);
    e["id"] = json!(id);
    e["type"] = json!(kind);
    e["created"] = json!(created);
    e["data"] = json!({ "object": object });
    e
}

/// A customer object (fixture shape) with the given id, name and metadata.
pub fn customer(id: &str, name: &str, metadata: Value) -> Value {
    let mut c = fixture("customer.created")["data"]["object"].clone();
    c["id"] = json!(id);
    c["name"] = json!(name);
    c["email"] = json!(format!(
        "billing@{}.test",
        name.to_lowercase().replace(' ', "-")
    ));
    c["metadata"] = metadata;
    c
}

/// One subscription item: (item id, price id, product id, quantity).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub id: &'a str,
    pub price: &'a str,
    pub product: &'a str,
    pub quantity: i64,
}

pub const PERIOD_START: i64 = 1_790_000_000;
pub const PERIOD_END: i64 = PERIOD_START + 30 * 86_400;

/// A subscription object in the endive shape: periods on the items, prices expanded.
pub fn subscription(id: &str, customer: &str, status: &str, items: &[Item]) -> Value {
    let mut s = fixture("customer.subscription.updated")["data"]["object"].clone();
    let template = s["items"]["data"][0].clone();
    s["id"] = json!(id);
    s["customer"] = json!(customer);
    s["status"] = json!(status);
    s["items"]["url"] = json!(format!("/v1/subscription_items?subscription={id}"));
    s["items"]["data"] = Value::Array(
        items
            .iter()
            .map(|i| {
                let mut item = template.clone();
                item["id"] = json!(i.id);
                item["subscription"] = json!(id);
                item["quantity"] = json!(i.quantity);
                item["current_period_start"] = json!(PERIOD_START);
                item["current_period_end"] = json!(PERIOD_END);
                item["price"]["id"] = json!(i.price);
                item["price"]["product"] = json!(i.product);
                item["plan"]["id"] = json!(i.price);
                item["plan"]["product"] = json!(i.product);
                item
            })
            .collect(),
    );
    if status == "canceled" {
        s["canceled_at"] = json!(PERIOD_START + 86_400);
        s["ended_at"] = json!(PERIOD_START + 86_400);
    }
    s
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `Stripe-Signature` header for `body`, signed now.
pub fn sign(body: &[u8], secret: &str) -> String {
    entitled::stripe::signature::sign(body, secret, now())
}

impl TestApp {
    /// Posts raw bytes to a webhook path with an optional signature header.
    pub async fn webhook_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header("Stripe-Signature", s);
        }
        let resp = req.send().await.expect("webhook sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Signs `event` with the test secret and posts it to `/webhooks/stripe`.
    pub async fn webhook(&self, event: &Value) -> (StatusCode, Value) {
        let body = serde_json::to_vec_pretty(event).unwrap();
        let sig = sign(&body, SECRET);
        self.webhook_raw("/webhooks/stripe", body, Some(sig)).await
    }

    /// Signs and posts `event`, which must be answered 200.
    pub async fn webhook_ok(&self, event: &Value) {
        let (status, body) = self.webhook(event).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Signs and posts an event of `kind` (id `id`, created now) around `object`, which must
    /// be answered 200.
    pub async fn webhook_now(&self, kind: &str, id: &str, object: Value) {
        self.webhook_ok(&event(kind, id, now(), object)).await;
    }

    /// Sends `event`, expects 200, and waits until the inbox has processed it; returns its
    /// status (`applied`, `skipped`, `ignored` or `failed`).
    pub async fn deliver(&self, event: &Value) -> String {
        self.webhook_ok(event).await;
        let id = event["id"].as_str().unwrap().to_string();
        self.processed(&id).await
    }

    /// Waits until the event has left `pending`; returns its status.
    pub async fn processed(&self, id: &str) -> String {
        super::eventually(Duration::from_secs(10), || async {
            self.event_status(id).await.filter(|s| s != "pending")
        })
        .await
    }

    /// Waits (at most a second: the snapshot's promise) until the check answers `value`;
    /// returns the check result.
    pub async fn check_becomes(&self, flag: &str, company: Value, value: bool) -> Value {
        super::eventually(Duration::from_secs(1), || async {
            let c = self.check(flag, company.clone()).await;
            (c["value"] == value).then_some(c)
        })
        .await
    }

    pub async fn event_status(&self, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

/// Stores a delivery in the inbox as the webhook does (a redelivery is stored once); whether
/// it was new.
pub async fn store(state: &entitled::api::AppState, event: &Value) -> bool {
    let env_id = state.cache.default_env().unwrap().environment.id.clone();
    let payload = serde_json::to_string(event).unwrap();
    let created = chrono::DateTime::from_timestamp(event["created"].as_i64().unwrap(), 0).unwrap();
    let new = entitled::stripe::inbox::NewEvent {
        environment_id: &env_id,
        id: event["id"].as_str().unwrap(),
        kind: event["type"].as_str().unwrap(),
        object_id: event["data"]["object"]["id"].as_str(),
        created,
        livemode: false,
        api_version: None,
        payload: &payload,
    };
    entitled::stripe::inbox::insert(&mut state.pool.acquire().await.unwrap(), &new)
        .await
        .unwrap()
}
