//! The fake Stripe API's list semantics, through HTTP: paging in a stable newest-first order,
//! subscription status filters, embedded and paged subscription items, deleted customers,
//! event filters, parameter errors, failure injection, the request log, and generated data.

mod common;
mod fake_stripe;

use std::time::{Duration, Instant};

use common::stripe::{self as s, Item};
use fake_stripe::{Failure, FakeStripe, Populate};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn get(fake: &FakeStripe, path_and_query: &str) -> (StatusCode, HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path_and_query}", fake.base))
        .bearer_auth(&fake.api_key)
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("JSON body"))
}

async fn ok(fake: &FakeStripe, path_and_query: &str) -> Value {
    let (status, _, body) = get(fake, path_and_query).await;
    assert_eq!(status, StatusCode::OK, "{path_and_query}: {body}");
    body
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

/// Pages `path` (which has a `?`) with `starting_after` until `has_more` is false.
async fn page_all(fake: &FakeStripe, path: &str, limit: usize) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|a| format!("&starting_after={a}"))
            .unwrap_or_default();
        let page = ok(fake, &format!("{path}&limit={limit}{cursor}")).await;
        pages += 1;
        assert_eq!(page["object"], "list");
        let page_ids = ids(&page);
        assert!(page_ids.len() <= limit);
        all.extend(page_ids.iter().cloned());
        if page["has_more"] != true {
            return (all, pages);
        }
        after = page_ids.last().cloned();
        assert!(after.is_some(), "has_more with an empty page");
    }
}

fn customer_at(id: &str, created: i64) -> Value {
    let mut c = s::customer(id, &format!("Customer {id}"), json!({}));
    c["created"] = json!(created);
    c
}

#[tokio::test]
async fn paging_customers_yields_each_once_newest_first_with_ties_by_insertion() {
    let fake = FakeStripe::start(s::API_KEY).await;
    // 1,050 customers over 13 `created` seconds, not in created order: many ties.
    let base = 1_790_000_000;
    let mut expected: Vec<(i64, usize, String)> = Vec::new();
    for i in 0..1050 {
        let id = format!("cus_page{i:05}");
        let created = base + (i as i64 * 7) % 13;
        fake.put(customer_at(&id, created));
        expected.push((created, i, id));
    }
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let newest_count = expected.iter().filter(|e| e.0 == base + 12).count();
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();

    let (got, pages) = page_all(&fake, "/v1/customers?", 100).await;
    assert_eq!(pages, 11);
    assert_eq!(got.len(), 1050);
    assert_eq!(got, expected, "newest first, ties by insertion, each once");

    let first = ok(&fake, "/v1/customers").await;
    assert_eq!(first["url"], "/v1/customers");
    assert_eq!(first["has_more"], true);
    assert_eq!(ids(&first), expected[..10], "default limit 10");

    // ending_before pages back: the 100 objects just before the cursor, in list order.
    let back = ok(
        &fake,
        &format!("/v1/customers?limit=100&ending_before={}", expected[250]),
    )
    .await;
    assert_eq!(ids(&back), expected[150..250]);
    assert_eq!(back["has_more"], true);
    let back = ok(
        &fake,
        &format!("/v1/customers?limit=100&ending_before={}", expected[50]),
    )
    .await;
    assert_eq!(ids(&back), expected[..50]);
    assert_eq!(back["has_more"], false);

    // Replacing an object keeps its place.
    let i: i64 = expected[500]["cus_page".len()..].parse().unwrap();
    fake.put(customer_at(&expected[500], base + (i * 7) % 13));
    let (again, _) = page_all(&fake, "/v1/customers?", 100).await;
    assert_eq!(again, expected);

    // created filters narrow the same order.
    let newest = ok(
        &fake,
        &format!("/v1/customers?limit=100&created[gte]={}", base + 12),
    )
    .await;
    assert_eq!(ids(&newest), expected[..newest_count]);
    assert_eq!(newest["has_more"], false);
}

#[tokio::test]
async fn subscription_status_filters_and_customer_filter() {
    let fake = FakeStripe::start(s::API_KEY).await;
    let item = Item {
        id: "si_x",
        price: "price_x",
        product: "prod_x",
        quantity: 1,
    };
    let statuses = [
        "active",
        "trialing",
        "past_due",
        "canceled",
        "incomplete_expired",
        "unpaid",
        "paused",
        "incomplete",
    ];
    for (i, status) in statuses.iter().enumerate() {
        let mut sub = s::subscription(&format!("sub_{status}"), "cus_a", status, &[item]);
        sub["created"] = json!(1_790_000_000 + i as i64);
        fake.put(sub);
    }
    let mut other = s::subscription("sub_other", "cus_b", "active", &[item]);
    other["created"] = json!(1_790_000_100);
    fake.put(other);

    let default = ok(&fake, "/v1/subscriptions?limit=100").await;
    assert_eq!(
        ids(&default),
        [
            "sub_other",
            "sub_incomplete",
            "sub_paused",
            "sub_unpaid",
            "sub_past_due",
            "sub_trialing",
            "sub_active"
        ]
    );
    let all = ok(&fake, "/v1/subscriptions?limit=100&status=all").await;
    assert_eq!(ids(&all).len(), 9);
    let canceled = ok(&fake, "/v1/subscriptions?status=canceled").await;
    assert_eq!(ids(&canceled), ["sub_canceled"]);
    let ended = ok(&fake, "/v1/subscriptions?status=ended").await;
    assert_eq!(ids(&ended), ["sub_incomplete_expired", "sub_canceled"]);
    let trialing = ok(&fake, "/v1/subscriptions?status=trialing").await;
    assert_eq!(ids(&trialing), ["sub_trialing"]);

    let (status, _, body) = get(&fake, "/v1/subscriptions?status=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "status");

    let b = ok(&fake, "/v1/subscriptions?customer=cus_b&status=all").await;
    assert_eq!(ids(&b), ["sub_other"]);
    let a = ok(&fake, "/v1/subscriptions?customer=cus_a&status=all&limit=3").await;
    assert_eq!(ids(&a), ["sub_incomplete", "sub_paused", "sub_unpaid"]);
    assert_eq!(a["has_more"], true);
    let a2 = ok(
        &fake,
        "/v1/subscriptions?customer=cus_a&status=all&limit=3&starting_after=sub_unpaid",
    )
    .await;
    assert_eq!(
        ids(&a2),
        ["sub_incomplete_expired", "sub_canceled", "sub_past_due"]
    );
    let none = ok(&fake, "/v1/subscriptions?customer=cus_nobody").await;
    assert_eq!(ids(&none).len(), 0);
    assert_eq!(none["has_more"], false);
}

#[tokio::test]
async fn a_subscription_embeds_ten_items_and_subscription_items_pages_them_all() {
    let fake = FakeStripe::start(s::API_KEY).await;
    let names: Vec<String> = (0..25).map(|i| format!("si_many{i:02}")).collect();
    let items: Vec<Item> = names
        .iter()
        .map(|id| Item {
            id,
            price: "price_seat",
            product: "prod_seat",
            quantity: 1,
        })
        .collect();
    fake.put(s::subscription("sub_many", "cus_many", "active", &items));

    let sub = ok(&fake, "/v1/subscriptions/sub_many").await;
    let embedded = &sub["items"];
    assert_eq!(embedded["object"], "list");
    assert_eq!(embedded["data"].as_array().unwrap().len(), 10);
    assert_eq!(embedded["has_more"], true);
    assert_eq!(embedded["total_count"], 25);
    assert_eq!(
        embedded["url"],
        "/v1/subscription_items?subscription=sub_many"
    );
    assert_eq!(ids(embedded), names[..10]);
    let listed = ok(&fake, "/v1/subscriptions").await;
    assert_eq!(listed["data"][0]["items"], sub["items"]);

    let (all, pages) = page_all(&fake, "/v1/subscription_items?subscription=sub_many", 10).await;
    assert_eq!(all, names);
    assert_eq!(pages, 3);
    let first = ok(&fake, "/v1/subscription_items?subscription=sub_many").await;
    assert_eq!(first["url"], "/v1/subscription_items");
    assert_eq!(first["data"][0]["object"], "subscription_item");
    assert_eq!(first["data"][0]["price"]["product"], "prod_seat");
    let back = ok(
        &fake,
        "/v1/subscription_items?subscription=sub_many&limit=5&ending_before=si_many12",
    )
    .await;
    assert_eq!(ids(&back), names[7..12]);
    assert_eq!(back["has_more"], true);

    let (status, _, body) = get(&fake, "/v1/subscription_items").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "subscription");
    let (status, _, body) = get(
        &fake,
        "/v1/subscription_items?subscription=sub_many&starting_after=si_nope",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "starting_after");
    let (status, _, _) = get(&fake, "/v1/subscription_items?subscription=sub_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // get() hands back every item, and put() of it round-trips.
    let full = fake.get("subscriptions", "sub_many").unwrap();
    assert_eq!(full["items"]["data"].as_array().unwrap().len(), 25);
    fake.put(full);
    assert_eq!(ok(&fake, "/v1/subscriptions/sub_many").await, sub);
}

#[tokio::test]
async fn a_deleted_customer_leaves_the_list_and_retrieves_as_deleted() {
    let fake = FakeStripe::start(s::API_KEY).await;
    for (i, id) in ["cus_d1", "cus_d2", "cus_d3"].iter().enumerate() {
        fake.put(customer_at(id, 1_790_000_000 + i as i64));
    }
    let item = Item {
        id: "si_d2",
        price: "price_x",
        product: "prod_x",
        quantity: 1,
    };
    fake.put(s::subscription("sub_d2", "cus_d2", "active", &[item]));
    fake.delete_customer("cus_d2");

    let list = ok(&fake, "/v1/customers").await;
    assert_eq!(ids(&list), ["cus_d3", "cus_d1"]);
    let d2 = ok(&fake, "/v1/customers/cus_d2").await;
    assert_eq!(
        d2,
        json!({"id": "cus_d2", "object": "customer", "deleted": true})
    );
    // Still a valid cursor.
    let after = ok(&fake, "/v1/customers?starting_after=cus_d2").await;
    assert_eq!(ids(&after), ["cus_d1"]);
    // Its subscription was canceled with it.
    let sub = ok(&fake, "/v1/subscriptions/sub_d2").await;
    assert_eq!(sub["status"], "canceled");
    assert!(sub["ended_at"].is_i64());
    assert_eq!(ids(&ok(&fake, "/v1/subscriptions").await).len(), 0);

    // remove(): gone (404), out of lists.
    fake.remove("customers", "cus_d3");
    let (status, _, body) = get(&fake, "/v1/customers/cus_d3").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "No such customer: 'cus_d3'");
    assert_eq!(ids(&ok(&fake, "/v1/customers").await), ["cus_d1"]);
}

#[tokio::test]
async fn events_filter_by_created_and_types() {
    let fake = FakeStripe::start(s::API_KEY).await;
    let kinds = [
        "customer.created",
        "customer.subscription.created",
        "customer.subscription.updated",
        "product.updated",
    ];
    // 20 events over 10 seconds, two per second.
    for i in 0..20 {
        let kind = kinds[i % kinds.len()];
        let object = s::customer(&format!("cus_e{i}"), "E", json!({}));
        fake.push_event(s::event(
            kind,
            &format!("evt_{i:02}"),
            1_700_000_000 + (i as i64) / 2,
            object,
        ));
    }
    let all = ok(&fake, "/v1/events?limit=100").await;
    let expected: Vec<String> = (0..20).rev().map(|i| format!("evt_{i:02}")).collect();
    assert_eq!(ids(&all), expected);
    assert_eq!(all["url"], "/v1/events");

    let gte = ok(&fake, "/v1/events?limit=100&created%5Bgte%5D=1700000008").await;
    assert_eq!(ids(&gte), ["evt_19", "evt_18", "evt_17", "evt_16"]);
    let gt = ok(&fake, "/v1/events?limit=100&created%5Bgt%5D=1700000008").await;
    assert_eq!(ids(&gt), ["evt_19", "evt_18"]);
    let range = ok(
        &fake,
        "/v1/events?limit=100&created[gte]=1700000002&created[lt]=1700000004",
    )
    .await;
    assert_eq!(ids(&range), ["evt_07", "evt_06", "evt_05", "evt_04"]);
    let lte = ok(&fake, "/v1/events?limit=100&created[lte]=1700000000").await;
    assert_eq!(ids(&lte), ["evt_01", "evt_00"]);
    // A cursor inside a created window.
    let paged = ok(
        &fake,
        "/v1/events?limit=2&created[gte]=1700000002&created[lt]=1700000004&starting_after=evt_06",
    )
    .await;
    assert_eq!(ids(&paged), ["evt_05", "evt_04"]);
    assert_eq!(paged["has_more"], false);

    let types = ok(
        &fake,
        "/v1/events?limit=100&types%5B%5D=customer.created&types%5B%5D=product.updated",
    )
    .await;
    assert_eq!(
        ids(&types),
        [
            "evt_19", "evt_16", "evt_15", "evt_12", "evt_11", "evt_08", "evt_07", "evt_04",
            "evt_03", "evt_00"
        ]
    );
    let indexed = ok(
        &fake,
        "/v1/events?limit=100&types[0]=customer.created&types[1]=product.updated",
    )
    .await;
    assert_eq!(ids(&indexed), ids(&types));
    let one = ok(
        &fake,
        "/v1/events?limit=100&type=customer.subscription.updated",
    )
    .await;
    assert_eq!(
        ids(&one),
        ["evt_18", "evt_14", "evt_10", "evt_06", "evt_02"]
    );
    let wildcard = ok(&fake, "/v1/events?limit=100&type=customer.subscription.*").await;
    assert_eq!(ids(&wildcard).len(), 10);

    let event = ok(&fake, "/v1/events/evt_03").await;
    assert_eq!(event["type"], "product.updated");
    assert_eq!(event["data"]["object"]["id"], "cus_e3");
}

#[tokio::test]
async fn bad_parameters_answer_stripe_errors() {
    let fake = FakeStripe::start(s::API_KEY).await;
    fake.put(customer_at("cus_only", 1));
    for (query, param) in [
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("starting_after=cus_nope", "starting_after"),
        ("ending_before=cus_nope", "ending_before"),
        (
            "starting_after=cus_only&ending_before=cus_only",
            "ending_before",
        ),
        ("status=active", "status"),
        ("created[gte]=soon", "created[gte]"),
    ] {
        let (status, _, body) = get(&fake, &format!("/v1/customers?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{query}");
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let (_, _, body) = get(&fake, "/v1/customers?limit=101").await;
    assert_eq!(
        body["error"]["message"],
        "This value must be less than or equal to 100."
    );
    let (_, _, body) = get(&fake, "/v1/customers?starting_after=cus_nope").await;
    assert_eq!(body["error"]["message"], "No such customer: 'cus_nope'");
    assert_eq!(
        ok(&fake, "/v1/customers?limit=100").await["data"][0]["id"],
        "cus_only"
    );
    assert_eq!(ok(&fake, "/v1/customers?limit=1").await["has_more"], false);

    let (status, _, _) = get(&fake, "/v1/charges").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/customers", fake.base))
        .bearer_auth("sk_test_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn injected_failures_apply_to_lists_with_retry_headers_and_everything_is_logged() {
    let fake = FakeStripe::start(s::API_KEY).await;
    fake.put(customer_at("cus_f", 1));
    fake.fail_next(
        1,
        Failure::RateLimited {
            retry_after_secs: 2,
        },
    );
    fake.fail_next(1, Failure::ServerErrorNoRetry);
    let (status, headers, body) = get(&fake, "/v1/customers?limit=5").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["stripe-should-retry"], "true");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let (status, headers, _) = get(&fake, "/v1/events").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["stripe-should-retry"], "false");
    let (status, _, _) = get(&fake, "/v1/customers?limit=5").await;
    assert_eq!(status, StatusCode::OK);

    // Every third request is rate limited.
    fake.fail_every(
        3,
        Failure::RateLimited {
            retry_after_secs: 1,
        },
    );
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get(&fake, "/v1/customers/cus_f").await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429, 200]);
    fake.fail_every(0, Failure::ServerError);
    assert_eq!(get(&fake, "/v1/customers/cus_f").await.0, StatusCode::OK);

    let log = fake.requests();
    assert_eq!(log.len(), 11);
    assert_eq!(log[0].path, "/v1/customers");
    assert_eq!(log[0].query, "limit=5");
    assert_eq!(log[0].status, 429);
    assert_eq!(log[1].status, 500);
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(fake.requests_matching("/v1/customers/").len(), 8);
    assert_eq!(fake.requests_matching("/v1/events").len(), 1);
    let routes = fake.requests_per_route();
    assert_eq!(routes["/v1/customers"], 2);
    assert_eq!(routes["/v1/customers/{id}"], 8);
    assert_eq!(routes["/v1/events"], 1);
}

#[tokio::test]
async fn max_requests_in_any_window_counts_a_half_open_window() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    // Synthetic arrivals (ms): 0, 100, 999, 1000, 1001, 1500, 1999, 3000.
    let times: Vec<Instant> = [0, 100, 999, 1000, 1001, 1500, 1999, 3000]
        .iter()
        .map(|&m| t0 + ms(m))
        .collect();
    let max = fake_stripe::max_in_any_window;
    // [999, 1999) holds 999, 1000, 1001, 1500; [1000, 2000) holds 1000, 1001, 1500, 1999.
    assert_eq!(max(times.clone(), Duration::from_secs(1)), 4);
    // [0, 1000) holds 0, 100, 999: 1000 is outside the half-open window.
    assert_eq!(max(times[..4].to_vec(), Duration::from_secs(1)), 3);
    assert_eq!(max(times.clone(), ms(1)), 1);
    assert_eq!(max(times.clone(), ms(3001)), 8);
    assert_eq!(max(Vec::new(), Duration::from_secs(1)), 0);
    // Order does not matter.
    let mut reversed = times.clone();
    reversed.reverse();
    assert_eq!(max(reversed, Duration::from_secs(1)), 4);

    // The same over the live log: a burst of 5, a pause, a burst of 3.
    let fake = FakeStripe::start(s::API_KEY).await;
    for _ in 0..5 {
        get(&fake, "/v1/customers").await;
    }
    tokio::time::sleep(ms(400)).await;
    for _ in 0..3 {
        get(&fake, "/v1/customers").await;
    }
    assert_eq!(fake.max_requests_in_any_window(ms(300)), 5);
    assert_eq!(fake.max_requests_in_any_window(Duration::from_secs(10)), 8);
}

#[tokio::test]
async fn latency_delays_answers() {
    let fake = FakeStripe::start(s::API_KEY).await;
    fake.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(ok(&fake, "/v1/products").await["data"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn populated_objects_have_fixture_shapes_and_page_completely() {
    let fake = FakeStripe::start(s::API_KEY).await;
    let spec = Populate {
        customers: 2_500,
        products: 3,
        per_second: 1_000,
        ..Populate::default()
    };
    fake.populate(&spec);

    // Shapes: the fixtures' keys, the endive item periods, expanded prices.
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let customer = ok(&fake, "/v1/customers/cus_0000007").await;
    let fixture_customer = &s::fixture("customer.created")["data"]["object"];
    assert_eq!(keys(&customer), keys(fixture_customer));
    assert_eq!(customer["metadata"], json!({"company_id": "acme-000007"}));
    assert_eq!(customer["created"], spec.created(7));
    let sub = ok(&fake, "/v1/subscriptions/sub_0000007").await;
    let fixture_sub = &s::fixture("customer.subscription.updated")["data"]["object"];
    assert_eq!(keys(&sub), keys(fixture_sub));
    assert_eq!(sub["customer"], "cus_0000007");
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["items"]["total_count"], 1);
    assert_eq!(sub["items"]["has_more"], false);
    assert_eq!(
        sub["items"]["url"],
        "/v1/subscription_items?subscription=sub_0000007"
    );
    for key in ["created", "start_date", "billing_cycle_anchor"] {
        assert_eq!(sub[key], spec.created(7), "{key}");
    }
    assert_eq!(sub["latest_invoice"], "in_0000007");
    assert!(sub["trial_end"].is_null() && sub["canceled_at"].is_null());
    assert!(!sub.to_string().contains("@@hole"), "{sub}");
    assert!(!customer.to_string().contains("@@hole"), "{customer}");
    let item = &sub["items"]["data"][0];
    assert_eq!(keys(item), keys(&fixture_sub["items"]["data"][0]));
    assert_eq!(item["id"], "si_0000007");
    assert_eq!(item["subscription"], "sub_0000007");
    assert_eq!(item["price"]["id"], "price_0001");
    assert_eq!(item["price"]["product"], "prod_0001");
    assert_eq!(item["price"]["recurring"]["interval"], "month");
    assert_eq!(
        item["current_period_end"].as_i64().unwrap()
            - item["current_period_start"].as_i64().unwrap(),
        30 * 86_400
    );
    let products = ok(&fake, "/v1/products").await;
    assert_eq!(ids(&products), ["prod_0003", "prod_0002", "prod_0001"]);
    let prices = ok(&fake, "/v1/prices?product=prod_0002&active=true").await;
    assert_eq!(ids(&prices), ["price_0002"]);
    assert_eq!(
        ok(&fake, "/v1/products/prod_0002").await["default_price"],
        "price_0002"
    );

    // Every customer and subscription, newest first, exactly once.
    let (customers, _) = page_all(&fake, "/v1/customers?", 100).await;
    let expected: Vec<String> = (1..=2_500).rev().map(Populate::customer_id).collect();
    assert_eq!(customers, expected);
    let (subs, _) = page_all(&fake, "/v1/subscriptions?status=all", 100).await;
    let expected: Vec<String> = (1..=2_500).rev().map(Populate::subscription_id).collect();
    assert_eq!(subs, expected);

    // Filters on generated data.
    let by_customer = ok(&fake, "/v1/subscriptions?customer=cus_0001234").await;
    assert_eq!(ids(&by_customer), ["sub_0001234"]);
    let by_price = ok(&fake, "/v1/subscriptions?price=price_0003&limit=2").await;
    assert_eq!(ids(&by_price), ["sub_0002499", "sub_0002496"]);
    let by_email = ok(&fake, "/v1/customers?email=billing@acme-000042.test").await;
    assert_eq!(ids(&by_email), ["cus_0000042"]);
    let items = ok(&fake, "/v1/subscription_items?subscription=sub_0000042").await;
    assert_eq!(ids(&items), ["si_0000042"]);

    // Generated objects change like given ones.
    fake.delete_customer("cus_0000042");
    assert_eq!(
        ok(&fake, "/v1/customers/cus_0000042").await["deleted"],
        true
    );
    let sub = ok(&fake, "/v1/subscriptions/sub_0000042").await;
    assert_eq!(sub["status"], "canceled");
    assert_eq!(sub["items"]["data"][0]["id"], "si_0000042");
    let canceled = ok(&fake, "/v1/subscriptions?status=canceled").await;
    assert_eq!(ids(&canceled), ["sub_0000042"]);
    let (default, _) = page_all(&fake, "/v1/subscriptions?", 100).await;
    assert_eq!(default.len(), 2_499);
    let mut changed = fake.get("subscriptions", "sub_0000100").unwrap();
    changed["status"] = json!("past_due");
    fake.put(changed);
    let past_due = ok(&fake, "/v1/subscriptions?status=past_due").await;
    assert_eq!(ids(&past_due), ["sub_0000100"]);
    let (all, _) = page_all(&fake, "/v1/subscriptions?status=all", 100).await;
    assert_eq!(all, expected, "a replaced object keeps its place");
}
