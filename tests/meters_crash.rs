//! Exactly once, through crashes: 1,000 billable track events across 10 companies, the real
//! binary SIGKILLed twice while it sends their meter events to the fake Stripe; after the
//! last restart, Stripe's totals equal the billable usage exactly (resends are dropped by
//! their identifiers, nothing is lost).

mod common;
mod fake_stripe;

use std::time::Duration;

use common::process;
use common::stripe as s;
use fake_stripe::FakeStripe;
use serde_json::{json, Value};
use tokio::process::Command;

const COMPANIES: usize = 10;
const EVENTS: usize = 1_000;

fn entitled(db_url: &str, fake: &FakeStripe) -> Command {
    let mut cmd = process::entitled(db_url);
    cmd.env("ENTITLED_LOG__LEVEL", "error")
        .env("ENTITLED_ENVIRONMENTS__0__STRIPE_API_KEY", s::API_KEY)
        .env("ENTITLED_ENVIRONMENTS__0__STRIPE_API_BASE", &fake.base)
        .env(
            "ENTITLED_ENVIRONMENTS__0__STRIPE_MAX_REQUESTS_PER_SEC",
            "200",
        )
        // A crashed sender's leases run out after the timeout plus a few seconds.
        .env("ENTITLED_ENVIRONMENTS__0__STRIPE_TIMEOUT_SECS", "2")
        .env("ENTITLED_SCHEDULE__RECONCILE", "");
    cmd
}

struct Api {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("X-Schematic-Api-Key", &self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body["data"].clone()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("X-Schematic-Api-Key", &self.key)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["data"].clone()
    }
}

fn object(fixture: &str, id: &str) -> Value {
    let mut o = s::fixture(fixture)["data"]["object"].clone();
    o["id"] = json!(id);
    o
}

#[tokio::test]
async fn sigkill_twice_while_sending_bills_every_unit_exactly_once() {
    let fake = FakeStripe::start(s::API_KEY).await;
    fake.put(object("billing.meter.created", "mtr_crash"));
    fake.put(object("product.created", "prod_crash"));
    fake.put(object("product.created", "prod_usage"));
    let mut base_price = object("price.created", "price_crash");
    base_price["product"] = json!("prod_crash");
    fake.put(base_price);
    let mut metered = object("price.created.metered", "price_metered");
    metered["product"] = json!("prod_usage");
    metered["recurring"]["meter"] = json!("mtr_crash");
    fake.put(metered);
    for k in 0..COMPANIES {
        let customer = format!("cus_crash_{k}");
        fake.put(s::customer(
            &customer,
            &format!("Crash {k}"),
            json!({"company_id": format!("crash-{k}")}),
        ));
        let (base, usage) = (format!("si_{k}_base"), format!("si_{k}_usage"));
        fake.put(s::subscription(
            &format!("sub_crash_{k}"),
            &customer,
            "active",
            &[
                s::Item {
                    id: &base,
                    price: "price_crash",
                    product: "prod_crash",
                    quantity: 1,
                },
                s::Item {
                    id: &usage,
                    price: "price_metered",
                    product: "prod_usage",
                    quantity: 1,
                },
            ],
        ));
    }
    // Slow answers, so that kills land while requests are in flight.
    fake.set_latency(Duration::from_millis(15));

    let db = common::fresh_database().await;
    let mut migrate = entitled(&db.url, &fake);
    migrate.arg("migrate");
    process::run_ok(migrate).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // The environment rows come from the first start's sync: start once to create them.
    let mut server = process::serve(entitled(&db.url, &fake)).await;
    let key = common::create_api_key(&pool, "development").await;
    server.kill().await;
    let mut server = process::serve(entitled(&db.url, &fake)).await;
    let api = Api {
        base: server.base.clone(),
        key,
        client: reqwest::Client::new(),
    };
    let feature = api
        .post("/features", json!({"name": "Calls", "key": "calls", "feature_type": "event", "event_subtype": "call"}))
        .await;
    let plan = api
        .post("/plans", json!({"name": "Crash", "key": "crash", "plan_type": "plan", "billing_product_id": "prod_crash"}))
        .await;
    let run = api.post("/stripe/reconcile", json!({})).await;
    let run_id = run["id"].as_str().unwrap().to_string();
    common::eventually(Duration::from_secs(30), || async {
        let r = api.get(&format!("/stripe/reconcile-runs/{run_id}")).await;
        (r["status"] == "succeeded").then_some(())
    })
    .await;
    api.post(
        "/plan-entitlements",
        json!({"plan_id": plan["id"], "feature_id": feature["id"], "value_type": "numeric",
               "value_numeric": 0, "metric_period": "current_month",
               "price_behavior": "pay_as_you_go", "monthly_metered_price_id": "price_metered"}),
    )
    .await;

    // 1,000 events, quantities 1 to 3, round-robin over the companies, in batches of 100.
    let mut expected = vec![0i64; COMPANIES];
    for batch in 0..EVENTS / 100 {
        let events: Vec<Value> = (0..100)
            .map(|j| {
                let i = batch * 100 + j;
                let (k, q) = (i % COMPANIES, (i % 3) as i64 + 1);
                expected[k] += q;
                json!({"event_type": "track", "body": {"event": "call", "company": {"company_id": format!("crash-{k}")}, "quantity": q}})
            })
            .collect();
        api.post("/event-batch", json!({ "events": events })).await;
    }

    // Killed twice while sending.
    for kill_at in [150, 450] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while fake.meter_events().len() < kill_at {
            if std::time::Instant::now() > deadline {
                let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
                    "SELECT status, min(error), count(*) FROM meter_events GROUP BY status",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                panic!(
                    "{} accepted before the kill at {kill_at}; rows {rows:?}; requests {:?}",
                    fake.meter_events().len(),
                    fake.requests_per_route()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.kill().await;
        server = process::serve(entitled(&db.url, &fake)).await;
    }
    let totals = || {
        (0..COMPANIES)
            .map(|k| fake.meter_total(&format!("cus_crash_{k}"), "api_calls") as i64)
            .collect::<Vec<_>>()
    };
    // Everything sent (the crashed processes' leases run out first).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT status, min(error), count(*) FROM meter_events WHERE status <> 'sent'
             GROUP BY status",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all sent: {left:?}; accepted {}",
            fake.meter_events().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        totals(),
        expected,
        "Stripe's totals equal the billable usage"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM meter_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize, EVENTS,
        "one meter event per billable track event"
    );
    assert_eq!(fake.meter_events().len(), EVENTS, "each accepted once");
    assert_eq!(
        fake.meter_overlaps(),
        0,
        "never two in flight per customer and meter"
    );
    drop(server);
}
