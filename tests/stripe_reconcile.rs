//! Reconciliation against the fake Stripe API, through the real server (`POST
//! /stripe/reconcile`, `GET /stripe/reconcile-runs`) and the real binary (`entitled
//! reconcile`): what Stripe holds is what entitled ends up with, a second run changes
//! nothing, deletions and cancellations are reflected, 429s are survived, the request rate
//! stays under the limit, and a webhook that never arrived is caught up from `/v1/events`.

mod common;
mod fake_stripe;

use std::path::Path;
use std::time::{Duration, Instant};

use common::stripe::{self as s, Item};
use fake_stripe::{Failure, FakeStripe};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PRO: Item<'static> = Item {
    id: "",
    price: "price_demo_pro_monthly",
    product: "prod_demo_pro",
    quantity: 1,
};

async fn seeded(extra: &str) -> common::TestApp {
    let app = common::spawn_app_with(extra).await;
    app.seed_demo_until("sso").await;
    app
}

fn config(fake: &FakeStripe, extra: &str) -> String {
    s::fake_config(&fake.base, extra)
}

/// Customer 2's subscription to Pro (see [`populate`]), canceled.
fn canceled_sub_00002() -> Value {
    s::subscription(
        "sub_00002",
        "cus_00002",
        "canceled",
        &[Item {
            id: "si_00002",
            ..PRO
        }],
    )
}

fn product(id: &str, name: &str) -> Value {
    let mut p = s::fixture("product.created")["data"]["object"].clone();
    p["id"] = json!(id);
    p["name"] = json!(name);
    p
}

fn price(id: &str, product: &str) -> Value {
    let mut p = s::fixture("price.created")["data"]["object"].clone();
    p["id"] = json!(id);
    p["product"] = json!(product);
    p
}

/// The demo catalog's products in Stripe, and `n` customers, each with one subscription to
/// Pro: every seventh trialing, every eleventh canceled, the rest active.
fn populate(fake: &FakeStripe, n: usize) {
    fake.put(product("prod_demo_pro", "Pro"));
    fake.put(product("prod_demo_analytics", "Analytics"));
    fake.put(price("price_demo_pro_monthly", "prod_demo_pro"));
    fake.put(price("price_demo_analytics", "prod_demo_analytics"));
    for i in 0..n {
        let cus = format!("cus_{i:05}");
        fake.put(s::customer(&cus, &format!("Customer {i}"), json!({})));
        let status = if i % 11 == 0 {
            "canceled"
        } else if i % 7 == 0 {
            "trialing"
        } else {
            "active"
        };
        let item = format!("si_{i:05}");
        fake.put(s::subscription(
            &format!("sub_{i:05}"),
            &cus,
            status,
            &[Item { id: &item, ..PRO }],
        ));
    }
}

fn granting(n: usize) -> usize {
    (0..n).filter(|i| i % 11 != 0).count()
}

/// Starts a run through the API and waits for it to finish; returns its record.
async fn reconcile(app: &common::TestApp) -> Value {
    let (status, body) = app.post("/stripe/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["status"], "running");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    finished(app, &id).await
}

async fn finished(app: &common::TestApp, id: &str) -> Value {
    common::eventually(Duration::from_secs(60), || async {
        let (status, body) = app.get(&format!("/stripe/reconcile-runs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["data"]["status"] != "running").then(|| body["data"].clone())
    })
    .await
}

fn counts(run: &Value, object: &str) -> [u64; 4] {
    let c = &run["counts"][object];
    ["seen", "created", "updated", "deleted"].map(|k| c[k].as_u64().unwrap_or(u64::MAX))
}

/// Every Stripe membership row, for comparing two states.
async fn membership_rows(app: &common::TestApp) -> Vec<(String, String, bool, i64, String)> {
    sqlx::query_as(
        "SELECT id, plan_id, ended_at IS NULL, quantity, updated_at::text FROM company_plans
         WHERE source = 'stripe' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_full_reconcile_mirrors_stripe_and_a_second_run_changes_nothing() {
    let fake = FakeStripe::start(s::API_KEY).await;
    const N: usize = 1_000;
    populate(&fake, N);
    // Webhooks never arrived: entitled knows nothing yet.
    let app = seeded(&config(&fake, "stripe_max_requests_per_sec = 10")).await;

    let started = Instant::now();
    let run = reconcile(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["environment"], "development");
    assert_eq!(run["errors"], json!([]));
    assert_eq!(counts(&run, "customers"), [N as u64, N as u64, 0, 0]);
    assert_eq!(counts(&run, "subscriptions"), [N as u64, N as u64, 0, 0]);
    assert_eq!(counts(&run, "products"), [2, 2, 0, 0]);
    assert_eq!(counts(&run, "prices"), [2, 2, 0, 0]);

    // Exactly the companies and memberships Stripe holds.
    assert_eq!(
        app.count("SELECT count(*) FROM company_keys WHERE key = 'stripe_customer_id'")
            .await,
        N as i64
    );
    assert_eq!(app.count("SELECT count(*) FROM companies").await, N as i64);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM company_plans WHERE source = 'stripe' AND ended_at IS NULL"
        )
        .await,
        granting(N) as i64
    );
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_00001")
        .await;
    assert_eq!(company["data"]["name"], "Customer 1");
    app.check_becomes(
        "custom-branding",
        json!({"stripe_customer_id": "cus_00001"}),
        true,
    )
    .await;
    app.check_becomes(
        "custom-branding",
        json!({"stripe_customer_id": "cus_00011"}),
        false,
    )
    .await;

    // The rate limit held: never more than 10 requests in any second (23 pages: > 2 s).
    let requests = fake.requests();
    assert!(requests.len() >= 23, "{}", requests.len());
    assert!(
        fake.max_requests_in_any_window(Duration::from_secs(1)) <= 10,
        "{} requests in one second",
        fake.max_requests_in_any_window(Duration::from_secs(1))
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(requests
        .iter()
        .filter(|r| r.path.starts_with("/v1/"))
        .all(|r| r.query.contains("limit=100")));
    assert!(requests
        .iter()
        .any(|r| r.path == "/v1/subscriptions" && r.query.contains("status=all")));
    assert_eq!(run["requests"].as_u64().unwrap() as usize, requests.len());

    // Second run: nothing to do.
    let before = membership_rows(&app).await;
    let again = reconcile(&app).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    for object in ["customers", "subscriptions", "products", "prices"] {
        let [seen, created, updated, deleted] = counts(&again, object);
        assert!(seen > 0, "{object}");
        assert_eq!((created, updated, deleted), (0, 0, 0), "{object}: {again}");
    }
    assert_eq!(membership_rows(&app).await, before);

    // Runs are listed newest first, and filter by status.
    let (_, list) = app.get("/stripe/reconcile-runs").await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [again["id"].as_str().unwrap(), run["id"].as_str().unwrap()]
    );
    let (_, failed) = app.get("/stripe/reconcile-runs?status=failed").await;
    assert_eq!(failed["data"], json!([]));
}

#[tokio::test]
async fn deletions_and_cancellations_in_stripe_are_reflected() {
    let fake = FakeStripe::start(s::API_KEY).await;
    populate(&fake, 30);
    let app = seeded(&config(&fake, "")).await;
    assert_eq!(reconcile(&app).await["status"], "succeeded");
    let cus = |i: usize| json!({"stripe_customer_id": format!("cus_{i:05}")});
    for i in [1, 2, 3] {
        app.check_becomes("custom-branding", cus(i), true).await;
    }

    // Between runs, in Stripe: a customer deleted, a subscription canceled, another gone
    // entirely, a product deleted; a new customer with a subscription. No webhook arrives.
    fake.delete_customer("cus_00001");
    fake.put(canceled_sub_00002());
    fake.remove("subscriptions", "sub_00003");
    fake.remove("products", "prod_demo_analytics");
    fake.put(s::customer("cus_new", "Newcomer", json!({})));
    fake.put(s::subscription(
        "sub_new",
        "cus_new",
        "active",
        &[Item {
            id: "si_new",
            ..PRO
        }],
    ));

    let run = reconcile(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(counts(&run, "customers"), [30, 1, 0, 1]);
    // sub_00002 canceled and sub_00001 canceled with its deleted customer (as Stripe does):
    // updated; sub_00003 gone: deleted; sub_new created.
    assert_eq!(counts(&run, "subscriptions"), [30, 1, 2, 1]);
    assert_eq!(counts(&run, "products")[3], 1);

    for i in [1, 2, 3] {
        app.check_becomes("custom-branding", cus(i), false).await;
    }
    app.check_becomes(
        "custom-branding",
        json!({"stripe_customer_id": "cus_new"}),
        true,
    )
    .await;
    // The deleted customer's company stays, with its key.
    let (status, _) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_00001")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.count("SELECT count(*) FROM stripe_customers WHERE id = 'cus_00001' AND deleted_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM billing_products WHERE id = 'prod_demo_analytics' AND deleted_at IS NOT NULL"
        )
        .await,
        1
    );
    // A late webhook older than the run cannot bring the deleted customer back.
    let old = s::event(
        "customer.updated",
        "evt_late",
        s::now() - 3600,
        s::customer("cus_00001", "Back from the dead", json!({})),
    );
    assert_eq!(app.deliver(&old).await, "skipped");
}

#[tokio::test]
async fn rate_limited_answers_are_survived_and_pause_the_client() {
    let fake = FakeStripe::start(s::API_KEY).await;
    populate(&fake, 150);
    let app = seeded(&config(&fake, "")).await;
    // The first two requests are refused with Retry-After: 1, then a 500.
    fake.fail_next(
        2,
        Failure::RateLimited {
            retry_after_secs: 1,
        },
    );
    fake.fail_next(1, Failure::ServerError);
    let run = reconcile(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(counts(&run, "customers")[0], 150);
    assert_eq!(counts(&run, "subscriptions")[0], 150);
    let log = fake.requests();
    let statuses: Vec<u16> = log.iter().take(4).map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 500, 200]);
    // Retry-After paused the whole client: a second between each 429 and the next request.
    assert!(log[1].at.duration_since(log[0].at) >= Duration::from_millis(990));
    assert!(log[2].at.duration_since(log[1].at) >= Duration::from_millis(990));
    assert_eq!(
        app.count("SELECT count(*) FROM company_keys WHERE key = 'stripe_customer_id'")
            .await,
        150
    );
}

#[tokio::test]
async fn a_webhook_missed_entirely_is_caught_up_from_events() {
    let fake = FakeStripe::start(s::API_KEY).await;
    populate(&fake, 3);
    let app = seeded(&config(&fake, "")).await;
    // An event Stripe sent while the endpoint was down, never delivered; also one of a type
    // entitled does not act on, which the type filter keeps out.
    let sub = s::subscription(
        "sub_00001",
        "cus_00001",
        "active",
        &[Item {
            id: "si_00001",
            ..PRO
        }],
    );
    fake.push_event(s::event(
        "customer.subscription.updated",
        "evt_missed",
        s::now() - 60,
        sub,
    ));
    fake.push_event(s::event(
        "invoice.paid",
        "evt_invoice",
        s::now() - 30,
        json!({"id": "in_1", "object": "invoice"}),
    ));
    let run = reconcile(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["events_caught_up"], 1);
    let status = app
        .event_status("evt_missed")
        .await
        .expect("stored in the inbox");
    // The listing already brought the subscription's newer state: the event is older.
    assert!(status == "applied" || status == "skipped", "{status}");
    assert_eq!(app.event_status("evt_invoice").await, None);
    let events_request = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/events")
        .unwrap();
    assert!(
        events_request.query.contains("created%5Bgte%5D")
            || events_request.query.contains("created[gte]")
    );

    // The cursor moved on: the second run stores nothing new.
    let again = reconcile(&app).await;
    assert_eq!(again["events_caught_up"], 0, "{again}");
    // An event newer than what the listing saw (Stripe's clock ahead of ours) applies.
    let canceled = canceled_sub_00002();
    fake.put(canceled.clone());
    fake.push_event(s::event(
        "customer.subscription.deleted",
        "evt_future",
        s::now() + 120,
        canceled,
    ));
    let third = reconcile(&app).await;
    assert_eq!(third["status"], "succeeded", "{third}");
    assert_eq!(third["events_caught_up"], 1, "{third}");
    assert_eq!(
        app.event_status("evt_future").await.as_deref(),
        Some("applied")
    );
    app.check_becomes(
        "custom-branding",
        json!({"stripe_customer_id": "cus_00002"}),
        false,
    )
    .await;
}

#[tokio::test]
async fn the_api_refuses_what_it_cannot_do() {
    // No Stripe key: 422 naming the cause.
    let app = common::spawn_app().await;
    let (status, body) = app.post("/stripe/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stripe_api_key"));
    drop(app);

    let fake = FakeStripe::start(s::API_KEY).await;
    populate(&fake, 250);
    // One request a second: the run takes several seconds.
    let app = seeded(&config(&fake, "stripe_max_requests_per_sec = 1")).await;
    let (status, _) = app
        .send(
            Method::POST,
            "/stripe/reconcile",
            Some(&json!({})),
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, first) = app.post("/stripe/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = app.post("/stripe/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains(first["data"]["id"].as_str().unwrap()));
    // Progress is visible while it runs.
    let (_, running) = app.get("/stripe/reconcile-runs?status=running").await;
    assert_eq!(running["data"][0]["id"], first["data"]["id"]);
    let (status, _) = app.get("/stripe/reconcile-runs/rcn_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get("/stripe/reconcile-runs?status=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("status"));
    let (_, done) = app
        .get(&format!(
            "/stripe/reconcile-runs/{}",
            first["data"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(done["data"]["status"], "running");

    // Shutdown stops a run at a safe point and records why: a second replica starts one
    // once the first is done, then stops.
    let id = first["data"]["id"].as_str().unwrap().to_string();
    finished(&app, &id).await;
    let b = common::spawn_on(
        &app.db_url,
        &config(&fake, "stripe_max_requests_per_sec = 1"),
    )
    .await;
    let before = fake.request_count();
    let (status, second) = b.post("/stripe/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    // Stop once the run is under way (it has asked Stripe for something).
    common::eventually(Duration::from_secs(10), || async {
        (fake.request_count() > before).then_some(())
    })
    .await;
    b.stop().await;
    let (status, errors): (String, sqlx::types::Json<Value>) =
        sqlx::query_as("SELECT status, errors FROM stripe_reconcile_runs WHERE id = $1")
            .bind(second["data"]["id"].as_str().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(
        errors.0.to_string().contains("shutting down"),
        "{}",
        errors.0
    );
}

/// `entitled --config <file> <args>` on `db_url`.
async fn cli(file: &Path, db_url: &str, args: &[&str]) -> common::process::Output {
    let mut cmd = common::process::entitled(db_url);
    cmd.arg("--config").arg(file).args(args);
    common::process::run(cmd).await
}

#[tokio::test]
async fn the_cli_reconciles_with_a_summary_and_fails_clearly() {
    let fake = FakeStripe::start(s::API_KEY).await;
    populate(&fake, 40);
    let db = common::fresh_database().await;
    let dir = std::env::temp_dir().join(format!("entitled-cli-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("entitled.toml");
    std::fs::write(&file, config(&fake, "")).unwrap();
    let common::process::Output {
        status,
        stdout,
        stderr,
    } = cli(
        &file,
        &db.url,
        &["reconcile", "--environment", "development"],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    let customers = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("customers"))
        .unwrap();
    let fields: Vec<&str> = customers.split_whitespace().collect();
    assert_eq!(fields, ["customers", "40", "40", "0", "0"], "{stdout}");
    assert!(stderr.contains("customers"), "progress on stderr: {stderr}");

    let out = cli(&file, &db.url, &["reconcile", "--environment", "nope"]).await;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("\"nope\" is not configured"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn items_past_the_embedded_ten_are_fetched() {
    let fake = FakeStripe::start(s::API_KEY).await;
    populate(&fake, 1);
    // 25 items of Pro, 2 seats each: Stripe embeds ten and says has_more.
    let ids: Vec<String> = (0..25).map(|i| format!("si_many_{i:02}")).collect();
    let items: Vec<Item> = ids
        .iter()
        .map(|id| Item {
            id,
            quantity: 2,
            ..PRO
        })
        .collect();
    fake.put(s::customer("cus_many", "Many Items", json!({})));
    fake.put(s::subscription("sub_many", "cus_many", "active", &items));
    let app = seeded(&config(&fake, "")).await;
    let run = reconcile(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        app.count(
            "SELECT count(*) FROM stripe_subscription_items WHERE subscription_id = 'sub_many'"
        )
        .await,
        25
    );
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path == "/v1/subscription_items" && r.query.contains("subscription=sub_many")));
    let quantity: i64 = sqlx::query_scalar(
        "SELECT cp.quantity FROM company_plans cp
         JOIN company_keys k ON k.company_id = cp.company_id
         WHERE k.key = 'stripe_customer_id' AND k.value = 'cus_many' AND cp.ended_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(quantity, 50, "items of one plan add up");
}
