//! Messages written to the outbound webhook outbox by writers other than the REST handlers:
//! `entitlement.limit.warning` and `entitlement.limit.reached` with the track events that
//! cross 80% of the allocation and the allocation (once per company, feature and metric
//! window, whatever the batch sizes), and `company.plan_changed` / `subscription.trial.ended`
//! from Stripe webhooks.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

async fn seeded() -> common::TestApp {
    // Deliveries go nowhere useful here (a closed port): this test reads the outbox.
    let app = common::spawn_app_with(
        "[webhooks]\nallow_private_targets = true\nretry_schedule_secs = [600]\n",
    )
    .await;
    app.seed_demo_until("reports").await;
    app
}

async fn on_free_plan(app: &common::TestApp, company: &str) {
    let plan = app.id_of("plans", "free").await;
    app.create(
        "/companies",
        json!({"keys": {"id": company}, "base_plan_id": plan}),
    )
    .await;
}

async fn track(app: &common::TestApp, company: &str, quantity: i64) {
    app.create(
        "/events",
        json!({"event_type": "track", "body": {"event": "report_generated", "company": {"id": company}, "quantity": quantity}}),
    )
    .await;
}

/// `(type, company_id, usage)` of the webhook's messages, oldest first.
async fn messages(app: &common::TestApp, webhook: &str) -> Vec<(String, String, i64)> {
    let (_, list) = app
        .get(&format!("/webhook-events?webhook_id={webhook}"))
        .await;
    let mut out: Vec<(String, String, i64)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
            assert_eq!(body["type"], m["request_type"]);
            assert_eq!(body["data"]["allocation"], 5, "{body}");
            assert_eq!(body["data"]["feature_key"], "reports", "{body}");
            (
                m["request_type"].as_str().unwrap().to_string(),
                body["data"]["company_id"].as_str().unwrap().to_string(),
                body["data"]["usage"].as_i64().unwrap(),
            )
        })
        .collect();
    out.reverse();
    out
}

#[tokio::test]
async fn limit_messages_fire_once_per_crossing() {
    let app = seeded().await;
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "limits", "url": "http://127.0.0.1:9/limits",
                   "request_types": ["entitlement.limit.warning", "entitlement.limit.reached"]}),
        )
        .await;
    let hook = hook["id"].as_str().unwrap().to_string();
    on_free_plan(&app, "steady").await; // reports: 5 a month
    let steady: String = app.get("/companies/lookup?keys[id]=steady").await.1["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    track(&app, "steady", 3).await; // 3 of 5: below 80%
    assert_eq!(messages(&app, &hook).await, vec![]);
    track(&app, "steady", 1).await; // 4 of 5: the warning
    track(&app, "steady", 1).await; // 5 of 5: reached
    track(&app, "steady", 2).await; // past it: nothing new
    assert_eq!(
        messages(&app, &hook).await,
        vec![
            ("entitlement.limit.warning".into(), steady.clone(), 4),
            ("entitlement.limit.reached".into(), steady.clone(), 5),
        ]
    );

    // One batch that jumps over both thresholds sends both, once.
    on_free_plan(&app, "burst").await;
    let burst: String = app.get("/companies/lookup?keys[id]=burst").await.1["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = json!({"event_type": "track", "body": {"event": "report_generated", "company": {"id": "burst"}, "quantity": 4}});
    let (s, body) = app
        .post("/event-batch", json!({"events": [ev.clone(), ev]}))
        .await;
    assert!(s.is_success(), "{body}");
    track(&app, "burst", 1).await;
    let all = messages(&app, &hook).await;
    let burst_messages: Vec<_> = all.iter().filter(|m| m.1 == burst).collect();
    assert_eq!(burst_messages.len(), 2, "{all:?}");
    assert!(burst_messages.iter().all(|m| m.2 == 8), "{all:?}");

    // A webhook that names other features in its trigger configs gets none of these.
    let other_feature = app.id_of("features", "sso").await;
    let narrow = app
        .create(
            "/webhooks",
            json!({"name": "narrow", "url": "http://127.0.0.1:9/narrow",
                   "request_types": ["entitlement.limit.reached"],
                   "entitlement_trigger_configs": [{"feature_id": other_feature}]}),
        )
        .await;
    on_free_plan(&app, "third").await;
    track(&app, "third", 5).await;
    let narrow_messages = messages(&app, narrow["id"].as_str().unwrap()).await;
    assert_eq!(narrow_messages, vec![]);
    assert_eq!(messages(&app, &hook).await.len(), 6);
}

/// `(type, payload)` of every message of `webhook`, oldest first.
async fn payloads(app: &common::TestApp, webhook: &str) -> Vec<(String, Value)> {
    let (_, list) = app
        .get(&format!("/webhook-events?webhook_id={webhook}"))
        .await;
    let mut out: Vec<(String, Value)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["request_type"].as_str().unwrap().to_string(),
                serde_json::from_str(m["payload"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    out.reverse();
    out
}

#[tokio::test]
async fn stripe_plan_changes_and_ended_trials_are_sent() {
    use common::stripe::{self as s, Item};
    let app = common::spawn_app_with(&format!(
        "{}\n[webhooks]\nallow_private_targets = true\nretry_schedule_secs = [600]\n",
        s::config("stripe_refetch_on_webhook = false")
    ))
    .await;
    app.seed_demo_catalog().await;
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "stripe", "url": "http://127.0.0.1:9/stripe",
                   "request_types": ["company.plan_changed", "subscription.trial.ended"]}),
        )
        .await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let pro = [Item {
        id: "si_pro",
        price: "price_demo_pro_monthly",
        product: "prod_demo_pro",
        quantity: 1,
    }];
    let t = s::now();
    // A trial starts: the company joins Pro.
    let trial = s::subscription("sub_msg", "cus_msg", "trialing", &pro);
    app.deliver(&s::event(
        "customer.subscription.created",
        "evt_msg_1",
        t,
        trial,
    ))
    .await;
    // The trial converts: Stripe says so with previous_attributes; the plans stay.
    let mut converted = s::event(
        "customer.subscription.updated",
        "evt_msg_2",
        t + 1,
        s::subscription("sub_msg", "cus_msg", "active", &pro),
    );
    converted["data"]["previous_attributes"] = json!({"status": "trialing"});
    app.deliver(&converted).await;
    // Canceled: the company leaves Pro.
    app.deliver(&s::event(
        "customer.subscription.deleted",
        "evt_msg_3",
        t + 2,
        s::subscription("sub_msg", "cus_msg", "canceled", &pro),
    ))
    .await;
    common::eventually(Duration::from_secs(3), || async {
        (payloads(&app, &hook).await.len() >= 3).then_some(())
    })
    .await;
    let got = payloads(&app, &hook).await;
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "company.plan_changed",
            "subscription.trial.ended",
            "company.plan_changed"
        ],
        "{got:?}"
    );
    let joined = &got[0].1["data"];
    assert_eq!(joined["source"], "stripe");
    assert!(joined["previous_plan"].is_null(), "{joined}");
    assert_eq!(joined["plan"]["key"], "pro", "{joined}");
    let ended = &got[1].1["data"];
    assert_eq!(ended["subscription_id"], "sub_msg");
    assert_eq!(ended["status"], "active");
    let left = &got[2].1["data"];
    assert_eq!(left["previous_plan"]["key"], "pro", "{left}");
    assert!(left["plan"].is_null(), "{left}");
    assert_eq!(got[0].1["environment"], "development");
}

/// API writes send created / updated (with `previous`, only when something changed) /
/// deleted messages of their object's REST view.
#[tokio::test]
async fn api_writes_send_lifecycle_messages() {
    let app = seeded().await;
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "lifecycle", "url": "http://127.0.0.1:9/lifecycle",
                   "request_types": ["user.created", "user.updated", "user.deleted",
                                     "plan.created", "plan.updated", "plan.deleted", "flag_rules.updated"]}),
        )
        .await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let user = app
        .create(
            "/users",
            json!({"keys": {"email": "a@example.com"}, "name": "Ann"}),
        )
        .await;
    app.create(
        "/users",
        json!({"keys": {"email": "a@example.com"}, "name": "Ann"}),
    )
    .await; // the same again: no message
    app.create(
        "/users",
        json!({"keys": {"email": "a@example.com"}, "name": "Anne"}),
    )
    .await;
    let (s, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/users/{}", user["id"].as_str().unwrap()),
            None,
            Some(&app.key),
        )
        .await;
    assert!(s.is_success());
    let plan = app
        .create("/plans", json!({"name": "Scale", "plan_type": "plan"}))
        .await;
    let plan_id = plan["id"].as_str().unwrap();
    app.put(
        &format!("/plans/{plan_id}"),
        json!({"description": "For big teams"}),
    )
    .await;
    let flag = app.id_of("flags", "sso").await;
    let (s, body) = app
        .put(
            &format!("/flags/{flag}/rules"),
            json!({"rules": [{"name": "staff", "priority": 1, "value": true,
                              "conditions": [{"condition_type": "trait", "operator": "eq", "trait_id": "staff", "trait_value": "yes"}]}]}),
        )
        .await;
    assert!(s.is_success(), "{body}");
    app.send(
        reqwest::Method::DELETE,
        &format!("/plans/{plan_id}"),
        None,
        Some(&app.key),
    )
    .await;

    let got = payloads(&app, &hook).await;
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "user.created",
            "user.updated",
            "user.deleted",
            "plan.created",
            "plan.updated",
            "flag_rules.updated",
            "plan.deleted"
        ],
        "{got:#?}"
    );
    assert_eq!(got[1].1["data"]["name"], "Anne");
    assert_eq!(got[1].1["previous"]["name"], "Ann");
    assert_eq!(got[4].1["data"]["description"], "For big teams");
    assert_eq!(got[4].1["previous"]["description"], "");
    assert_eq!(
        got[5].1["data"]["rules"][0]["name"], "staff",
        "{}",
        got[5].1
    );
    assert_eq!(got[6].1["data"]["id"], plan_id);
}

/// Burning credits sends `credit.limit.warning` when the balance falls to 20% and
/// `credit.limit.reached` when it is gone, once per grant.
#[tokio::test]
async fn credit_limit_messages() {
    let app = seeded().await;
    let credit = app
        .pro_ai_tokens_burn_credit(json!({"name": "Tokens"}), 1.0)
        .await;
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "credits", "url": "http://127.0.0.1:9/credits",
                   "request_types": ["credit.limit.warning", "credit.limit.reached"]}),
        )
        .await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let pro = app.id_of("plans", "pro").await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "burner"}, "base_plan_id": pro}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.create(
        "/billing/credits/grants/company",
        json!({"company_id": company, "credit_id": credit, "quantity": 10, "reason": "purchased"}),
    )
    .await;
    let burn = |q: i64| json!({"event_type": "track", "body": {"event": "ai_tokens", "company": {"id": "burner"}, "quantity": q}});
    for q in [5, 2, 1, 1, 1, 3] {
        let (s, body) = app.post("/events", burn(q)).await;
        assert!(s.is_success(), "{body}");
    }
    let got = payloads(&app, &hook).await;
    let summary: Vec<(&str, f64)> = got
        .iter()
        .map(|(t, b)| (t.as_str(), b["data"]["remaining"].as_f64().unwrap()))
        .collect();
    // 10 → 5 → 3 → 2 (≤ 20%: warning) → 1 → 0 (reached) → stays 0: nothing more.
    assert_eq!(
        summary,
        [("credit.limit.warning", 2.0), ("credit.limit.reached", 0.0)],
        "{got:#?}"
    );
    assert_eq!(got[0].1["data"]["credit_id"], credit.as_str());
}

/// A metered entitlement (`overage`, 5 included, soft limit 10): `entitlement.limit.reached`
/// at the allocation (use goes on), `entitlement.soft_limit.warning` at 80% of the soft limit
/// and `entitlement.soft_limit.reached` at it, each once per window.
#[tokio::test]
async fn soft_limit_messages_fire_once_per_crossing() {
    let app = seeded().await;
    // The free plan's reports become overage, billed to a metered price (a catalog is shared
    // by environments, so the price is not checked against one here).
    let catalog = std::env::temp_dir().join(format!("soft-limit-{}.toml", std::process::id()));
    std::fs::write(
        &catalog,
        "[[plan_entitlements]]\nplan = \"free\"\nfeature = \"reports\"\nvalue_type = \"numeric\"\n\
         value_numeric = 5\nmetric_period = \"current_month\"\nprice_behavior = \"overage\"\n\
         monthly_metered_price_id = \"price_reports_metered\"\nsoft_limit = 10\n",
    )
    .unwrap();
    entitled::seed::seed_file(&app.pool, &catalog)
        .await
        .unwrap();
    let _ = std::fs::remove_file(&catalog);
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "soft", "url": "http://127.0.0.1:9/soft",
                   "request_types": ["entitlement.limit.reached", "entitlement.soft_limit.warning",
                                     "entitlement.soft_limit.reached"]}),
        )
        .await;
    let hook = hook["id"].as_str().unwrap().to_string();
    on_free_plan(&app, "metered").await;
    let company: String = app.get("/companies/lookup?keys[id]=metered").await.1["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    track(&app, "metered", 3).await; // 3: nothing
    assert_eq!(messages(&app, &hook).await, vec![]);
    track(&app, "metered", 2).await; // 5: the allocation, use goes on
                                     // Overage is not cut at the allocation (once the seeded catalog reached the snapshot).
    app.check_becomes("reports", json!({"id": "metered"}), true)
        .await;
    track(&app, "metered", 3).await; // 8: 80% of the soft limit
    track(&app, "metered", 1).await; // 9: nothing new
    track(&app, "metered", 1).await; // 10: the soft limit
    track(&app, "metered", 4).await; // past it: nothing new
    assert_eq!(
        messages(&app, &hook).await,
        vec![
            ("entitlement.limit.reached".into(), company.clone(), 5),
            ("entitlement.soft_limit.warning".into(), company.clone(), 8),
            ("entitlement.soft_limit.reached".into(), company.clone(), 10),
        ]
    );
    let c = app
        .check_becomes("reports", json!({"id": "metered"}), false)
        .await;
    assert_eq!(c["entitlement"]["allocation"], 5, "{c}");
    // The soft limit is in the message.
    let (_, list) = app.get(&format!("/webhook-events?webhook_id={hook}")).await;
    let newest: Value = serde_json::from_str(list["data"][0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(newest["data"]["soft_limit"], 10, "{newest}");
    assert_eq!(newest["data"]["threshold"], 10, "{newest}");
}
