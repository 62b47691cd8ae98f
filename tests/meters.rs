//! Usage-based billing, the model: Stripe meters and metered prices mirrored by reconcile
//! and webhooks (`GET /billing/meters`), plan entitlements with `price_behavior`, metered
//! price ids and `soft_limit` (validated, 4xx naming the field), and access under
//! `overage` / `pay_as_you_go`: not cut at the allocation, cut at the soft limit.

mod common;
mod fake_stripe;

use std::time::Duration;

use common::stripe as s;
use fake_stripe::FakeStripe;
use reqwest::StatusCode;
use serde_json::{json, Value};

const METER: &str = "mtr_1TqvApiCallsMetered";
const METERED_PRICE: &str = "price_api_calls_metered";
const LICENSED_PRICE: &str = "price_api_calls_licensed";
const PRODUCT: &str = "prod_api";

fn meter(id: &str, event_name: &str) -> Value {
    let mut m = s::fixture("billing.meter.created")["data"]["object"].clone();
    m["id"] = json!(id);
    m["event_name"] = json!(event_name);
    m
}

fn price(id: &str, meter: Option<&str>) -> Value {
    let mut p = s::fixture("price.created.metered")["data"]["object"].clone();
    p["id"] = json!(id);
    p["product"] = json!(PRODUCT);
    match meter {
        Some(m) => p["recurring"]["meter"] = json!(m),
        None => {
            p["recurring"]["meter"] = Value::Null;
            p["recurring"]["usage_type"] = json!("licensed");
        }
    }
    p
}

fn config(fake: &FakeStripe) -> String {
    s::config(&format!(
        "stripe_api_key = \"{}\"\nstripe_api_base = \"{}\"\n",
        s::API_KEY,
        fake.base
    ))
}

/// A fake with one meter, a product, a metered price on the meter and a licensed price;
/// an app that has reconciled it.
async fn reconciled() -> (FakeStripe, common::TestApp) {
    let fake = FakeStripe::start(s::API_KEY).await;
    fake.put(meter(METER, "api_calls"));
    let mut product = s::fixture("product.created")["data"]["object"].clone();
    product["id"] = json!(PRODUCT);
    fake.put(product);
    fake.put(price(METERED_PRICE, Some(METER)));
    fake.put(price(LICENSED_PRICE, None));
    let app = common::spawn_app_with(&config(&fake)).await;
    let run = app.create("/stripe/reconcile", json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    let run = common::eventually(Duration::from_secs(30), || async {
        let (_, body) = app.get(&format!("/stripe/reconcile-runs/{id}")).await;
        (body["data"]["status"] != "running").then(|| body["data"].clone())
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counts"]["meters"]["created"], 1, "{run}");
    (fake, app)
}

#[tokio::test]
async fn reconcile_and_webhooks_mirror_meters_and_metered_prices() {
    let (fake, app) = reconciled().await;
    // Reconcile listed the meters.
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path == "/v1/billing/meters" && r.query.contains("limit=100")));
    let (status, body) = app.get("/billing/meters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let meters = body["data"].as_array().unwrap();
    assert_eq!(meters.len(), 1, "{body}");
    let m = &meters[0];
    assert_eq!(m["id"], METER);
    assert_eq!(m["event_name"], "api_calls");
    assert_eq!(m["customer_payload_key"], "stripe_customer_id");
    assert_eq!(m["value_payload_key"], "value");
    assert_eq!(m["status"], "active");
    // The metered price names its meter; the licensed one none.
    let meter_of = |id: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT meter_id FROM billing_prices WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(meter_of(METERED_PRICE).await.as_deref(), Some(METER));
    assert_eq!(meter_of(LICENSED_PRICE).await, None);

    // Webhooks keep the meter current: updated (a new value key), deactivated, reactivated.
    let hook =
        |kind: &str, id: &str, created: i64, object: Value| s::event(kind, id, created, object);
    let now = s::now();
    let mut updated = meter(METER, "api_calls");
    updated["value_settings"]["event_payload_key"] = json!("calls");
    updated["display_name"] = json!("API calls (billed)");
    assert_eq!(
        app.deliver(&hook(
            "billing.meter.updated",
            "evt_m1",
            now,
            updated.clone()
        ))
        .await,
        "applied"
    );
    let (_, body) = app.get("/billing/meters").await;
    assert_eq!(body["data"][0]["value_payload_key"], "calls", "{body}");
    assert_eq!(
        body["data"][0]["display_name"], "API calls (billed)",
        "{body}"
    );

    let mut inactive = updated.clone();
    inactive["status"] = json!("inactive");
    assert_eq!(
        app.deliver(&hook(
            "billing.meter.deactivated",
            "evt_m2",
            now + 1,
            inactive
        ))
        .await,
        "applied"
    );
    let (_, body) = app.get("/billing/meters?status=inactive").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = app.get("/billing/meters?status=active").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 0, "{body}");
    // An older event arriving late is skipped, not applied over the newer state.
    assert_eq!(
        app.deliver(&hook(
            "billing.meter.updated",
            "evt_m0",
            now - 10,
            updated.clone()
        ))
        .await,
        "skipped"
    );
    assert_eq!(
        app.deliver(&hook(
            "billing.meter.reactivated",
            "evt_m3",
            now + 2,
            updated
        ))
        .await,
        "applied"
    );
    let (_, body) = app.get("/billing/meters?status=active").await;
    assert_eq!(body["data"][0]["id"], METER, "{body}");
    // A meter created by webhook alone.
    let created = s::fixture("billing.meter.created");
    assert_eq!(app.deliver(&created).await, "applied");
    let (_, body) = app.get("/billing/meters").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    // A bad filter names the parameter.
    let (status, body) = app.get("/billing/meters?status=paused").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("status"), "{body}");
}

async fn feature_and_plan(app: &common::TestApp) -> (String, String) {
    let feature = app
        .create(
            "/features",
            json!({"name": "API calls", "key": "api-calls", "feature_type": "event", "event_subtype": "api_call"}),
        )
        .await;
    let plan = app
        .create(
            "/plans",
            json!({"name": "Usage", "key": "usage", "plan_type": "plan"}),
        )
        .await;
    (
        feature["id"].as_str().unwrap().to_string(),
        plan["id"].as_str().unwrap().to_string(),
    )
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn billing_fields_on_plan_entitlements_are_checked_and_name_the_field() {
    let (_fake, app) = reconciled().await;
    let (feature, plan) = feature_and_plan(&app).await;
    let base = json!({"plan_id": plan, "feature_id": feature, "value_type": "numeric",
                      "value_numeric": 100, "metric_period": "current_month"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let refused = [
        (
            json!({"price_behavior": "overage"}),
            "monthly_metered_price_id",
        ),
        (
            json!({"price_behavior": "pay_as_you_go"}),
            "monthly_metered_price_id",
        ),
        (
            json!({"price_behavior": "overage", "monthly_metered_price_id": LICENSED_PRICE}),
            "monthly_metered_price_id",
        ),
        (
            json!({"price_behavior": "overage", "yearly_metered_price_id": "price_nope"}),
            "yearly_metered_price_id",
        ),
        (
            json!({"price_behavior": "overage", "monthly_metered_price_id": METERED_PRICE, "soft_limit": 99}),
            "soft_limit",
        ),
        (json!({"price_behavior": "by_the_byte"}), "price_behavior"),
        (json!({"soft_limit": "lots"}), "soft_limit"),
    ];
    for (extra, field) in refused {
        let (status, body) = app.post("/plan-entitlements", with(extra.clone())).await;
        assert!(status.is_client_error(), "{extra}: {status} {body}");
        assert!(
            error_of(&body).starts_with(field) || error_of(&body).contains(field),
            "{extra}: {body}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM plan_entitlements").await,
        0,
        "nothing half-written"
    );

    // Accepted, with Schematic's names echoed.
    let ent = app
        .create(
            "/plan-entitlements",
            with(json!({"price_behavior": "overage", "monthly_metered_price_id": METERED_PRICE, "soft_limit": 150})),
        )
        .await;
    assert_eq!(ent["price_behavior"], "overage");
    assert_eq!(ent["monthly_metered_price_id"], METERED_PRICE);
    assert_eq!(ent["yearly_metered_price_id"], Value::Null);
    assert_eq!(ent["soft_limit"], 150);
    let id = ent["id"].as_str().unwrap();

    // Updates keep absent fields, check the result as a whole, and write nothing when refused.
    let (status, body) = app
        .put(
            &format!("/plan-entitlements/{id}"),
            json!({"value_numeric": 200}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the soft limit would be below the allocation: {body}"
    );
    assert!(error_of(&body).starts_with("soft_limit"), "{body}");
    let (status, body) = app
        .put(
            &format!("/plan-entitlements/{id}"),
            json!({"monthly_metered_price_id": ""}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "overage without a metered price: {body}"
    );
    let (_, body) = app.get(&format!("/plan-entitlements/{id}")).await;
    assert_eq!(body["data"]["value_numeric"], 100);
    assert_eq!(body["data"]["monthly_metered_price_id"], METERED_PRICE);
    let (status, body) = app
        .put(
            &format!("/plan-entitlements/{id}"),
            json!({"price_behavior": "pay_as_you_go", "soft_limit": 500}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["price_behavior"], "pay_as_you_go");
    assert_eq!(body["data"]["soft_limit"], 500);
    assert_eq!(body["data"]["monthly_metered_price_id"], METERED_PRICE);
    // The values accepted before keep working without a metered price.
    let (status, body) = app
        .put(
            &format!("/plan-entitlements/{id}"),
            json!({"price_behavior": "pay_in_advance", "monthly_metered_price_id": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["price_behavior"], "pay_in_advance");
}

#[tokio::test]
async fn overage_is_not_cut_at_the_allocation_and_a_soft_limit_is() {
    let (_fake, app) = reconciled().await;
    let (feature, plan) = feature_and_plan(&app).await;
    let ent = app
        .create(
            "/plan-entitlements",
            json!({"plan_id": plan, "feature_id": feature, "value_type": "numeric",
                   "value_numeric": 10, "metric_period": "current_month",
                   "price_behavior": "overage", "monthly_metered_price_id": METERED_PRICE,
                   "soft_limit": 15}),
        )
        .await;
    app.create(
        "/companies",
        json!({"keys": {"id": "acme"}, "name": "Acme", "base_plan_id": plan}),
    )
    .await;
    let track = |n: i64| json!({"event_type": "track", "body": {"event": "api_call", "company": {"id": "acme"}, "quantity": n}});
    app.create("/events", track(12)).await;
    // Past the allocation (12 of 10): still allowed, billed as overage.
    let c = app
        .check_becomes("api-calls", json!({"id": "acme"}), true)
        .await;
    assert_eq!(c["rule_type"], "plan_entitlement", "{c}");
    assert_eq!(c["entitlement"]["allocation"], 10, "{c}");
    assert_eq!(c["entitlement"]["usage"], 12, "{c}");
    // At the soft limit: denied.
    app.create("/events", track(3)).await;
    let c = app
        .check_becomes("api-calls", json!({"id": "acme"}), false)
        .await;
    assert_eq!(c["rule_type"], "plan_entitlement_usage_exceeded", "{c}");
    assert!(c["reason"].as_str().unwrap().contains("Soft limit"), "{c}");
    // Raised, under pay-as-you-go: allowed far past the allocation again.
    let id = ent["id"].as_str().unwrap();
    let (status, body) = app
        .put(
            &format!("/plan-entitlements/{id}"),
            json!({"price_behavior": "pay_as_you_go", "soft_limit": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.create("/events", track(1000)).await;
    let c = app
        .check_becomes("api-calls", json!({"id": "acme"}), true)
        .await;
    assert_eq!(c["entitlement"]["usage"], 1015, "{c}");
}

// ---------------------------------------------------------------------------------------------
// The meter-event outbox and its sender, end to end against the fake Stripe.

/// A Stripe account for billing tests: meter `api_calls`, a metered price on it (product
/// `prod_usage`, linked to no plan), and per plan key a product `prod_<plan>` with a
/// licensed price. Customer `cus_<company>` (metadata `company_id`) subscribes to its plan's
/// licensed price and, when `metered`, to the metered price.
struct Billing {
    fake: FakeStripe,
    app: common::TestApp,
}

const USAGE_PRODUCT: &str = "prod_usage";

fn product_object(id: &str) -> Value {
    let mut p = s::fixture("product.created")["data"]["object"].clone();
    p["id"] = json!(id);
    p["name"] = json!(id);
    p
}

fn licensed_price(plan: &str) -> Value {
    let mut p = price(&format!("price_{plan}"), None);
    p["product"] = json!(format!("prod_{plan}"));
    p
}

impl Billing {
    /// `extra`: lines for the environment's table (e.g. `stripe_meter_flush_secs = 1`).
    async fn start(extra: &str) -> Billing {
        let fake = FakeStripe::start(s::API_KEY).await;
        fake.put(meter(METER, "api_calls"));
        fake.put(product_object(USAGE_PRODUCT));
        let mut metered = price(METERED_PRICE, Some(METER));
        metered["product"] = json!(USAGE_PRODUCT);
        fake.put(metered);
        let app = common::spawn_app_with(&format!("{}{extra}\n", config(&fake))).await;
        app.create(
            "/features",
            json!({"name": "API calls", "key": "api-calls", "feature_type": "event", "event_subtype": "api_call"}),
        )
        .await;
        Billing { fake, app }
    }

    /// A plan billed per `behavior` (`None`: a plain allocation without a metered price).
    async fn plan(&self, key: &str, behavior: Option<&str>, allocation: i64) {
        self.fake.put(product_object(&format!("prod_{key}")));
        self.fake.put(licensed_price(key));
        let plan = self
            .app
            .create(
                "/plans",
                json!({"name": key, "key": key, "plan_type": "plan", "billing_product_id": format!("prod_{key}")}),
            )
            .await;
        self.reconcile().await; // the prices, before an entitlement names one
        let feature: String = sqlx::query_scalar("SELECT id FROM features WHERE key = 'api-calls'")
            .fetch_one(&self.app.pool)
            .await
            .unwrap();
        let mut body = json!({"plan_id": plan["id"], "feature_id": feature, "value_type": "numeric",
                              "value_numeric": allocation, "metric_period": "current_month"});
        if let Some(b) = behavior {
            body["price_behavior"] = json!(b);
            body["monthly_metered_price_id"] = json!(METERED_PRICE);
        }
        self.app.create("/plan-entitlements", body).await;
    }

    /// A customer of `plan` for company key `company_id = company`.
    async fn customer(&self, company: &str, plan: &str, metered: bool) {
        let customer = format!("cus_{company}");
        self.fake.put(s::customer(
            &customer,
            company,
            json!({"company_id": company}),
        ));
        let base = format!("si_{company}_base");
        let usage = format!("si_{company}_usage");
        let price = format!("price_{plan}");
        let product = format!("prod_{plan}");
        let mut items = vec![s::Item {
            id: &base,
            price: &price,
            product: &product,
            quantity: 1,
        }];
        if metered {
            items.push(s::Item {
                id: &usage,
                price: METERED_PRICE,
                product: USAGE_PRODUCT,
                quantity: 1,
            });
        }
        self.fake.put(s::subscription(
            &format!("sub_{company}"),
            &customer,
            "active",
            &items,
        ));
    }

    async fn reconcile(&self) {
        let run = self.app.create("/stripe/reconcile", json!({})).await;
        let id = run["id"].as_str().unwrap().to_string();
        let run = common::eventually(Duration::from_secs(30), || async {
            let (_, body) = self.app.get(&format!("/stripe/reconcile-runs/{id}")).await;
            (body["data"]["status"] != "running").then(|| body["data"].clone())
        })
        .await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }

    async fn track(&self, company: &str, quantities: &[i64]) {
        let events: Vec<Value> = quantities
            .iter()
            .map(|q| json!({"event_type": "track", "body": {"event": "api_call", "company": {"company_id": company}, "quantity": q}}))
            .collect();
        let (status, body) = self
            .app
            .post("/event-batch", json!({ "events": events }))
            .await;
        assert!(status.is_success(), "{body}");
    }

    /// Waits until nothing is pending and returns the environment's meter-event rows.
    async fn settled(&self) -> Vec<Value> {
        // Long enough for a backoff that reached 64 s (after the minute-long outage).
        common::eventually(Duration::from_secs(180), || async {
            let (_, body) = self.app.get("/stripe/meter-events?status=pending").await;
            body["data"].as_array().unwrap().is_empty().then_some(())
        })
        .await;
        let (_, body) = self.app.get("/stripe/meter-events?limit=1000").await;
        body["data"].as_array().unwrap().clone()
    }

    fn billed(&self, company: &str) -> f64 {
        self.fake
            .meter_total(&format!("cus_{company}"), "api_calls")
    }
}

#[tokio::test]
async fn overage_bills_exactly_the_units_above_the_allocation() {
    let b = Billing::start("").await;
    b.plan("growth", Some("overage"), 100).await;
    b.customer("acme", "growth", true).await;
    b.reconcile().await;
    // 150 units in one batch, the allocation crossed in the middle of the second event.
    b.track("acme", &[60, 60, 30]).await;
    let rows = b.settled().await;
    common::eventually(Duration::from_secs(10), || async {
        (b.billed("acme") == 50.0).then_some(())
    })
    .await;
    // Two rows: 20 of the second event, all 30 of the third; both sent once.
    let mut values: Vec<i64> = rows.iter().map(|r| r["value"].as_i64().unwrap()).collect();
    values.sort();
    assert_eq!(values, vec![20, 30], "{rows:?}");
    for r in &rows {
        assert_eq!(r["status"], "sent", "{r}");
        assert_eq!(r["stripe_customer_id"], "cus_acme");
        assert_eq!(r["meter"], METER);
        assert_eq!(r["event_name"], "api_calls");
        assert_eq!(r["environment"], "development");
        assert!(r["sent_at"].is_string() && r["error"].is_null(), "{r}");
    }
    // Each row was sent with its own identifier, once.
    let sent = b.fake.meter_events();
    assert_eq!(sent.len(), 2);
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["identifier"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut sent_ids: Vec<&str> = sent.iter().map(|e| e.identifier.as_str()).collect();
    sent_ids.sort();
    assert_eq!(ids, sent_ids);
    // One row by id, filters, and a sent row cannot be retried.
    let id = rows[0]["id"].as_str().unwrap();
    let (status, one) = b.app.get(&format!("/stripe/meter-events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["data"]["id"], *id);
    let (_, by_meter) = b
        .app
        .get(&format!("/stripe/meter-events?meter={METER}&status=sent"))
        .await;
    assert_eq!(by_meter["data"].as_array().unwrap().len(), 2);
    let company = rows[0]["company_id"].as_str().unwrap();
    let (_, by_company) = b
        .app
        .get(&format!("/stripe/meter-events?company_id={company}"))
        .await;
    assert_eq!(by_company["data"].as_array().unwrap().len(), 2);
    let (status, body) = b
        .app
        .post(&format!("/stripe/meter-events/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = b.app.get("/stripe/meter-events?status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("status"), "{body}");
    let (status, _) = b.app.get("/stripe/meter-events/mevt_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // More usage in the same month is all overage.
    b.track("acme", &[5]).await;
    b.settled().await;
    common::eventually(Duration::from_secs(10), || async {
        (b.billed("acme") == 55.0).then_some(())
    })
    .await;
    // The sender's metrics.
    let metrics = b.app.metrics_text().await;
    // (Counters are per process, shared by the tests running beside this one: at least ours.)
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {metrics}"))
    };
    assert!(value("entitled_stripe_meter_events_total{result=\"sent\"}") >= 3.0);
    assert!(value("entitled_stripe_meter_event_lag_seconds_count") >= 3.0);
    assert_eq!(value("entitled_stripe_meter_events_pending"), 0.0);
}

#[tokio::test]
async fn pay_as_you_go_bills_every_unit_and_only_billable_events() {
    let b = Billing::start("").await;
    b.plan("payg", Some("pay_as_you_go"), 0).await;
    b.plan("flat", None, 1000).await;
    b.customer("payg-co", "payg", true).await;
    b.customer("flat-co", "flat", true).await; // a metered item, but no metered entitlement
    b.customer("unmetered-co", "payg", false).await; // a metered entitlement, no metered item
    b.reconcile().await;
    b.track("payg-co", &[3, 4]).await;
    b.track("flat-co", &[10]).await;
    b.track("unmetered-co", &[10]).await;
    // A correction is billed as a negative value.
    b.track("payg-co", &[-2]).await;
    // An idempotent repeat and a backfilled event are counted (or not) but never billed.
    let ev = |extra: Value| {
        let mut e = json!({"event_type": "track", "body": {"event": "api_call", "company": {"company_id": "payg-co"}, "quantity": 100}});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    b.app
        .create("/events", ev(json!({"idempotency_key": "once"})))
        .await;
    b.app
        .create("/events", ev(json!({"idempotency_key": "once"})))
        .await;
    b.app
        .create("/events", ev(json!({"backfill": true, "trusted_client_clock": true, "sent_at": "2026-01-02T03:04:05Z"})))
        .await;
    // A trusted client clock sets the event's time.
    let at = chrono::Utc::now() - chrono::Duration::hours(2);
    b.app
        .create("/events", ev(json!({"trusted_client_clock": true, "sent_at": at.to_rfc3339(), "body": {"event": "api_call", "company": {"company_id": "payg-co"}, "quantity": 1}})))
        .await;
    let rows = b.settled().await;
    common::eventually(Duration::from_secs(10), || async {
        (b.billed("payg-co") == 106.0).then_some(())
    })
    .await;
    assert_eq!(b.billed("flat-co"), 0.0);
    assert_eq!(b.billed("unmetered-co"), 0.0);
    let mut values: Vec<i64> = rows.iter().map(|r| r["value"].as_i64().unwrap()).collect();
    values.sort();
    assert_eq!(values, vec![-2, 1, 3, 4, 100], "{rows:?}");
    let trusted = b
        .fake
        .meter_events()
        .into_iter()
        .find(|e| e.value == 1.0)
        .unwrap();
    assert_eq!(trusted.timestamp, at.timestamp());
    // The usage counted everything tracked, backfill included (3 + 4 - 2 + 100 + 100 + 1).
    let c = b
        .app
        .check("api-calls", json!({"company_id": "payg-co"}))
        .await;
    assert_eq!(c["entitlement"]["usage"], 206, "{c}");
    assert_eq!(c["value"], true, "pay as you go is not cut: {c}");
}

#[tokio::test]
async fn aggregation_sums_a_window_into_one_meter_event() {
    let b = Billing::start("stripe_meter_flush_secs = 2").await;
    b.plan("payg", Some("pay_as_you_go"), 0).await;
    b.customer("busy", "payg", true).await;
    b.reconcile().await;
    for _ in 0..10 {
        b.track("busy", &[1, 2]).await;
    }
    let rows = b.settled().await;
    common::eventually(Duration::from_secs(10), || async {
        (b.billed("busy") == 30.0).then_some(())
    })
    .await;
    // Ten batches in at most a couple of 2-second windows: far fewer meter events than events.
    assert!(rows.len() <= 3, "{rows:?}");
    assert_eq!(b.fake.meter_events().len(), rows.len());
    for r in &rows {
        assert!(
            r["window_start"].is_string() && r["window_end"].is_string(),
            "{r}"
        );
        assert!(r["identifier"].as_str().unwrap().contains(METER), "{r}");
    }
}

#[tokio::test]
async fn refusals_fail_with_stripes_message_old_units_expire_and_retry_resends() {
    let b = Billing::start("").await;
    b.plan("payg", Some("pay_as_you_go"), 0).await;
    b.customer("acme", "payg", true).await;
    b.reconcile().await;
    // Stripe's meter is deactivated behind our back: Stripe refuses the event.
    let mut inactive = meter(METER, "api_calls");
    inactive["status"] = json!("inactive");
    b.fake.put(inactive);
    b.track("acme", &[7]).await;
    let failed = common::eventually(Duration::from_secs(20), || async {
        let (_, body) = b.app.get("/stripe/meter-events?status=failed").await;
        body["data"].as_array().unwrap().first().cloned()
    })
    .await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("No active meter"),
        "{failed}"
    );
    assert_eq!(b.billed("acme"), 0.0);
    // Reactivated, the row is retried by hand and sent with its identifier.
    b.fake.put(meter(METER, "api_calls"));
    let id = failed["id"].as_str().unwrap();
    let (status, body) = b
        .app
        .post(&format!("/stripe/meter-events/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    common::eventually(Duration::from_secs(20), || async {
        (b.billed("acme") == 7.0).then_some(())
    })
    .await;
    // Units older than Stripe's 35 days are not sent.
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    b.app
        .create(
            "/events",
            json!({"event_type": "track", "trusted_client_clock": true, "sent_at": old.to_rfc3339(),
                   "body": {"event": "api_call", "company": {"company_id": "acme"}, "quantity": 9}}),
        )
        .await;
    let expired = common::eventually(Duration::from_secs(20), || async {
        let (_, body) = b.app.get("/stripe/meter-events?status=expired").await;
        body["data"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(expired["value"], 9);
    assert!(
        expired["error"].as_str().unwrap().contains("35-day"),
        "{expired}"
    );
    assert_eq!(b.billed("acme"), 7.0);
}

/// Stripe answers 500 for a minute, then 429 with `Retry-After`: everything is delivered
/// afterwards, and the fake never saw two requests for one customer and meter overlap nor
/// more requests in a second than the rate limit.
#[tokio::test]
async fn outage_then_rate_limit_delivers_everything_within_the_rules() {
    let b = Billing::start("stripe_max_requests_per_sec = 5").await;
    b.plan("payg", Some("pay_as_you_go"), 0).await;
    for k in 0..4 {
        b.customer(&format!("co-{k}"), "payg", true).await;
    }
    b.reconcile().await;
    b.fake.clear_requests();
    b.fake.set_latency(Duration::from_millis(50));
    // The minute of 500s: the sender backs off exponentially (1 s, 2 s, … with
    // jitter), so the last failed attempt comes shortly after the minute ends.
    let outage = Duration::from_secs(60);
    b.fake.fail_for(outage, fake_stripe::Failure::ServerError);
    for k in 0..4 {
        b.track(&format!("co-{k}"), &[1, 1, 1, 1, 1]).await;
    }
    tokio::time::sleep(outage).await;
    b.fake.fail_next(
        3,
        fake_stripe::Failure::RateLimited {
            retry_after_secs: 1,
        },
    );
    b.settled().await;
    for k in 0..4 {
        assert_eq!(b.billed(&format!("co-{k}")), 5.0, "co-{k}");
    }
    let posts: Vec<_> = b
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/billing/meter_events")
        .collect();
    assert!(posts.iter().any(|r| r.status == 500), "the outage was seen");
    assert!(
        posts.iter().any(|r| r.status == 429),
        "the rate limit was seen"
    );
    assert_eq!(
        b.fake.meter_overlaps(),
        0,
        "one request in flight per customer and meter"
    );
    let per_second =
        fake_stripe::max_in_any_window(posts.iter().map(|r| r.at), Duration::from_secs(1));
    assert!(per_second <= 5, "{per_second} requests in one second");
    assert_eq!(b.fake.meter_events().len(), 20);
}

/// The acceptance: through the official SDK's `track()`, a company on `overage` with
/// 100 included that tracks 150 is billed exactly 50; on `pay_as_you_go` every unit; on a
/// plan without a metered price, nothing.
#[tokio::test]
async fn sdk_track_bills_overage_payg_and_nothing_end_to_end() {
    let b = Billing::start("").await;
    b.plan("overage", Some("overage"), 100).await;
    b.plan("payg", Some("pay_as_you_go"), 0).await;
    b.plan("flat", None, 100).await;
    b.customer("overage-co", "overage", true).await;
    b.customer("payg-co", "payg", true).await;
    b.customer("flat-co", "flat", true).await;
    b.reconcile().await;
    common::python::run_script(&b.app, "tests/sdk/python_meters.py", &[]).await;
    b.settled().await;
    common::eventually(Duration::from_secs(10), || async {
        (b.billed("overage-co") == 50.0 && b.billed("payg-co") == 150.0).then_some(())
    })
    .await;
    assert_eq!(b.billed("flat-co"), 0.0);
    // Sent once each: no duplicates reached Stripe.
    assert_eq!(b.fake.meter_duplicates(), 0);
    let overage_rows: f64 = b
        .fake
        .meter_events()
        .iter()
        .filter(|e| e.customer == "cus_overage-co")
        .map(|e| e.value)
        .sum();
    assert_eq!(overage_rows, 50.0);
}
