//! Stripe webhooks through the HTTP stack against real Postgres: signatures, the inbox
//! (duplicates, unknown types, listing, retry), mapping customers, products, prices and
//! subscriptions, checks flipping within a second, and the refetch through a fake Stripe.

mod common;
mod fake_stripe;

use std::time::{Duration, Instant};

use common::stripe::{self as s, Item, SECRET};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn seeded(extra: &str) -> common::TestApp {
    let app = common::spawn_app_with(extra).await;
    app.seed_demo_until("sso").await;
    app
}

fn pro(quantity: i64) -> Item<'static> {
    Item {
        id: "si_pro",
        price: "price_demo_pro_monthly",
        product: "prod_demo_pro",
        quantity,
    }
}

#[tokio::test]
async fn bad_signatures_get_400_and_store_nothing() {
    let vector: Value =
        serde_json::from_str(include_str!("data/stripe_signature_vector.json")).unwrap();
    let vsecret = vector["secret"].as_str().unwrap();
    // Two secrets on the default environment (rotation), and an environment holding the
    // official library's vector secret with a tolerance wide enough for its fixed timestamp.
    let app = common::spawn_app_with(&format!(
        "[[environments]]\nkey = \"development\"\nname = \"Development\"\n\
         stripe_webhook_secrets = [\"whsec_old_one\", \"{SECRET}\"]\n\
         [[environments]]\nkey = \"vector\"\nname = \"Vector\"\n\
         stripe_webhook_secrets = [\"{vsecret}\"]\nstripe_webhook_tolerance_secs = 3000000000\n"
    ))
    .await;
    let event = s::event(
        "customer.created",
        "evt_sig_1",
        s::now(),
        s::customer("cus_sig", "Sig", json!({})),
    );
    let body = serde_json::to_vec(&event).unwrap();
    let now = s::now();
    let sign = |b: &[u8], secret: &str, t: i64| entitled::stripe::signature::sign(b, secret, t);
    let mut tampered = body.clone();
    let pos = tampered.iter().position(|b| *b == b'S').unwrap();
    tampered[pos] = b'T';
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("tampered body", tampered, Some(sign(&body, SECRET, now))),
        (
            "wrong secret",
            body.clone(),
            Some(sign(&body, "whsec_nope", now)),
        ),
        (
            "expired",
            body.clone(),
            Some(sign(&body, SECRET, now - 301)),
        ),
        ("future", body.clone(), Some(sign(&body, SECRET, now + 301))),
        ("missing header", body.clone(), None),
        ("garbled header", body.clone(), Some("t=soon,v1=xyz".into())),
        (
            "only v0",
            body.clone(),
            Some(sign(&body, SECRET, now).replace("v1=", "v0=")),
        ),
    ];
    for (name, b, header) in cases {
        let (status, json) = app.webhook_raw("/webhooks/stripe", b, header).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains("Stripe signature"),
            "{name}: {json}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM stripe_events").await, 0);
    let (_, metrics) = app.send(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("entitled_stripe_webhook_deliveries_total{outcome=\"invalid_signature\"} 7"),
        "{metrics}"
    );

    // The old secret still verifies during a rotation, by either route.
    let (status, json) = app
        .webhook_raw(
            "/webhooks/stripe/development",
            body.clone(),
            Some(sign(&body, "whsec_old_one", now)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // The stripe library's header for its payload verifies end to end.
    let (status, json) = app
        .webhook_raw(
            "/webhooks/stripe/vector",
            vector["payload"].as_str().unwrap().as_bytes().to_vec(),
            Some(vector["header"].as_str().unwrap().to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(app.count("SELECT count(*) FROM stripe_events").await, 2);
    // An unknown environment is a 404; a body over the limit a 413, nothing stored.
    let (status, _) = app
        .webhook_raw(
            "/webhooks/stripe/nope",
            body.clone(),
            Some(sign(&body, SECRET, now)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut big = event.clone();
    big["data"]["object"]["description"] = json!("x".repeat(1_100_000));
    let big = serde_json::to_vec(&big).unwrap();
    let (status, json) = app
        .webhook_raw(
            "/webhooks/stripe",
            big.clone(),
            Some(sign(&big, SECRET, now)),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    // Signed but not an event: 400 naming the field, nothing stored.
    let not_event = br#"{"id": "evt_x", "created": 1}"#.to_vec();
    let (status, json) = app
        .webhook_raw(
            "/webhooks/stripe",
            not_event.clone(),
            Some(sign(&not_event, SECRET, now)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("type"), "{json}");
    assert_eq!(app.count("SELECT count(*) FROM stripe_events").await, 2);
}

#[tokio::test]
async fn duplicates_are_acknowledged_once_and_unknown_types_ignored() {
    let app = common::spawn_app_with(&s::config("")).await;
    let event = s::fixture("customer.created");
    let (status, first) = app.webhook(&event).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["duplicate"], false);
    assert_eq!(
        app.processed(event["id"].as_str().unwrap()).await,
        "applied"
    );
    let (status, second) = app.webhook(&event).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["duplicate"], true);
    let (_, rows) = app.get("/stripe/events").await;
    let rows = rows["data"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["attempts"], 1, "applied once: {rows:?}");
    assert_eq!(rows[0]["object_id"], "cus_TqvAcme0001xQ");

    // An unhandled type is stored and marked ignored, never an error.
    let invoice = s::fixture("invoice.paid");
    let (status, _) = app.webhook(&invoice).await;
    assert_eq!(status, StatusCode::OK);
    let (_, ignored) = app.get("/stripe/events?status=ignored").await;
    assert_eq!(ignored["data"][0]["id"], invoice["id"]);
    assert_eq!(ignored["data"][0]["type"], "invoice.paid");
    assert!(ignored["data"][0]["applied_at"].is_string());
    assert_eq!(ignored["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn every_fixture_applies_and_lands_where_it_belongs() {
    let app = seeded(&s::config("stripe_refetch_on_webhook = false")).await;
    let names = [
        "product.created",
        "product.updated",
        "product.deleted",
        "price.created",
        "price.updated",
        "price.deleted",
        "customer.created",
        "customer.updated",
        "customer.subscription.created",
        "customer.subscription.trial_will_end",
        "customer.subscription.updated",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.deleted",
        "customer.deleted",
        "invoice.paid",
    ];
    for name in names {
        let expected = if name == "invoice.paid" {
            "ignored"
        } else {
            "applied"
        };
        assert_eq!(app.deliver(&s::fixture(name)).await, expected, "{name}");
    }
    let (name, active, deleted): (String, bool, bool) = sqlx::query_as(
        "SELECT name, active, deleted_at IS NOT NULL FROM billing_products WHERE id = 'prod_TqvPro0001xQ'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (name.as_str(), active, deleted),
        ("Pro (2026)", true, false)
    );
    assert_eq!(
        app.count("SELECT count(*) FROM billing_products WHERE deleted_at IS NOT NULL")
            .await,
        1
    );
    let (nickname, interval): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT nickname, recurring_interval FROM billing_prices WHERE id = 'price_1TqvProMonthly01xQ'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (nickname.as_deref(), interval.as_deref()),
        (Some("Pro monthly"), Some("month"))
    );
    // The customer became one company, named from Stripe, keyed by its id and metadata.
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_TqvAcme0001xQ")
        .await;
    assert_eq!(company["data"]["name"], "Acme Corporation");
    let keys: Vec<String> = company["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            format!(
                "{}={}",
                k["key"].as_str().unwrap(),
                k["value"].as_str().unwrap()
            )
        })
        .collect();
    assert!(keys.contains(&"company_id=acme".to_string()), "{keys:?}");
    assert_eq!(app.count("SELECT count(*) FROM companies").await, 1);
    let status: String = sqlx::query_scalar("SELECT status FROM stripe_subscriptions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "canceled");
    let (_, events) = app.get("/stripe/events?limit=1000").await;
    assert_eq!(events["data"].as_array().unwrap().len(), names.len());
}

#[tokio::test]
async fn a_subscription_flips_checks_within_a_second_and_back_to_the_fallback() {
    let fake = fake_stripe::FakeStripe::start(s::API_KEY).await;
    let app = seeded(&s::fake_config(&fake.base, "fallback_plan = \"free\"")).await;
    let customer = json!({"stripe_customer_id": "cus_flip"});
    let before = app.check("custom-branding", customer.clone()).await;
    assert_eq!(before["value"], false);

    // Stripe has the subscription; the event arrives; the check turns true within a second.
    let sub = s::subscription("sub_flip", "cus_flip", "active", &[pro(5)]);
    fake.put(sub.clone());
    let started = Instant::now();
    app.webhook_now("customer.subscription.created", "evt_flip_1", sub)
        .await;
    app.check_becomes("custom-branding", customer.clone(), true)
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // Pay in advance: the seat allocation is the subscribed quantity.
    let seats = app.check("seats", customer.clone()).await;
    assert_eq!(seats["feature_allocation"], 5, "{seats}");
    // The refetch went to the fake with the API key.
    let log = fake.requests();
    assert!(log.iter().any(|r| r.path == "/v1/subscriptions/sub_flip"
        && r.authorization.as_deref() == Some(&format!("Bearer {}", s::API_KEY))));

    // Canceled in Stripe (the refetch sees it): false again, the fallback plan answering.
    let canceled = s::subscription("sub_flip", "cus_flip", "canceled", &[pro(5)]);
    fake.put(canceled.clone());
    app.webhook_now("customer.subscription.deleted", "evt_flip_2", canceled)
        .await;
    app.check_becomes("custom-branding", customer.clone(), false)
        .await;
    let seats = app.check("seats", customer.clone()).await;
    assert_eq!(seats["feature_allocation"], 3, "Free's seats: {seats}");
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_flip")
        .await;
    assert!(company["data"]["plan"].is_null(), "{company}");
}

#[tokio::test]
async fn statuses_decide_access_and_items_map_to_base_plans_and_add_ons() {
    let app = seeded(&s::config("stripe_refetch_on_webhook = false")).await;
    let cus = json!({"stripe_customer_id": "cus_st"});
    let analytics = Item {
        id: "si_analytics",
        price: "price_demo_analytics",
        product: "prod_demo_analytics",
        quantity: 1,
    };
    let unlinked = Item {
        id: "si_unlinked",
        price: "price_other",
        product: "prod_without_plan",
        quantity: 2,
    };
    let mut t = 1_790_000_000;
    for (status, grants) in [
        ("trialing", true),
        ("active", true),
        ("past_due", true),
        ("unpaid", false),
        ("active", true),
        ("paused", false),
        ("incomplete", false),
        ("incomplete_expired", false),
    ] {
        t += 10;
        let sub = s::subscription("sub_st", "cus_st", status, &[pro(2), analytics, unlinked]);
        let e = s::event(
            "customer.subscription.updated",
            &format!("evt_st_{t}"),
            t,
            sub,
        );
        assert_eq!(app.deliver(&e).await, "applied", "{status}");
        app.check_becomes("custom-branding", cus.clone(), grants)
            .await;
        if grants {
            let (_, company) = app
                .get("/companies/lookup?keys[stripe_customer_id]=cus_st")
                .await;
            assert_eq!(company["data"]["plan"]["name"], "Pro");
            assert_eq!(company["data"]["plan"]["source"], "stripe");
            assert_eq!(company["data"]["add_ons"][0]["name"], "Analytics add-on");
            assert_eq!(company["data"]["add_ons"].as_array().unwrap().len(), 1);
        }
    }
    // The item whose product has no plan is recorded, granting nothing.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM stripe_subscription_items WHERE product_id = 'prod_without_plan'"
        )
        .await,
        1
    );
    // An item that disappears ends its membership.
    t += 10;
    let sub = s::subscription("sub_st", "cus_st", "active", &[pro(2)]);
    app.deliver(&s::event(
        "customer.subscription.updated",
        "evt_st_drop",
        t,
        sub,
    ))
    .await;
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_st")
        .await;
    assert_eq!(
        company["data"]["add_ons"].as_array().unwrap().len(),
        0,
        "{company}"
    );
    // The period and trial end are on the membership row, from the item.
    let (start, source): (chrono::DateTime<chrono::Utc>, String) = sqlx::query_as(
        "SELECT period_start, source FROM company_plans WHERE ended_at IS NULL AND is_base",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (start.timestamp(), source.as_str()),
        (s::PERIOD_START, "stripe")
    );
}

#[tokio::test]
async fn customer_metadata_links_the_app_company_and_deletion_keeps_it() {
    let app = seeded(&s::config("stripe_refetch_on_webhook = false")).await;
    let created = app
        .create(
            "/companies",
            json!({"keys": {"company_id": "acme"}, "name": "Acme (app)"}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();

    // Subscription first, customer second, both linking to the app's company: the
    // subscription's company is created from the customer id only when nothing links it.
    let customer = s::customer("cus_acme", "Acme Corp", json!({"company_id": "acme"}));
    assert_eq!(
        app.deliver(&s::event(
            "customer.created",
            "evt_c1",
            1_790_000_000,
            customer.clone()
        ))
        .await,
        "applied"
    );
    let sub = s::subscription("sub_acme", "cus_acme", "active", &[pro(1)]);
    assert_eq!(
        app.deliver(&s::event(
            "customer.subscription.created",
            "evt_c2",
            1_790_000_010,
            sub
        ))
        .await,
        "applied"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM companies").await,
        1,
        "linked, not duplicated"
    );
    // Checks by either key see the Stripe plan.
    for keys in [
        json!({"company_id": "acme"}),
        json!({"stripe_customer_id": "cus_acme"}),
    ] {
        app.check_becomes("custom-branding", keys, true).await;
    }
    let (_, company) = app.get(&format!("/companies/{id}")).await;
    assert_eq!(company["data"]["name"], "Acme Corp");

    // customer.deleted: the company and its stripe_customer_id key stay; memberships end.
    assert_eq!(
        app.deliver(&s::event(
            "customer.deleted",
            "evt_c3",
            1_790_000_020,
            customer
        ))
        .await,
        "applied"
    );
    let (status, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_acme")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(company["data"]["id"], id.as_str());
    assert!(company["data"]["plan"].is_null(), "{company}");
    app.check_becomes("custom-branding", json!({"company_id": "acme"}), false)
        .await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM company_plans WHERE ended_at IS NOT NULL AND source = 'stripe'"
        )
        .await,
        1
    );
    // A late, older subscription event does not bring access back: the customer is deleted.
    let sub = s::subscription("sub_acme", "cus_acme", "active", &[pro(1)]);
    app.deliver(&s::event(
        "customer.subscription.updated",
        "evt_c4",
        1_790_000_015,
        sub,
    ))
    .await;
    app.check_becomes("custom-branding", json!({"company_id": "acme"}), false)
        .await;

    // Metadata naming another existing company: failed, with an error saying why.
    app.create("/companies", json!({"keys": {"company_id": "globex"}}))
        .await;
    let wrong = s::customer("cus_acme", "Acme Corp", json!({"company_id": "globex"}));
    let status = app
        .deliver(&s::event(
            "customer.updated",
            "evt_c5",
            1_790_000_030,
            wrong,
        ))
        .await;
    assert_eq!(status, "failed");
    let (_, failed) = app.get("/stripe/events?status=failed").await;
    let error = failed["data"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("cus_acme") && error.contains("metadata"),
        "{error}"
    );
}

#[tokio::test]
async fn a_stripe_base_plan_replaces_a_manual_one() {
    let app = seeded(&s::config("stripe_refetch_on_webhook = false")).await;
    let enterprise = app.id_of("plans", "enterprise").await;
    app.create(
        "/companies",
        json!({"keys": {"stripe_customer_id": "cus_m"}, "base_plan_id": enterprise}),
    )
    .await;
    app.check_becomes("sso", json!({"stripe_customer_id": "cus_m"}), true)
        .await;
    let sub = s::subscription("sub_m", "cus_m", "active", &[pro(1)]);
    app.deliver(&s::event(
        "customer.subscription.created",
        "evt_m1",
        1_790_000_000,
        sub,
    ))
    .await;
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_m")
        .await;
    assert_eq!(company["data"]["plan"]["name"], "Pro");
    app.check_becomes("sso", json!({"stripe_customer_id": "cus_m"}), false)
        .await;

    // Two subscriptions of the same add-on plan: one membership, quantities added up.
    let analytics = |id: &'static str, q| Item {
        id,
        price: "price_demo_analytics",
        product: "prod_demo_analytics",
        quantity: q,
    };
    let a = s::subscription("sub_m_a", "cus_m", "active", &[analytics("si_a1", 2)]);
    let b = s::subscription("sub_m_b", "cus_m", "active", &[analytics("si_b1", 3)]);
    app.deliver(&s::event(
        "customer.subscription.created",
        "evt_m2",
        1_790_000_010,
        a,
    ))
    .await;
    app.deliver(&s::event(
        "customer.subscription.created",
        "evt_m3",
        1_790_000_020,
        b,
    ))
    .await;
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_m")
        .await;
    let add_ons = company["data"]["add_ons"].as_array().unwrap();
    assert_eq!(add_ons.len(), 1, "{company}");
    assert_eq!(add_ons[0]["quantity"], 5);
}

#[tokio::test]
async fn older_events_are_skipped_and_ties_apply() {
    let app = seeded(&s::config("stripe_refetch_on_webhook = false")).await;
    let cus = json!({"stripe_customer_id": "cus_o"});
    let active = s::subscription("sub_o", "cus_o", "active", &[pro(1)]);
    let canceled = s::subscription("sub_o", "cus_o", "canceled", &[pro(1)]);
    assert_eq!(
        app.deliver(&s::event(
            "customer.subscription.deleted",
            "evt_o2",
            200,
            canceled.clone()
        ))
        .await,
        "applied"
    );
    assert_eq!(
        app.deliver(&s::event(
            "customer.subscription.updated",
            "evt_o1",
            100,
            active.clone()
        ))
        .await,
        "skipped"
    );
    app.check_becomes("custom-branding", cus.clone(), false)
        .await;
    // Same second: applies (in arrival order).
    assert_eq!(
        app.deliver(&s::event(
            "customer.subscription.updated",
            "evt_o3",
            200,
            active
        ))
        .await,
        "applied"
    );
    app.check_becomes("custom-branding", cus, true).await;
    let (_, skipped) = app.get("/stripe/events?status=skipped").await;
    assert_eq!(skipped["data"][0]["id"], "evt_o1");
}

#[tokio::test]
async fn refetch_retries_429_and_500_and_treats_404_as_canceled() {
    let fake = fake_stripe::FakeStripe::start(s::API_KEY).await;
    let app = seeded(&s::fake_config(&fake.base, "")).await;
    let cus = json!({"stripe_customer_id": "cus_r"});
    // The event says trialing; Stripe says active now: what Stripe says wins.
    let in_event = s::subscription("sub_r", "cus_r", "incomplete", &[pro(1)]);
    fake.put(s::subscription("sub_r", "cus_r", "active", &[pro(1)]));
    fake.put(s::customer("cus_r", "Refetched", json!({})));
    fake.fail_next(
        1,
        fake_stripe::Failure::RateLimited {
            retry_after_secs: 1,
        },
    );
    fake.fail_next(1, fake_stripe::Failure::ServerError);
    let started = Instant::now();
    assert_eq!(
        app.deliver(&s::event(
            "customer.subscription.created",
            "evt_r1",
            s::now(),
            in_event.clone()
        ))
        .await,
        "applied"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let statuses: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/subscriptions/sub_r")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 500, 200]);
    app.check_becomes("custom-branding", cus.clone(), true)
        .await;
    // The customer was unknown: read from Stripe to name the company.
    let (_, company) = app
        .get("/companies/lookup?keys[stripe_customer_id]=cus_r")
        .await;
    assert_eq!(company["data"]["name"], "Refetched");

    // Stripe no longer has it: canceled.
    fake.remove("subscriptions", "sub_r");
    assert_eq!(
        app.deliver(&s::event(
            "customer.subscription.updated",
            "evt_r2",
            s::now() + 1,
            in_event
        ))
        .await,
        "applied"
    );
    app.check_becomes("custom-branding", cus, false).await;
}

#[tokio::test]
async fn failed_events_keep_their_error_and_the_retry_endpoint_reapplies() {
    let fake = fake_stripe::FakeStripe::start(s::API_KEY).await;
    let app = seeded(&s::fake_config(&fake.base, "")).await;
    let sub = s::subscription("sub_f", "cus_f", "active", &[pro(1)]);
    fake.put(s::customer("cus_f", "Failing", json!({})));
    // Stripe keeps failing: the event is failed, with the error, and a retry scheduled.
    fake.fail_next(8, fake_stripe::Failure::ServerError);
    let event = s::event(
        "customer.subscription.created",
        "evt_f1",
        s::now(),
        sub.clone(),
    );
    assert_eq!(app.deliver(&event).await, "failed");
    let (_, rows) = app
        .get("/stripe/events?status=failed&type=customer.subscription.created")
        .await;
    let row = &rows["data"][0];
    assert_eq!(row["id"], "evt_f1");
    assert_eq!(row["attempts"], 1);
    assert!(row["error"].as_str().unwrap().contains("500"), "{row}");
    assert!(row["applied_at"].is_null());

    // Readonly keys may list but not retry; unknown ids are 404.
    let (status, _) = app
        .send(Method::GET, "/stripe/events", None, Some(&app.readonly_key))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .send(
            Method::POST,
            "/stripe/events/evt_f1/retry",
            None,
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.post("/stripe/events/evt_nope/retry", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.send(Method::GET, "/stripe/events", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Stripe recovers; the retry applies now and returns the row.
    fake.put(sub);
    common::eventually(Duration::from_secs(10), || async {
        let (status, body) = app.post("/stripe/events/evt_f1/retry", json!({})).await;
        (status == StatusCode::OK && body["data"]["status"] == "applied").then_some(body)
    })
    .await;
    app.check_becomes(
        "custom-branding",
        json!({"stripe_customer_id": "cus_f"}),
        true,
    )
    .await;
    let (_, row) = app
        .get("/stripe/events?type=customer.subscription.created")
        .await;
    assert!(row["data"][0]["error"].is_null());
    assert!(row["data"][0]["attempts"].as_i64().unwrap() >= 2);

    // Filters are validated.
    let (status, body) = app.get("/stripe/events?status=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("status"), "{body}");
    let (status, _) = app.get("/stripe/events?limit=5000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, none) = app.get("/stripe/events?type=invoice.paid").await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);
}

/// A batch recomputes the memberships of all its companies from one read: each company gets
/// exactly its own grants, once, however often and in whatever order it is named.
#[tokio::test]
async fn memberships_of_several_companies_sync_from_one_read() {
    let app = seeded(&s::config("stripe_refetch_on_webhook = false")).await;
    let analytics = Item {
        id: "si_many_analytics",
        price: "price_demo_analytics",
        product: "prod_demo_analytics",
        quantity: 1,
    };
    let t = 1_790_000_000;
    let both = s::subscription("sub_many_a", "cus_many_a", "active", &[pro(1), analytics]);
    // Item ids are Stripe's, unique across subscriptions.
    let pro_b = Item {
        id: "si_many_pro_b",
        ..pro(3)
    };
    let one = s::subscription("sub_many_b", "cus_many_b", "active", &[pro_b]);
    for (i, sub) in [both, one].into_iter().enumerate() {
        let e = s::event(
            "customer.subscription.updated",
            &format!("evt_many_{i}"),
            t + i as i64,
            sub,
        );
        assert_eq!(app.deliver(&e).await, "applied");
    }
    let company = |cus: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT environment_id, company_id FROM company_keys
                 WHERE key = 'stripe_customer_id' AND value = $1",
            )
            .bind(cus)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (env, a) = company("cus_many_a").await;
    let (_, b) = company("cus_many_b").await;
    let mut conn = app.pool.acquire().await.unwrap();
    let named = [b.clone(), a.clone(), b.clone(), a.clone()];
    let synced = entitled::store::stripe::sync_memberships_many(&mut conn, &env, &named)
        .await
        .unwrap();
    let mut expected = [a.clone(), b.clone()];
    expected.sort();
    assert_eq!(
        synced.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
        expected
    );
    for (c, sync) in &synced {
        assert!(!sync.changed, "{c}: nothing to change: {sync:?}");
        let alone = entitled::store::stripe::sync_memberships(&mut conn, &env, c)
            .await
            .unwrap();
        assert_eq!(sync.after, alone.after, "{c}");
        let plans = if *c == a { 2 } else { 1 };
        assert_eq!(sync.after.len(), plans, "{c}: {:?}", sync.after);
    }
    // A membership lost behind Stripe's back comes back for its company alone.
    sqlx::query("UPDATE company_plans SET ended_at = now() WHERE company_id = $1 AND NOT is_base")
        .bind(&a)
        .execute(&mut *conn)
        .await
        .unwrap();
    let synced = entitled::store::stripe::sync_memberships_many(&mut conn, &env, &named)
        .await
        .unwrap();
    let changed: Vec<(&str, bool)> = synced
        .iter()
        .map(|(c, s)| (c.as_str(), s.changed))
        .collect();
    assert!(changed.contains(&(a.as_str(), true)), "{changed:?}");
    assert!(changed.contains(&(b.as_str(), false)), "{changed:?}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM company_plans WHERE company_id = '{a}' AND ended_at IS NULL"
        ))
        .await,
        2
    );
}
