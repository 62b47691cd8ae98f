//! Flag checks end to end: the demo catalog, companies on plans and add-ons, overrides,
//! the fallback plan, and the snapshot kept fresh across two servers.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn seeded(extra: &str) -> common::TestApp {
    let app = common::spawn_app_with(extra).await;
    let summary = app.seed_demo_catalog().await;
    assert!(summary.changed());
    // The seed notified the running server; wait until its snapshot has the catalog.
    app.wait_for_flag("sso").await;
    app
}

async fn plan_id(app: &common::TestApp, key: &str) -> String {
    let row: (String,) = sqlx::query_as("SELECT id FROM plans WHERE key = $1")
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    row.0
}

async fn feature_id(app: &common::TestApp, key: &str) -> String {
    let row: (String,) = sqlx::query_as("SELECT id FROM features WHERE key = $1")
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    row.0
}

#[tokio::test]
async fn seeding_twice_changes_nothing() {
    let app = seeded("").await;
    let again = app.seed_demo_catalog().await;
    assert!(!again.changed(), "{again}");
    assert_eq!(again.features[2], 9);
    assert_eq!(again.plans[2], 5);
}

#[tokio::test]
async fn plans_add_ons_and_traits_decide_checks() {
    let app = seeded("").await;
    let pro = plan_id(&app, "pro").await;
    let enterprise = plan_id(&app, "enterprise").await;
    let analytics = plan_id(&app, "analytics").await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "name": "Acme", "base_plan_id": pro, "traits": {"seats_used": 2, "projects_count": 4}}),
        )
        .await;
    let acme = json!({"id": "acme"});

    // A boolean the plan grants.
    let c = app.check("custom-branding", acme.clone()).await;
    assert_eq!(c["value"], true);
    assert_eq!(c["rule_type"], "plan_entitlement");
    assert_eq!(c["company_id"], company["id"]);
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("Pro: custom-branding"),
        "{c}"
    );
    // A boolean no plan grants: the default.
    let c = app.check("sso", acme.clone()).await;
    assert_eq!(
        (c["value"].clone(), c["rule_type"].clone()),
        (json!(false), json!("default"))
    );
    // An event feature: within the monthly allocation, with the entitlement described.
    let c = app.check("api-calls", acme.clone()).await;
    assert_eq!(c["value"], true);
    assert_eq!(c["feature_allocation"], 100000);
    assert_eq!(c["feature_usage"], 0);
    assert_eq!(c["feature_usage_event"], "api_call");
    assert_eq!(c["feature_usage_period"], "current_month");
    assert_eq!(c["entitlement"]["feature_key"], "api-calls");
    assert!(c["feature_usage_reset_at"].is_string());
    // A trait feature: 4 projects used of 10.
    let c = app.check("projects", acme.clone()).await;
    assert_eq!(
        (
            c["value"].clone(),
            c["feature_usage"].clone(),
            c["feature_allocation"].clone()
        ),
        (json!(true), json!(4), json!(10))
    );
    // Pay in advance: seats allocation is the subscribed quantity (1 for a manual membership).
    let c = app.check("seats", acme.clone()).await;
    assert_eq!(c["value"], false, "{c}");
    assert_eq!(c["rule_type"], "plan_entitlement_usage_exceeded");
    assert_eq!(c["feature_allocation"], 1);

    // The trait moves past the limit → denied, within a second (here: immediately).
    app.create(
        "/company-traits",
        json!({"keys": {"id": "acme"}, "trait": "projects_count", "set": 10}),
    )
    .await;
    let c = app.check("projects", acme.clone()).await;
    assert_eq!(
        (c["value"].clone(), c["rule_type"].clone()),
        (json!(false), json!("plan_entitlement_usage_exceeded"))
    );

    // An add-on adds audit-log access it already had, and unlimited reports.
    app.create(
        "/companies",
        json!({"keys": {"id": "acme"}, "add_on_ids": [analytics]}),
    )
    .await;
    let c = app.check("reports", acme.clone()).await;
    assert_eq!(c["value"], true);
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("Analytics add-on: reports"),
        "{c}"
    );
    assert_eq!(
        c["feature_allocation"],
        Value::Null,
        "unlimited has no allocation"
    );

    // Enterprise: the projects allocation comes from a company trait.
    app.create("/companies", json!({"keys": {"id": "acme"}, "base_plan_id": enterprise, "traits": {"projects_limit": 50}})).await;
    let c = app.check("projects", acme.clone()).await;
    assert_eq!(
        (c["value"].clone(), c["feature_allocation"].clone()),
        (json!(true), json!(50))
    );
    let c = app.check("sso", acme.clone()).await;
    assert_eq!(c["value"], true);

    // Company detail lists the entitlements checks use.
    let (_, detail) = app
        .get(&format!("/companies/{}", company["id"].as_str().unwrap()))
        .await;
    assert_eq!(detail["data"]["plan"]["id"], enterprise);
    assert_eq!(detail["data"]["add_ons"][0]["id"], analytics);
    let keys: Vec<&str> = detail["data"]["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["feature_key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"sso") && keys.contains(&"reports"),
        "{keys:?}"
    );
}

#[tokio::test]
async fn overrides_are_most_generous_except_false() {
    let app = seeded("").await;
    let free = plan_id(&app, "free").await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "o"}, "base_plan_id": free, "traits": {"projects_count": 1}}),
        )
        .await;
    let cid = company["id"].as_str().unwrap().to_string();
    let o = json!({"id": "o"});
    assert_eq!(
        app.check("projects", o.clone()).await["value"],
        false,
        "free allows 1 project"
    );

    // A numeric override of 5 beats the plan's 1.
    let projects = feature_id(&app, "projects").await;
    let ov = app
        .create("/company-overrides", json!({"company_id": cid, "feature_id": projects, "value_type": "numeric", "value_numeric": 5}))
        .await;
    let c = app.check("projects", o.clone()).await;
    assert_eq!(
        (
            c["value"].clone(),
            c["rule_type"].clone(),
            c["rule_id"].clone()
        ),
        (json!(true), json!("company_override"), ov["id"].clone())
    );

    // A boolean false override denies even what the plan grants.
    let seats = feature_id(&app, "seats").await;
    assert_eq!(app.check("seats", o.clone()).await["value"], true);
    let sso = feature_id(&app, "sso").await;
    app.create(
        "/company-overrides",
        json!({"company_id": cid, "feature_id": sso, "value_type": "boolean", "value_bool": true}),
    )
    .await;
    assert_eq!(app.check("sso", o.clone()).await["value"], true);
    app.create("/company-overrides", json!({"company_id": cid, "feature_id": seats, "value_type": "boolean", "value_bool": false})).await;
    let c = app.check("seats", o.clone()).await;
    assert_eq!(
        (c["value"].clone(), c["rule_type"].clone()),
        (json!(false), json!("company_override")),
        "{c}"
    );
}

#[tokio::test]
async fn unknown_flags_404_and_unknown_companies_use_defaults() {
    let app = seeded("").await;
    let (s, body) = app
        .post("/flags/nope/check", json!({"company": {"id": "x"}}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let c = app.check("audit-log", json!({"id": "nobody"})).await;
    assert_eq!(
        (
            c["value"].clone(),
            c["rule_type"].clone(),
            c["company_id"].clone()
        ),
        (json!(false), json!("default"), Value::Null)
    );
    // An empty body is "no company".
    let (s, body) = app
        .send(Method::POST, "/flags/sso/check", None, Some(&app.key))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Readonly keys may check.
    let (s, _) = app
        .send(
            Method::POST,
            "/flags/sso/check",
            Some(&json!({"company": {"id": "x"}})),
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Bad company keys are named.
    let (s, body) = app
        .post("/flags/sso/check", json!({"company": {"id": [1]}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("company.id"),
        "{body}"
    );
}

#[tokio::test]
async fn check_all_flags_has_sdk_shape() {
    let app = seeded("").await;
    let (s, body) = app
        .post("/flags/check", json!({"company": {"id": "x"}}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let flags = body["data"]["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 9);
    assert!(flags
        .iter()
        .all(|f| f["value"].is_boolean() && f["reason"].is_string()));
    assert_eq!(body["data"]["credit_spend_policies"], json!([]));
}

/// `/flags/check-bulk` answers, per context and in order, exactly what `/flags/check` answers
/// for that context, whose flags are exactly what `/flags/{key}/check` answers.
#[tokio::test]
async fn check_bulk_answers_every_flag_for_each_context() {
    let app = seeded("").await;
    let pro = plan_id(&app, "pro").await;
    app.create(
        "/companies",
        json!({"keys": {"id": "bulk-a"}, "base_plan_id": pro, "traits": {"projects_count": 4}}),
    )
    .await;
    let contexts = vec![
        json!({"company": {"id": "bulk-a"}, "user": null}),
        json!({"company": {"id": "nobody"}}),
        json!({}),
    ];
    let (s, bulk) = app
        .post("/flags/check-bulk", json!({ "contexts": contexts }))
        .await;
    assert_eq!(s, StatusCode::OK, "{bulk}");
    assert_eq!(bulk["params"], json!({}));
    let answers = bulk["data"]["data"].as_array().unwrap();
    assert_eq!(answers.len(), 3);
    for (context, answer) in contexts.iter().zip(answers) {
        let (s, all) = app.post("/flags/check", context.clone()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(answer, &all["data"], "{context}");
        assert_eq!(answer["credit_spend_policies"], json!([]));
        let flags = answer["flags"].as_array().unwrap();
        assert_eq!(flags.len(), 9);
        let keys: Vec<&str> = flags.iter().map(|f| f["flag"].as_str().unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        for f in flags {
            let path = format!("/flags/{}/check", f["flag"].as_str().unwrap());
            let (s, one) = app.post(&path, context.clone()).await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(f, &one["data"], "{path} for {context}");
        }
    }
    let known = &answers[0]["flags"];
    let projects = known
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flag"] == "projects");
    let projects = projects.unwrap();
    assert_eq!(
        (projects["value"].clone(), projects["feature_usage"].clone()),
        (json!(true), json!(4)),
        "{projects}"
    );
    assert!(known[0]["company_id"]
        .as_str()
        .unwrap()
        .starts_with("comp_"));
    assert_eq!(answers[1]["flags"][0]["company_id"], Value::Null);

    // No contexts: no answers.
    let (s, body) = app.post("/flags/check-bulk", json!({"contexts": []})).await;
    assert_eq!(
        (s, body["data"]["data"].clone()),
        (StatusCode::OK, json!([]))
    );
}

#[tokio::test]
async fn check_bulk_names_the_bad_field() {
    let app = seeded("").await;
    let too_many: Vec<Value> = (0..=entitled::api::checks::MAX_BULK_CONTEXTS)
        .map(|i| json!({"company": {"id": format!("c{i}")}}))
        .collect();
    let cases = [
        (json!({}), "contexts"),
        (json!({"contexts": {"company": {"id": "a"}}}), "contexts"),
        (
            json!({"contexts": [{"company": "a"}]}),
            "contexts[0].company",
        ),
        (
            json!({"contexts": [{"company": {"id": "a"}}, {"company": {"id": [1]}}]}),
            "contexts[1].company.id",
        ),
        (
            json!({"contexts": [{"user": {"email": {"x": 1}}}]}),
            "contexts[0].user.email",
        ),
        (json!({ "contexts": too_many }), "contexts"),
    ];
    for (body, field) in cases {
        let (s, err) = app.post("/flags/check-bulk", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {err}");
        let msg = err["error"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    let (s, _) = app
        .send(
            Method::POST,
            "/flags/check-bulk",
            Some(&json!({"contexts": []})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .send(
            Method::POST,
            "/flags/check-bulk",
            Some(&json!({"contexts": [{}]})),
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "readonly keys may check");
}

#[tokio::test]
async fn fallback_plan_applies_without_a_base_plan() {
    let app = seeded("[[environments]]\nkey = \"development\"\nname = \"Development\"\nfallback_plan = \"free\"\n").await;
    app.create(
        "/companies",
        json!({"keys": {"id": "nf"}, "traits": {"projects_count": 0}}),
    )
    .await;
    let c = app.check("projects", json!({"id": "nf"})).await;
    assert_eq!(c["value"], true, "{c}");
    assert!(
        c["reason"].as_str().unwrap().contains("Free: projects"),
        "{c}"
    );
}

#[tokio::test]
async fn a_second_server_sees_writes_within_a_second() {
    let a = seeded("").await;
    let b = common::spawn_on(&a.db_url, "").await;
    let pro = plan_id(&a, "pro").await;
    // Write through A; B answers from its own snapshot.
    a.create(
        "/companies",
        json!({"keys": {"id": "two"}, "base_plan_id": pro}),
    )
    .await;
    let started = std::time::Instant::now();
    common::eventually(Duration::from_secs(1), || async {
        let (s, body) = b
            .post(
                "/flags/custom-branding/check",
                json!({"company": {"id": "two"}}),
            )
            .await;
        (s == StatusCode::OK && body["data"]["value"] == true).then_some(())
    })
    .await;
    // And catalog changes travel too: B learns a new plan entitlement.
    let sso = feature_id(&a, "sso").await;
    a.create(
        "/plan-entitlements",
        json!({"plan_id": pro, "feature_id": sso, "value_type": "boolean", "value_bool": true}),
    )
    .await;
    common::eventually(Duration::from_secs(1), || async {
        let (_, body) = b
            .post("/flags/sso/check", json!({"company": {"id": "two"}}))
            .await;
        (body["data"]["value"] == true).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    b.stop().await;
}

/// Checks go straight to their handlers (`api::front`), while a key that needs
/// percent-decoding takes the router: both roads answer alike, refuse alike and are counted
/// in the same latency series.
#[tokio::test]
async fn checks_answer_alike_by_the_front_and_the_router() {
    let app = seeded("").await;
    let series = |text: &str, route: &str| {
        let name = format!(
            "entitled_http_request_duration_seconds_count{{method=\"POST\",route=\"{route}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&name)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = app.metrics_text().await;
    let company = json!({"company": {"id": "x"}});
    let (s, direct) = app.post("/flags/sso/check", company.clone()).await;
    assert_eq!(s, StatusCode::OK, "{direct}");
    // "%73" is "s": only the router decodes it.
    let (s, routed) = app.post("/flags/%73so/check", company.clone()).await;
    assert_eq!(s, StatusCode::OK, "{routed}");
    assert_eq!(direct, routed);
    assert_eq!(direct["data"]["flag"], "sso");
    let (s, all) = app.post("/flags/check", company.clone()).await;
    assert_eq!(s, StatusCode::OK, "{all}");

    // No key: 401 on both roads and on the all-flags check.
    for path in ["/flags/sso/check", "/flags/%73so/check", "/flags/check"] {
        let (s, body) = app.send(Method::POST, path, Some(&company), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    // Over the body limit: 413 naming it; malformed JSON: 400 naming the problem.
    let big = json!({"company": {"id": "x".repeat(app.config.server.body_limit_bytes)}});
    for path in ["/flags/sso/check", "/flags/check"] {
        let (s, body) = app.post(path, big.clone()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {body}");
        let resp = app
            .client
            .post(format!("{}{path}", app.base))
            .header("X-Schematic-Api-Key", &app.key)
            .body("{\"company\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("malformed JSON"),
            "{path}: {body}"
        );
    }
    // Other methods and paths are the router's: 405 and 404 as before.
    let (s, _) = app
        .send(Method::GET, "/flags/sso/check", None, Some(&app.key))
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = app.post("/flags/a/b/check", company.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let after = app.metrics_text().await;
    let one = "/flags/{key}/check";
    // Two answered, two 401s, a 413 and a 400: every request counted once.
    assert!(series(&after, one) >= series(&before, one) + 6.0, "{after}");
    assert!(series(&after, "/flags/check") >= series(&before, "/flags/check") + 4.0);
}
