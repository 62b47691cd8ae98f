//! Plans, plan entitlements and company overrides through the real HTTP stack.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Inserts a feature directly (the features API is not under test here); returns its id.
async fn feature(app: &common::TestApp, key: &str, feature_type: &str) -> String {
    let id = entitled::ids::new_id("feat");
    let (subtype, trait_id) = match feature_type {
        "event" => (Some(key), None),
        "trait" => (None, Some("seats_used")),
        _ => (None, None),
    };
    sqlx::query(
        "INSERT INTO features (id, key, name, feature_type, event_subtype, trait_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(key)
    .bind(format!("Feature {key}"))
    .bind(feature_type)
    .bind(subtype)
    .bind(trait_id)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// Asserts `status` and that the error message names `field`.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: &str) {
    assert_eq!(status, want, "{body}");
    assert!(error_of(body).contains(field), "{field} not named: {body}");
}

fn ids(list: &Value) -> Vec<&str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn plans_crud_keys_and_filters() {
    let app = common::spawn_app_with(
        "[[environments]]\nkey = \"a\"\nname = \"A\"\nfallback_plan = \"free\"\n",
    )
    .await;
    // The SDK's create_plan body: no key, an icon entitled ignores.
    let pro = app
        .create(
            "/plans",
            json!({"name": "Pro Plan", "plan_type": "plan", "description": "For teams", "icon": "blue"}),
        )
        .await;
    let pro_id = pro["id"].as_str().unwrap().to_string();
    assert!(pro_id.starts_with("plan_"));
    assert_eq!(pro["key"], "pro-plan");
    assert_eq!(pro["description"], "For teams");
    assert_eq!(pro["company_count"], 0);
    assert_eq!(pro["controlled_by"], "schematic");
    assert_eq!(pro["is_default"], false);
    // Every field the SDK's PlanDetailResponseData requires.
    for field in [
        "billing_strategy",
        "charge_type",
        "company_count",
        "controlled_by",
        "created_at",
        "credits",
        "currency_prices",
        "description",
        "features",
        "icon",
        "id",
        "is_default",
        "is_trialable",
        "name",
        "plan_type",
        "updated_at",
        "versions",
    ] {
        assert!(!pro[field].is_null(), "{field} missing: {pro}");
    }

    // Same name again: the derived key moves aside instead of failing.
    let pro2 = app
        .create("/plans", json!({"name": "Pro Plan", "plan_type": "plan"}))
        .await;
    assert_eq!(pro2["key"], "pro-plan-2");

    let free = app
        .create(
            "/plans",
            json!({"name": "Free", "key": "free", "plan_type": "plan"}),
        )
        .await;
    assert_eq!(free["is_default"], true, "the environment's fallback plan");
    let addon = app
        .create(
            "/plans",
            json!({"name": "Extra seats", "key": "seats", "plan_type": "add_on", "billing_product_id": "prod_seats"}),
        )
        .await;
    assert_eq!(addon["billing_product_id"], "prod_seats");
    assert_eq!(addon["controlled_by"], "stripe");

    // Conflicts name what conflicts.
    let (s, body) = app
        .post(
            "/plans",
            json!({"name": "Free again", "key": "free", "plan_type": "plan"}),
        )
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "\"free\"");
    let (s, body) = app
        .post(
            "/plans",
            json!({"name": "Seats 2", "plan_type": "add_on", "billing_product_id": "prod_seats"}),
        )
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "billing_product_id");
    // Bad input names the field.
    for (body, field) in [
        (json!({"name": "X", "plan_type": "bundle"}), "plan_type"),
        (json!({"name": "X"}), "plan_type"),
        (json!({"plan_type": "plan"}), "name"),
        (json!({"name": "", "plan_type": "plan"}), "name"),
        (
            json!({"name": "X", "plan_type": "plan", "key": "no spaces"}),
            "key",
        ),
        (json!({"name": 5, "plan_type": "plan"}), "name"),
    ] {
        let (s, resp) = app.post("/plans", body.clone()).await;
        assert_error(s, &resp, StatusCode::BAD_REQUEST, field);
    }

    // Lists: newest first, filters, params echoed.
    let (s, list) = app.get("/plans").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&list).len(), 4);
    assert_eq!(ids(&list)[0], addon["id"].as_str().unwrap());
    let (_, list) = app.get("/plans?plan_type=add_on").await;
    assert_eq!(ids(&list), vec![addon["id"].as_str().unwrap()]);
    let (_, list) = app.get("/plans?has_product_id=false&q=pro&limit=1").await;
    assert_eq!(ids(&list), vec![pro2["id"].as_str().unwrap()]);
    assert_eq!(list["params"]["q"], "pro");
    assert_eq!(list["params"]["limit"], 1);
    let (_, list) = app
        .get(&format!(
            "/plans?ids={pro_id}&ids={}",
            free["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ids(&list).len(), 2);
    let (s, body) = app.get("/plans?plan_type=bundle").await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "plan_type");

    // Update: the SDK sends name (and maybe description); key and product are ours.
    let (s, body) = app
        .put(
            &format!("/plans/{pro_id}"),
            json!({"name": "Professional", "key": "pro", "billing_product_id": "prod_pro"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], "Professional");
    assert_eq!(body["data"]["key"], "pro");
    assert_eq!(body["data"]["description"], "For teams", "kept");
    assert_eq!(body["data"]["billing_product_id"], "prod_pro");
    let (s, body) = app
        .put(&format!("/plans/{pro_id}"), json!({"key": "free"}))
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "\"free\"");
    let (s, body) = app
        .put(
            &format!("/plans/{pro_id}"),
            json!({"billing_product_id": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["billing_product_id"], Value::Null, "unlinked");
    let (s, _) = app.put("/plans/plan_nope", json!({"name": "x"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, body) = app.delete(&format!("/plans/{pro_id}")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["deleted"], true);
    let (s, body) = app.get(&format!("/plans/{pro_id}")).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, &pro_id);
    let (s, _) = app.delete(&format!("/plans/{pro_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn plans_with_companies_cannot_be_deleted_or_retyped() {
    let app = common::spawn_app().await;
    let plan = app
        .create("/plans", json!({"name": "Team", "plan_type": "plan"}))
        .await;
    let plan_id = plan["id"].as_str().unwrap();
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "base_plan_id": plan_id}),
        )
        .await;
    let (_, body) = app.get(&format!("/plans/{plan_id}")).await;
    assert_eq!(body["data"]["company_count"], 1);

    let (s, body) = app.delete(&format!("/plans/{plan_id}")).await;
    assert_error(s, &body, StatusCode::CONFLICT, "1 companies");
    let (s, body) = app
        .put(&format!("/plans/{plan_id}"), json!({"plan_type": "add_on"}))
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "plan_type");
    // Renaming is fine.
    let (s, _) = app
        .put(
            &format!("/plans/{plan_id}"),
            json!({"name": "Team 2", "plan_type": "plan"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, _) = app
        .delete(&format!("/companies/{}", company["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app
        .put(&format!("/plans/{plan_id}"), json!({"plan_type": "add_on"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["plan_type"], "add_on");
    let (s, _) = app.delete(&format!("/plans/{plan_id}")).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn plan_entitlements_crud_and_validation() {
    let app = common::spawn_app().await;
    let calls = feature(&app, "api-calls", "event").await;
    let sso = feature(&app, "sso", "boolean").await;
    let seats = feature(&app, "seats", "trait").await;
    let plan = app
        .create("/plans", json!({"name": "Pro", "plan_type": "plan"}))
        .await;
    let plan_id = plan["id"].as_str().unwrap().to_string();

    let ent = app
        .create(
            "/plan-entitlements",
            json!({"plan_id": plan_id, "feature_id": calls, "value_type": "numeric",
                   "value_numeric": 1000, "metric_period": "current_month",
                   "price_behavior": "tier"}),
        )
        .await;
    let ent_id = ent["id"].as_str().unwrap().to_string();
    assert!(ent_id.starts_with("pltl_"));
    assert_eq!(ent["rule_id"], ent_id);
    assert_eq!(ent["value_type"], "numeric");
    assert_eq!(ent["value_numeric"], 1000);
    assert_eq!(ent["metric_period"], "current_month");
    assert_eq!(ent["metric_period_month_reset"], "first_of_month");
    // (`overage` and `pay_as_you_go` need a metered price: tests/meters.rs.)
    assert_eq!(ent["price_behavior"], "tier");
    assert_eq!(ent["feature"]["id"], calls);
    assert_eq!(ent["feature"]["feature_type"], "event");
    assert_eq!(ent["plan"]["id"], plan_id);
    assert_eq!(ent["plan"]["plan_type"], "plan");
    assert_eq!(ent["warning_tiers"], json!([]));
    assert_eq!(ent["currency_prices"], json!([]));
    assert!(ent["environment_id"].as_str().unwrap().starts_with("env_"));
    let sso_ent = app
        .create(
            "/plan-entitlements",
            json!({"plan_id": plan_id, "feature_id": sso, "value_type": "boolean", "value_bool": true}),
        )
        .await;

    // One per plan and feature.
    let (s, body) = app
        .post(
            "/plan-entitlements",
            json!({"plan_id": plan_id, "feature_id": calls, "value_type": "unlimited"}),
        )
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "feature_id");

    let other = app
        .create("/plans", json!({"name": "Other", "plan_type": "plan"}))
        .await;
    let other_id = other["id"].as_str().unwrap();
    for (body, status, field) in [
        (
            json!({"plan_id": other_id, "feature_id": calls, "value_type": "numeric"}),
            StatusCode::BAD_REQUEST,
            "value_numeric",
        ),
        (
            json!({"plan_id": other_id, "feature_id": calls, "value_type": "numeric", "value_numeric": "many"}),
            StatusCode::BAD_REQUEST,
            "value_numeric",
        ),
        (
            json!({"plan_id": other_id, "feature_id": sso, "value_type": "numeric", "value_numeric": 5}),
            StatusCode::BAD_REQUEST,
            "value_type",
        ),
        (
            json!({"plan_id": other_id, "feature_id": seats, "value_type": "trait"}),
            StatusCode::BAD_REQUEST,
            "value_trait_id",
        ),
        (
            json!({"plan_id": other_id, "feature_id": calls, "value_type": "unlimited", "price_behavior": "free"}),
            StatusCode::BAD_REQUEST,
            "price_behavior",
        ),
        (
            json!({"plan_id": other_id, "feature_id": calls, "value_type": "unlimited", "metric_period": "hourly"}),
            StatusCode::BAD_REQUEST,
            "metric_period",
        ),
        (
            json!({"plan_id": "plan_nope", "feature_id": calls, "value_type": "unlimited"}),
            StatusCode::NOT_FOUND,
            "plan_id",
        ),
        (
            json!({"plan_id": other_id, "feature_id": "feat_nope", "value_type": "unlimited"}),
            StatusCode::NOT_FOUND,
            "feature_id",
        ),
        (
            json!({"feature_id": calls, "value_type": "unlimited"}),
            StatusCode::BAD_REQUEST,
            "plan_id",
        ),
    ] {
        let (s, resp) = app.post("/plan-entitlements", body.clone()).await;
        assert_error(s, &resp, status, field);
    }
    // Nothing was written for the other plan.
    let (_, list) = app
        .get(&format!("/plan-entitlements?plan_id={other_id}"))
        .await;
    assert_eq!(ids(&list).len(), 0);
    let trait_ent = app
        .create(
            "/plan-entitlements",
            json!({"plan_id": other_id, "feature_id": seats, "value_type": "trait", "value_trait_id": "seats_max"}),
        )
        .await;
    assert_eq!(trait_ent["value_trait_id"], "seats_max");

    // Lists filter by plan, feature and id.
    let (_, list) = app
        .get(&format!("/plan-entitlements?plan_id={plan_id}"))
        .await;
    assert_eq!(
        ids(&list),
        vec![sso_ent["id"].as_str().unwrap(), ent_id.as_str()]
    );
    let (_, list) = app
        .get(&format!(
            "/plan-entitlements?feature_ids={calls}&feature_ids={seats}"
        ))
        .await;
    assert_eq!(ids(&list).len(), 2);
    let (_, list) = app
        .get(&format!("/plan-entitlements?ids={ent_id}&limit=5"))
        .await;
    assert_eq!(ids(&list), vec![ent_id.as_str()]);
    assert_eq!(list["params"]["limit"], 5);

    // The plan shows its features and entitlements.
    let (_, body) = app.get(&format!("/plans/{plan_id}")).await;
    let features: Vec<&str> = body["data"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(features, vec![calls.as_str(), sso.as_str()]);
    assert_eq!(body["data"]["features"][0]["plans"][0]["id"], plan_id);
    assert_eq!(body["data"]["entitlements"].as_array().unwrap().len(), 2);

    // Update: a new number keeps the period; the SDK always resends value_type.
    let (s, body) = app
        .put(
            &format!("/plan-entitlements/{ent_id}"),
            json!({"value_type": "numeric", "value_numeric": 5000, "price_behavior": "pay_in_advance"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["value_numeric"], 5000);
    assert_eq!(body["data"]["metric_period"], "current_month");
    assert_eq!(body["data"]["price_behavior"], "pay_in_advance");
    let (s, body) = app
        .put(
            &format!("/plan-entitlements/{ent_id}"),
            json!({"value_type": "unlimited"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["value_numeric"], Value::Null);
    let (s, body) = app
        .put(
            &format!("/plan-entitlements/{}", sso_ent["id"].as_str().unwrap()),
            json!({"value_type": "numeric", "value_numeric": 3}),
        )
        .await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "value_type");
    let (s, _) = app
        .put(
            "/plan-entitlements/pltl_nope",
            json!({"value_type": "unlimited"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = app.delete(&format!("/plan-entitlements/{ent_id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app.get(&format!("/plan-entitlements/{ent_id}")).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, &ent_id);
    let (s, _) = app.delete(&format!("/plan-entitlements/{ent_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Deleting a plan takes its entitlements with it.
    let (s, _) = app.delete(&format!("/plans/{plan_id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = app
        .get(&format!("/plan-entitlements?feature_id={sso}"))
        .await;
    assert_eq!(ids(&list).len(), 0);
}

const TWO_ENVS: &str =
    "[[environments]]\nkey = \"a\"\nname = \"A\"\n[[environments]]\nkey = \"b\"\nname = \"B\"\n";

/// A read-write key for environment `b`.
async fn key_for_b(app: &common::TestApp) -> String {
    common::create_api_key(&app.pool, "b").await
}

/// Waits until the new key is in the serving snapshot.
async fn wait_for_key(app: &common::TestApp, key: &str) {
    common::eventually(Duration::from_secs(5), || async {
        let (s, _) = app
            .send(Method::GET, "/company-overrides", None, Some(key))
            .await;
        (s == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn overrides_crud_and_environment_scoping() {
    let app = common::spawn_app_with(TWO_ENVS).await;
    let b_key = key_for_b(&app).await;
    wait_for_key(&app, &b_key).await;
    let calls = feature(&app, "api-calls", "event").await;
    let sso = feature(&app, "sso", "boolean").await;
    let acme = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "name": "Acme"}),
        )
        .await;
    let acme_id = acme["id"].as_str().unwrap().to_string();
    let (s, other) = app
        .send(
            Method::POST,
            "/companies",
            Some(&json!({"keys": {"id": "globex"}, "name": "Globex"})),
            Some(&b_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{other}");
    let globex_id = other["data"]["id"].as_str().unwrap().to_string();

    let ov = app
        .create(
            "/company-overrides",
            json!({"company_id": acme_id, "feature_id": calls, "value_type": "numeric",
                   "value_numeric": 500, "note": "pilot", "expiration_date": "2099-01-01T00:00:00Z"}),
        )
        .await;
    let ov_id = ov["id"].as_str().unwrap().to_string();
    assert!(ov_id.starts_with("cmov_"));
    assert_eq!(ov["rule_id"], ov_id);
    assert_eq!(ov["company_id"], acme_id);
    assert_eq!(ov["value_numeric"], 500);
    assert_eq!(ov["metric_period"], "all_time");
    assert_eq!(ov["expiration_date"], "2099-01-01T00:00:00Z");
    assert_eq!(ov["expired_at"], Value::Null);
    assert_eq!(ov["note"], "pilot");
    assert_eq!(ov["notes"][0]["note"], "pilot");
    assert_eq!(ov["company"]["id"], acme_id);
    assert_eq!(ov["company"]["name"], "Acme");
    assert_eq!(ov["company"]["keys"][0]["value"], "acme");
    assert_eq!(ov["feature"]["id"], calls);
    for field in ["environment_id", "created_at", "updated_at", "value_type"] {
        assert!(!ov[field].is_null(), "{field} missing: {ov}");
    }

    // One live override per company and feature.
    let (s, body) = app
        .post(
            "/company-overrides",
            json!({"company_id": acme_id, "feature_id": calls, "value_type": "unlimited"}),
        )
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, &ov_id);

    // Validation and unknown references name the field; nothing is written.
    for (body, status, field) in [
        (
            json!({"company_id": acme_id, "feature_id": sso, "value_type": "numeric", "value_numeric": 3}),
            StatusCode::BAD_REQUEST,
            "value_type",
        ),
        (
            json!({"company_id": acme_id, "feature_id": sso, "value_type": "boolean"}),
            StatusCode::BAD_REQUEST,
            "value_bool",
        ),
        (
            json!({"company_id": acme_id, "feature_id": sso, "value_type": "boolean", "value_bool": true, "expiration_date": "2001-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
            "expiration_date",
        ),
        (
            json!({"company_id": acme_id, "feature_id": sso, "value_type": "boolean", "value_bool": true, "expiration_date": "next week"}),
            StatusCode::BAD_REQUEST,
            "expiration_date",
        ),
        (
            json!({"company_id": "comp_nope", "feature_id": sso, "value_type": "boolean", "value_bool": true}),
            StatusCode::NOT_FOUND,
            "company_id",
        ),
        // A company of another environment does not exist for this key.
        (
            json!({"company_id": globex_id, "feature_id": sso, "value_type": "boolean", "value_bool": true}),
            StatusCode::NOT_FOUND,
            "company_id",
        ),
        (
            json!({"company_id": acme_id, "feature_id": "feat_nope", "value_type": "boolean", "value_bool": true}),
            StatusCode::NOT_FOUND,
            "feature_id",
        ),
    ] {
        let (s, resp) = app.post("/company-overrides", body.clone()).await;
        assert_error(s, &resp, status, field);
    }
    let (_, list) = app.get("/company-overrides").await;
    assert_eq!(ids(&list), vec![ov_id.as_str()]);

    // A negative boolean override; lists filter and come newest first.
    let off = app
        .create(
            "/company-overrides",
            json!({"company_id": acme_id, "feature_id": sso, "value_type": "boolean", "value_bool": false}),
        )
        .await;
    let off_id = off["id"].as_str().unwrap();
    assert_eq!(off["notes"], json!([]));
    let (_, list) = app
        .get(&format!("/company-overrides?company_id={acme_id}"))
        .await;
    assert_eq!(ids(&list), vec![off_id, ov_id.as_str()]);
    let (_, list) = app
        .get(&format!("/company-overrides?feature_id={sso}&limit=10"))
        .await;
    assert_eq!(ids(&list), vec![off_id]);
    assert_eq!(list["params"]["feature_id"], sso);

    // Environment b sees none of environment a's overrides, by list or by id.
    let (s, list) = app
        .send(Method::GET, "/company-overrides", None, Some(&b_key))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&list).len(), 0);
    for method in [Method::GET, Method::DELETE] {
        let (s, _) = app
            .send(
                method,
                &format!("/company-overrides/{ov_id}"),
                None,
                Some(&b_key),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, _) = app
        .send(
            Method::PUT,
            &format!("/company-overrides/{ov_id}"),
            Some(&json!({"value_type": "numeric", "value_numeric": 1})),
            Some(&b_key),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Update: values, note and a later expiry; null leaves the expiry alone.
    let (s, body) = app
        .put(
            &format!("/company-overrides/{ov_id}"),
            json!({"value_type": "numeric", "value_numeric": 750, "note": "extended",
                   "expiration_date": "2100-06-01T12:00:00+02:00"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["value_numeric"], 750);
    assert_eq!(body["data"]["note"], "extended");
    assert_eq!(body["data"]["expiration_date"], "2100-06-01T10:00:00Z");
    let (s, body) = app
        .put(
            &format!("/company-overrides/{ov_id}"),
            json!({"value_type": "numeric", "expiration_date": null, "note": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["expiration_date"], "2100-06-01T10:00:00Z");
    assert_eq!(body["data"]["value_numeric"], 750);
    assert_eq!(body["data"]["notes"], json!([]));
    let (s, body) = app
        .put(
            &format!("/company-overrides/{ov_id}"),
            json!({"value_type": "numeric", "value_numeric": -1}),
        )
        .await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "value_numeric");

    let (s, _) = app.delete(&format!("/company-overrides/{ov_id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app.get(&format!("/company-overrides/{ov_id}")).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, &ov_id);
    // Deleting the company takes its overrides with it.
    let (s, _) = app.delete(&format!("/companies/{acme_id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = app.get("/company-overrides").await;
    assert_eq!(ids(&list).len(), 0);
}

#[tokio::test]
async fn expired_overrides_drop_out_of_lists_but_stay_readable() {
    let app = common::spawn_app().await;
    let calls = feature(&app, "api-calls", "event").await;
    let c = app
        .create("/companies", json!({"keys": {"id": "acme"}}))
        .await;
    let company_id = c["id"].as_str().unwrap().to_string();
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ov = app
        .create(
            "/company-overrides",
            json!({"company_id": company_id, "feature_id": calls, "value_type": "numeric",
                   "value_numeric": 10, "expiration_date": soon}),
        )
        .await;
    let ov_id = ov["id"].as_str().unwrap().to_string();
    let live = format!("/company-overrides?without_expired=true&company_id={company_id}");
    let (_, list) = app.get(&live).await;
    assert_eq!(ids(&list), vec![ov_id.as_str()]);

    // No job runs here: the expiration_date alone takes it out of the live list.
    common::eventually(Duration::from_secs(10), || async {
        let (_, list) = app.get(&live).await;
        list["data"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    let (s, body) = app.get(&format!("/company-overrides/{ov_id}")).await;
    assert_eq!(s, StatusCode::OK, "expired overrides stay readable");
    assert_eq!(body["data"]["expiration_date"], ov["expiration_date"]);
    let (_, all) = app
        .get(&format!("/company-overrides?company_id={company_id}"))
        .await;
    assert_eq!(
        ids(&all),
        vec![ov_id.as_str()],
        "still listed without the filter"
    );
    // History does not change.
    let (s, body) = app
        .put(
            &format!("/company-overrides/{ov_id}"),
            json!({"value_type": "numeric", "expiration_date": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_error(s, &body, StatusCode::CONFLICT, "expired");

    // A new override for the same company and feature replaces the lapsed one.
    let fresh = app
        .create(
            "/company-overrides",
            json!({"company_id": company_id, "feature_id": calls, "value_type": "unlimited"}),
        )
        .await;
    let fresh_id = fresh["id"].as_str().unwrap();
    assert_ne!(fresh_id, ov_id);
    let (_, list) = app.get(&live).await;
    assert_eq!(ids(&list), vec![fresh_id]);
    let (_, old) = app.get(&format!("/company-overrides/{ov_id}")).await;
    assert!(
        old["data"]["expired_at"].is_string(),
        "the lapsed override is marked expired: {old}"
    );
}

#[tokio::test]
async fn readonly_keys_cannot_write() {
    let app = common::spawn_app().await;
    let calls = feature(&app, "api-calls", "event").await;
    let plan = app
        .create("/plans", json!({"name": "Pro", "plan_type": "plan"}))
        .await;
    let plan_id = plan["id"].as_str().unwrap();
    let c = app
        .create("/companies", json!({"keys": {"id": "acme"}}))
        .await;
    let company_id = c["id"].as_str().unwrap();
    let ent = app
        .create(
            "/plan-entitlements",
            json!({"plan_id": plan_id, "feature_id": calls, "value_type": "unlimited"}),
        )
        .await;
    let ov = app
        .create(
            "/company-overrides",
            json!({"company_id": company_id, "feature_id": calls, "value_type": "unlimited"}),
        )
        .await;
    let ro = Some(app.readonly_key.as_str());
    let writes = [
        (
            Method::POST,
            "/plans".to_string(),
            Some(json!({"name": "X", "plan_type": "plan"})),
        ),
        (
            Method::PUT,
            format!("/plans/{plan_id}"),
            Some(json!({"name": "Y"})),
        ),
        (Method::DELETE, format!("/plans/{plan_id}"), None),
        (
            Method::POST,
            "/plan-entitlements".to_string(),
            Some(json!({"plan_id": plan_id, "feature_id": calls, "value_type": "unlimited"})),
        ),
        (
            Method::PUT,
            format!("/plan-entitlements/{}", ent["id"].as_str().unwrap()),
            Some(json!({"value_type": "unlimited"})),
        ),
        (
            Method::DELETE,
            format!("/plan-entitlements/{}", ent["id"].as_str().unwrap()),
            None,
        ),
        (
            Method::POST,
            "/company-overrides".to_string(),
            Some(json!({"company_id": company_id, "feature_id": calls, "value_type": "unlimited"})),
        ),
        (
            Method::PUT,
            format!("/company-overrides/{}", ov["id"].as_str().unwrap()),
            Some(json!({"value_type": "unlimited"})),
        ),
        (
            Method::DELETE,
            format!("/company-overrides/{}", ov["id"].as_str().unwrap()),
            None,
        ),
    ];
    for (method, path, body) in writes {
        let (s, resp) = app.send(method.clone(), &path, body.as_ref(), ro).await;
        assert_error(s, &resp, StatusCode::FORBIDDEN, "readonly");
    }
    // Reads work, and nothing changed.
    for path in ["/plans", "/plan-entitlements", "/company-overrides"] {
        let (s, list) = app.send(Method::GET, path, None, ro).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ids(&list).len(), 1, "{path}");
    }
    let (_, p) = app.get(&format!("/plans/{plan_id}")).await;
    assert_eq!(p["data"]["name"], "Pro");
}
