//! A burst converges: 5,000 events over 500 customers (each customer's creation and nine
//! changes of its subscription), delivered by 32 concurrent senders in random order with
//! duplicates, leave exactly Stripe's final state. Half the customers are in an environment
//! that re-reads subscriptions from the fake Stripe (batched, within its rate limit); the
//! other half in one that applies the event payloads, where only the ordering rules (newest
//! per object, set-wise in batches) decide.

mod common;
mod fake_stripe;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::stripe::{self as s, Item, SECRET};

const CUSTOMERS: usize = 500;
/// Per customer: `customer.created`, then nine subscription events.
const STEPS: usize = 10;
const SENDERS: usize = 32;
const DUPLICATES: usize = 500;
const MAX_REQUESTS_PER_SEC: usize = 400;

/// Customers below this are in the refetching environment (`development`).
const REFETCHING: usize = CUSTOMERS / 2;

fn env_key(c: usize) -> &'static str {
    if c < REFETCHING {
        "development"
    } else {
        "payloads"
    }
}

/// Customer `c`'s subscription after step `k` (1..=9): its status and items.
fn subscription(c: usize, k: usize) -> (&'static str, Value) {
    let status = match k {
        1 | 2 => "trialing",
        9 if c.is_multiple_of(5) => "canceled",
        9 if c % 5 == 1 => "past_due",
        _ => "active",
    };
    let pro_item = format!("si_burst_{c}_pro");
    let seats_item = format!("si_burst_{c}_seats");
    let mut items = vec![Item {
        id: &pro_item,
        price: "price_burst_pro",
        product: "prod_burst_pro",
        quantity: k as i64,
    }];
    if (k + c).is_multiple_of(2) {
        items.push(Item {
            id: &seats_item,
            price: "price_burst_seats",
            product: "prod_burst_seats",
            quantity: 2 * k as i64,
        });
    }
    let sub = s::subscription(
        &format!("sub_burst_{c}"),
        &format!("cus_burst_{c}"),
        status,
        &items,
    );
    (status, sub)
}

/// Event `k` of customer `c`.
fn event(c: usize, k: usize, t0: i64) -> Value {
    let id = format!("evt_burst_{c}_{k}");
    let created = t0 + k as i64;
    if k == 0 {
        let customer = s::customer(&format!("cus_burst_{c}"), &format!("Burst {c}"), json!({}));
        return s::event("customer.created", &id, created, customer);
    }
    let (status, sub) = subscription(c, k);
    let kind = match (k, status) {
        (1, _) => "customer.subscription.created",
        (_, "canceled") => "customer.subscription.deleted",
        _ => "customer.subscription.updated",
    };
    s::event(kind, &id, created, sub)
}

/// What the memberships must be: customer → [(plan key, quantity)].
fn expected() -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out = BTreeMap::new();
    for c in 0..CUSTOMERS {
        let (status, sub) = subscription(c, STEPS - 1);
        let mut plans = Vec::new();
        if status != "canceled" {
            for item in sub["items"]["data"].as_array().unwrap() {
                let key = match item["price"]["product"].as_str().unwrap() {
                    "prod_burst_pro" => "burst-pro",
                    _ => "burst-seats",
                };
                plans.push((key.to_string(), item["quantity"].as_i64().unwrap()));
            }
        }
        plans.sort();
        out.insert(format!("cus_burst_{c}"), plans);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_from_32_senders_in_random_order_converge() {
    let fake = fake_stripe::FakeStripe::start(s::API_KEY).await;
    let config = format!(
        "{}\n[[environments]]\nkey = \"payloads\"\nname = \"Payloads\"\n\
         stripe_webhook_secrets = [\"{SECRET}\"]\nstripe_refetch_on_webhook = false\n\
         \n[stripe]\nbatch_size = 100\n",
        s::config(&format!(
            "stripe_api_key = \"{}\"\nstripe_api_base = \"{}\"\n\
             stripe_max_requests_per_sec = {MAX_REQUESTS_PER_SEC}",
            s::API_KEY,
            fake.base
        ))
    );
    let app = common::spawn_app_with(&config).await;
    sqlx::query(
        "INSERT INTO plans (id, key, name, plan_type, billing_product_id) VALUES
         ('plan_burst_pro', 'burst-pro', 'Pro', 'plan', 'prod_burst_pro'),
         ('plan_burst_seats', 'burst-seats', 'Seats', 'add_on', 'prod_burst_seats')",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    // Stripe's final state, for the refetching environment's re-reads.
    for c in 0..REFETCHING {
        fake.put(subscription(c, STEPS - 1).1);
    }
    let t0 = s::now() - 3600;
    let mut deliveries: Vec<(usize, Value)> = (0..CUSTOMERS)
        .flat_map(|c| (0..STEPS).map(move |k| (c, event(c, k, t0))))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let repeats: Vec<(usize, Value)> = deliveries
        .choose_multiple(&mut rng, DUPLICATES)
        .cloned()
        .collect();
    deliveries.extend(repeats);
    deliveries.shuffle(&mut rng);
    let queue = Arc::new(Mutex::new(deliveries));

    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (queue, client, base) = (queue.clone(), app.client.clone(), app.base.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some((c, event)) = next else { return };
                let body = serde_json::to_vec(&event).unwrap();
                let resp = client
                    .post(format!("{base}/webhooks/stripe/{}", env_key(c)))
                    .header("content-type", "application/json")
                    .header("Stripe-Signature", s::sign(&body, SECRET))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }

    common::eventually(Duration::from_secs(60), || async {
        let due = app
            .count("SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'failed')")
            .await;
        (due == 0).then_some(())
    })
    .await;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM stripe_events GROUP BY status ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let total: i64 = statuses.iter().map(|(_, n)| n).sum();
    assert_eq!(total, (CUSTOMERS * STEPS) as i64, "duplicates stored once");
    assert!(
        statuses
            .iter()
            .all(|(s, _)| s == "applied" || s == "skipped"),
        "{statuses:?}"
    );

    // Every customer's memberships, subscription and items are Stripe's final ones.
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT k.value, p.key, cp.quantity FROM company_plans cp
         JOIN plans p ON p.id = cp.plan_id
         JOIN company_keys k ON k.company_id = cp.company_id AND k.key = 'stripe_customer_id'
         WHERE cp.ended_at IS NULL ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut got: BTreeMap<String, Vec<(String, i64)>> = (0..CUSTOMERS)
        .map(|c| (format!("cus_burst_{c}"), Vec::new()))
        .collect();
    for (customer, plan, quantity) in rows {
        got.entry(customer).or_default().push((plan, quantity));
    }
    let want = expected();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| (k, v, got.get(k)))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "memberships differ: {wrong:?}");

    let subs: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT s.customer_id, s.status, count(i.id), coalesce(sum(i.quantity), 0)::bigint
         FROM stripe_subscriptions s
         LEFT JOIN stripe_subscription_items i
                ON i.environment_id = s.environment_id AND i.subscription_id = s.id
         GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(subs.len(), CUSTOMERS);
    for (customer, status, items, quantity) in subs {
        let c: usize = customer.trim_start_matches("cus_burst_").parse().unwrap();
        let (want_status, sub) = subscription(c, STEPS - 1);
        let want_items = sub["items"]["data"].as_array().unwrap();
        let want_quantity: i64 = want_items
            .iter()
            .map(|i| i["quantity"].as_i64().unwrap())
            .sum();
        assert_eq!(
            (status.as_str(), items, quantity),
            (want_status, want_items.len() as i64, want_quantity),
            "{customer}"
        );
    }
    // Applied set-wise: no batch fell back to one event per transaction.
    let metrics = &entitled::metrics::STRIPE_BATCHES;
    assert!(metrics.get("set_wise") > 0);
    assert_eq!(metrics.get("fallback"), 0);
    // One company per customer, and the re-reads stayed within the rate limit.
    assert_eq!(
        app.count("SELECT count(*) FROM companies").await,
        CUSTOMERS as i64
    );
    let refetches = fake.requests_matching("/v1/subscriptions/").len();
    assert!(refetches >= REFETCHING, "{refetches} refetches");
    let peak = fake.max_requests_in_any_window(Duration::from_secs(1));
    assert!(
        peak <= MAX_REQUESTS_PER_SEC + MAX_REQUESTS_PER_SEC / 10,
        "{peak} requests in one second"
    );
}
