//! Features, flags and flag rules through the real HTTP stack.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Fails unless `obj` has every one of `fields`, none of them null: the SDK's required fields.
fn assert_required(what: &str, obj: &Value, fields: &[&str]) {
    for f in fields {
        assert!(
            obj.get(f).is_some_and(|v| !v.is_null()),
            "{what} lacks required field {f}: {obj}"
        );
    }
}

const FEATURE_REQUIRED: &[&str] = &[
    "created_at",
    "description",
    "event_source",
    "feature_type",
    "flags",
    "icon",
    "id",
    "name",
    "plans",
    "updated_at",
];
const FLAG_REQUIRED: &[&str] = &[
    "created_at",
    "description",
    "id",
    "key",
    "name",
    "rules",
    "updated_at",
];
const RULE_REQUIRED: &[&str] = &[
    "condition_groups",
    "conditions",
    "created_at",
    "environment_id",
    "id",
    "name",
    "priority",
    "rule_type",
    "updated_at",
    "value",
];
const CONDITION_REQUIRED: &[&str] = &[
    "condition_type",
    "created_at",
    "environment_id",
    "id",
    "operator",
    "resource_ids",
    "resources",
    "rule_id",
    "trait_value",
    "updated_at",
];

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("")
}

async fn insert_plan(app: &common::TestApp, id: &str, key: &str) {
    sqlx::query("INSERT INTO plans (id, key, name, plan_type) VALUES ($1, $2, $3, 'plan')")
        .bind(id)
        .bind(key)
        .bind(key.to_uppercase())
        .execute(&app.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn features_of_each_type_get_a_flag_with_their_key() {
    let app = common::spawn_app().await;
    let boolean = app
        .create(
            "/features",
            json!({"name": "Dark Mode", "feature_type": "boolean", "description": "UI theme"}),
        )
        .await;
    assert!(boolean["id"].as_str().unwrap().starts_with("feat_"));
    assert_eq!(boolean["key"], "dark-mode", "key derived from the name");
    assert_eq!(boolean["description"], "UI theme");
    assert_eq!(boolean["event_source"], "track");
    assert_eq!(boolean["plans"], json!([]));
    assert_required("feature", &boolean, FEATURE_REQUIRED);
    let flag = &boolean["flags"][0];
    assert_required("flag", flag, FLAG_REQUIRED);
    assert!(flag["id"].as_str().unwrap().starts_with("flag_"));
    assert_eq!(flag["key"], "dark-mode");
    assert_eq!(flag["name"], "Dark Mode");
    assert_eq!(flag["flag_type"], "boolean");
    assert_eq!(flag["default_value"], false);
    assert_eq!(flag["feature_id"], boolean["id"]);
    assert_eq!(flag["feature"]["key"], "dark-mode");
    assert_eq!(flag["rules"], json!([]));

    // The SDK's shape: no key, a nested flag that names it.
    let event = app
        .create(
            "/features",
            json!({"name": "API calls", "description": "", "feature_type": "event",
                   "event_subtype": "api-call", "trait_id": null,
                   "flag": {"key": "api-calls", "name": "API calls flag", "description": "d",
                            "default_value": true, "flag_type": "boolean"}}),
        )
        .await;
    assert_eq!(event["key"], "api-calls");
    assert_eq!(event["event_subtype"], "api-call");
    assert_eq!(event["flags"][0]["key"], "api-calls");
    assert_eq!(event["flags"][0]["default_value"], true);
    assert_eq!(event["flags"][0]["name"], "API calls flag");

    let trait_feature = app
        .create(
            "/features",
            json!({"name": "Seats", "key": "seats", "feature_type": "trait", "trait_id": "seats_used"}),
        )
        .await;
    assert_eq!(trait_feature["trait_id"], "seats_used");
    assert_eq!(trait_feature["event_subtype"], Value::Null);
    assert_eq!(trait_feature["flags"][0]["key"], "seats");

    // The flag is a flag like any other: listed under /flags and filterable by feature.
    let (s, flags) = app
        .get(&format!(
            "/flags?feature_id={}",
            event["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(flags["data"].as_array().unwrap().len(), 1);
    assert_eq!(flags["data"][0]["key"], "api-calls");
    assert_eq!(flags["data"][0]["feature"]["feature_type"], "event");

    // Lists: newest first, paged, filtered, params echoed.
    let (s, list) = app.get("/features?limit=2").await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["seats", "api-calls"]);
    assert_eq!(list["params"]["limit"], 2);
    assert_eq!(list["params"]["offset"], 0);
    let (_, page2) = app.get("/features?limit=2&offset=2").await;
    assert_eq!(page2["data"][0]["key"], "dark-mode");
    let (_, events) = app.get("/features?feature_type=event").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
    assert_eq!(events["params"]["feature_type"], "event");
    let (_, found) = app.get("/features?q=SEAT").await;
    assert_eq!(found["data"][0]["key"], "seats");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    let ids = format!(
        "/features?ids={}&ids={}",
        boolean["id"].as_str().unwrap(),
        event["id"].as_str().unwrap()
    );
    let (_, some) = app.get(&ids).await;
    assert_eq!(some["data"].as_array().unwrap().len(), 2);
    let (s, body) = app.get("/features?feature_type=license").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("feature_type"), "{body}");
    let (_, all_flags) = app.get("/flags?q=api").await;
    assert_eq!(all_flags["data"].as_array().unwrap().len(), 1);

    // A plan with an entitlement lists under the feature's plans.
    insert_plan(&app, "plan_pro", "pro").await;
    sqlx::query(
        "INSERT INTO plan_entitlements (id, plan_id, feature_id, value_type, value_numeric)
         VALUES ('pltl_1', 'plan_pro', $1, 'numeric', 100)",
    )
    .bind(event["id"].as_str().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let (s, got) = app
        .get(&format!("/features/{}", event["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        got["data"]["plans"],
        json!([{"id": "plan_pro", "name": "PRO", "description": ""}])
    );
}

#[tokio::test]
async fn features_update_and_delete() {
    let app = common::spawn_app().await;
    let f = app
        .create(
            "/features",
            json!({"name": "API calls", "feature_type": "event", "event_subtype": "api-call"}),
        )
        .await;
    let id = f["id"].as_str().unwrap().to_string();
    let flag_id = f["flags"][0]["id"].as_str().unwrap().to_string();

    // Partial update: name changes, the event name stays.
    let (s, body) = app
        .put(&format!("/features/{id}"), json!({"name": "API requests"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], "API requests");
    assert_eq!(body["data"]["event_subtype"], "api-call");
    assert_eq!(body["data"]["key"], "api-calls");

    // Changing type needs the new type's field and drops the old one.
    let (s, body) = app
        .put(&format!("/features/{id}"), json!({"feature_type": "trait"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).starts_with("trait_id"), "{body}");
    let (s, body) = app
        .put(
            &format!("/features/{id}"),
            json!({"feature_type": "trait", "trait_id": "requests_made",
                   "flag": {"default_value": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["feature_type"], "trait");
    assert_eq!(body["data"]["trait_id"], "requests_made");
    assert_eq!(body["data"]["event_subtype"], Value::Null);
    assert_eq!(body["data"]["flags"][0]["default_value"], true);
    assert_eq!(
        body["data"]["flags"][0]["id"], flag_id,
        "same flag, updated"
    );

    // The key is fixed.
    let (s, body) = app
        .put(&format!("/features/{id}"), json!({"key": "other"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).starts_with("key"), "{body}");
    let (s, body) = app.put("/features/feat_nope", json!({"name": "x"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("feat_nope"));

    // Delete takes the flag with it.
    let (s, body) = app.delete(&format!("/features/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"data": {"deleted": true}, "params": {}}));
    let (s, body) = app.get(&format!("/features/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains(&id), "{body}");
    let (s, _) = app.get(&format!("/flags/{flag_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.delete(&format!("/features/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The key is free again.
    app.create(
        "/features",
        json!({"name": "API calls", "feature_type": "boolean"}),
    )
    .await;
}

#[tokio::test]
async fn bad_feature_input_is_named_and_nothing_is_written() {
    let app = common::spawn_app().await;
    let cases = [
        (
            json!({"name": "Calls", "feature_type": "event"}),
            "event_subtype",
        ),
        (
            json!({"name": "Calls", "feature_type": "event", "event_subtype": null}),
            "event_subtype",
        ),
        (
            json!({"name": "Seats", "feature_type": "trait"}),
            "trait_id",
        ),
        (
            json!({"name": "X", "feature_type": "license"}),
            "feature_type",
        ),
        (json!({"name": "X", "feature_type": 3}), "feature_type"),
        (json!({"name": "X"}), "feature_type"),
        (json!({"feature_type": "boolean"}), "name"),
        (
            json!({"name": "X", "feature_type": "boolean", "key": "no spaces"}),
            "key",
        ),
        (
            json!({"name": "X", "feature_type": "boolean", "event_subtype": "e"}),
            "event_subtype",
        ),
        (
            json!({"name": "X", "feature_type": "boolean", "flag": {"flag_type": "string"}}),
            "flag.flag_type",
        ),
    ];
    for (body, field) in cases {
        let (s, resp) = app.post("/features", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {resp}");
        assert!(error_of(&resp).contains(field), "{body} → {resp}");
    }
    let (_, list) = app.get("/features").await;
    assert_eq!(list["data"], json!([]));

    // Duplicate keys conflict, naming the key; a standalone flag's key counts too.
    app.create(
        "/features",
        json!({"name": "Reports", "feature_type": "boolean"}),
    )
    .await;
    let (s, body) = app
        .post(
            "/features",
            json!({"name": "Reports!", "feature_type": "boolean"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("\"reports\""), "{body}");
    app.create(
        "/flags",
        json!({"key": "exports", "name": "Exports", "description": ""}),
    )
    .await;
    let (s, body) = app
        .post(
            "/features",
            json!({"name": "Exports", "feature_type": "boolean"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("\"exports\""), "{body}");
    // The feature insert before the flag's conflict was rolled back.
    let (_, list) = app.get("/features").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn flags_crud() {
    let app = common::spawn_app().await;
    // What the SDK's create_flag sends.
    let flag = app
        .create(
            "/flags",
            json!({"key": "beta", "name": "Beta", "description": "early access", "flag_type": "boolean"}),
        )
        .await;
    assert_required("flag", &flag, FLAG_REQUIRED);
    let id = flag["id"].as_str().unwrap().to_string();
    assert_eq!(flag["default_value"], false);
    assert_eq!(flag["feature"], Value::Null);
    assert_eq!(flag["feature_id"], Value::Null);

    let (s, body) = app
        .put(
            &format!("/flags/{id}"),
            json!({"key": "beta-2", "name": "Beta", "description": "early access",
                   "flag_type": "boolean", "default_value": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["key"], "beta-2");
    assert_eq!(body["data"]["default_value"], true);
    let (_, got) = app.get(&format!("/flags/{id}")).await;
    assert_eq!(got["data"]["key"], "beta-2");
    assert_eq!(got["data"]["description"], "early access");

    let bad = [
        (
            json!({"key": "x", "name": "X", "flag_type": "string"}),
            StatusCode::BAD_REQUEST,
            "flag_type",
        ),
        (json!({"name": "X"}), StatusCode::BAD_REQUEST, "key"),
        (
            json!({"key": "x y", "name": "X"}),
            StatusCode::BAD_REQUEST,
            "key",
        ),
        (json!({"key": "x"}), StatusCode::BAD_REQUEST, "name"),
        (
            json!({"key": "x", "name": "X", "default_value": "yes"}),
            StatusCode::BAD_REQUEST,
            "default_value",
        ),
        (
            json!({"key": "x", "name": "X", "feature_id": "feat_nope"}),
            StatusCode::NOT_FOUND,
            "feature_id",
        ),
        (
            json!({"key": "beta-2", "name": "X"}),
            StatusCode::CONFLICT,
            "beta-2",
        ),
    ];
    for (body, status, field) in bad {
        let (s, resp) = app.post("/flags", body.clone()).await;
        assert_eq!(s, status, "{body} → {resp}");
        assert!(error_of(&resp).contains(field), "{body} → {resp}");
    }

    // A feature has one flag: a second one conflicts; its own flag keeps the feature's key.
    let feature = app
        .create(
            "/features",
            json!({"name": "Exports", "feature_type": "boolean"}),
        )
        .await;
    let feature_id = feature["id"].as_str().unwrap();
    let feature_flag = feature["flags"][0]["id"].as_str().unwrap();
    let (s, body) = app
        .post(
            "/flags",
            json!({"key": "exports-2", "name": "X", "feature_id": feature_id}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("feature_id"), "{body}");
    let (s, body) = app
        .put(
            &format!("/flags/{feature_flag}"),
            json!({"key": "renamed", "name": "Exports"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).starts_with("key"), "{body}");

    // Its flag deleted, the feature can be given another.
    let (s, body) = app.delete(&format!("/flags/{feature_flag}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["deleted"], true);
    let (_, f) = app.get(&format!("/features/{feature_id}")).await;
    assert_eq!(f["data"]["flags"], json!([]));
    let replacement = app
        .create(
            "/flags",
            json!({"key": "exports", "name": "Exports", "description": "", "feature_id": feature_id}),
        )
        .await;
    assert_eq!(replacement["feature"]["id"], feature_id);
    let (_, f) = app.get(&format!("/features/{feature_id}")).await;
    assert_eq!(f["data"]["flags"][0]["id"], replacement["id"]);

    let (s, body) = app.get("/flags/flag_nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("flag_nope"));
    let (s, _) = app.delete("/flags/flag_nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/flags").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rules_are_replaced_and_shown() {
    let app = common::spawn_app().await;
    insert_plan(&app, "plan_pro", "pro").await;
    let feature = app
        .create(
            "/features",
            json!({"name": "Reports", "feature_type": "boolean"}),
        )
        .await;
    let flag_id = feature["flags"][0]["id"].as_str().unwrap().to_string();
    let rules_path = format!("/flags/{flag_id}/rules");

    // The SDK's update_flag_rules body, rules out of priority order.
    let (s, body) = app
        .put(
            &rules_path,
            json!({"rules": [
                {"name": "big accounts", "priority": 2, "value": true, "rule_type": "standard",
                 "conditions": [{"condition_type": "plan", "operator": "eq", "resource_ids": ["plan_pro"]}],
                 "condition_groups": [{"conditions": [
                    {"condition_type": "trait", "operator": "gte", "resource_ids": [],
                     "trait_id": "seats", "trait_value": "10"},
                    {"condition_type": "metric", "operator": "lt", "resource_ids": [],
                     "event_subtype": "api-call", "metric_value": 1000, "metric_period": "current_month"}]}]},
                {"name": "staff", "priority": 1, "value": true,
                 "conditions": [{"condition_type": "company", "operator": "eq", "resource_ids": ["comp_staff"]}],
                 "condition_groups": []},
                {"name": "kill switch", "priority": 0, "value": false, "rule_type": "global_override",
                 "conditions": [], "condition_groups": []}
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["params"], json!({}));
    let rules = body["data"]["rules"].as_array().unwrap();
    assert_eq!(body["data"]["flag"]["id"], flag_id.as_str());
    let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["kill switch", "staff", "big accounts"],
        "by priority"
    );
    for r in rules {
        assert_required("rule", r, RULE_REQUIRED);
        assert!(r["id"].as_str().unwrap().starts_with("rule_"));
        assert_eq!(r["flag_id"], flag_id.as_str());
        assert!(r["environment_id"].as_str().unwrap().starts_with("env_"));
    }
    assert_eq!(rules[0]["rule_type"], "global_override");
    assert_eq!(rules[0]["value"], false);
    let staff = &rules[1]["conditions"][0];
    assert_required("condition", staff, CONDITION_REQUIRED);
    assert_eq!(staff["condition_type"], "company");
    assert_eq!(staff["resource_ids"], json!(["comp_staff"]));
    assert_eq!(staff["trait_value"], "");
    assert_eq!(staff["rule_id"], rules[1]["id"]);
    let big = &rules[2];
    assert_eq!(big["conditions"][0]["condition_type"], "plan");
    let group = &big["condition_groups"][0];
    assert_required(
        "condition group",
        group,
        &[
            "conditions",
            "created_at",
            "environment_id",
            "id",
            "rule_id",
            "updated_at",
        ],
    );
    let trait_condition = &group["conditions"][0];
    assert_required("condition", trait_condition, CONDITION_REQUIRED);
    assert_eq!(trait_condition["trait_id"], "seats");
    assert_eq!(trait_condition["trait_value"], "10");
    assert_eq!(trait_condition["operator"], "gte");
    assert_eq!(trait_condition["condition_group_id"], group["id"]);
    let metric = &group["conditions"][1];
    assert_eq!(metric["event_subtype"], "api-call");
    assert_eq!(metric["metric_value"], 1000);
    assert_eq!(metric["metric_period"], "current_month");

    // GET on the flag and on its feature show the same rules.
    let (_, flag) = app.get(&format!("/flags/{flag_id}")).await;
    assert_eq!(flag["data"]["rules"], body["data"]["rules"]);
    let feature_id = feature["id"].as_str().unwrap();
    let (_, f) = app.get(&format!("/features/{feature_id}")).await;
    assert_eq!(f["data"]["flags"][0]["rules"], body["data"]["rules"]);

    // Replacing is wholesale: a new set drops the old one.
    let (s, body) = app
        .put(
            &rules_path,
            json!({"rules": [{"name": "only", "priority": 5, "value": true,
                              "conditions": [{"condition_type": "base_plan", "operator": "ne",
                                              "resource_ids": ["plan_pro"]}],
                              "condition_groups": []}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, flag) = app.get(&format!("/flags/{flag_id}")).await;
    let rules = flag["data"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["name"], "only");
    assert_eq!(rules[0]["conditions"][0]["operator"], "ne");
    let (s, body) = app.put(&rules_path, json!({"rules": []})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["rules"], json!([]));
    let (_, flag) = app.get(&format!("/flags/{flag_id}")).await;
    assert_eq!(flag["data"]["rules"], json!([]));
}

#[tokio::test]
async fn invalid_rules_are_named_and_change_nothing() {
    let app = common::spawn_app().await;
    let flag = app
        .create("/flags", json!({"key": "beta", "name": "Beta"}))
        .await;
    let flag_id = flag["id"].as_str().unwrap().to_string();
    let rules_path = format!("/flags/{flag_id}/rules");
    let keep = json!({"rules": [{"name": "keep", "priority": 1, "value": true,
        "conditions": [{"condition_type": "company", "operator": "eq", "resource_ids": ["comp_1"]}],
        "condition_groups": []}]});
    let (s, _) = app.put(&rules_path, keep).await;
    assert_eq!(s, StatusCode::OK);

    let company =
        json!({"condition_type": "company", "operator": "eq", "resource_ids": ["comp_1"]});
    let rule = |conditions: Value| {
        json!({"rules": [{"name": "r", "priority": 1, "value": true,
                          "conditions": conditions, "condition_groups": []}]})
    };
    let cases = [
        (
            rule(
                json!([company, {"condition_type": "trait", "operator": "contains",
                                  "trait_id": "t", "trait_value": "x"}]),
            ),
            StatusCode::BAD_REQUEST,
            "rules[0].conditions[1].operator",
        ),
        (
            rule(json!([{"condition_type": "company", "operator": "eq", "resource_ids": []}])),
            StatusCode::BAD_REQUEST,
            "rules[0].conditions[0].resource_ids",
        ),
        (
            rule(json!([{"condition_type": "plan", "operator": "gt", "resource_ids": ["plan_x"]}])),
            StatusCode::BAD_REQUEST,
            "rules[0].conditions[0].operator",
        ),
        (
            rule(
                json!([{"condition_type": "billing_product", "operator": "eq", "resource_ids": ["x"]}]),
            ),
            StatusCode::BAD_REQUEST,
            "rules[0].conditions[0].condition_type",
        ),
        (
            rule(json!([{"condition_type": "trait", "operator": "eq", "trait_value": "x"}])),
            StatusCode::BAD_REQUEST,
            "rules[0].conditions[0].trait_id",
        ),
        (
            rule(json!([company, {"condition_type": "plan", "operator": "eq",
                                  "resource_ids": ["plan_missing"]}])),
            StatusCode::NOT_FOUND,
            "rules[0].conditions[1].resource_ids: plan \"plan_missing\" not found",
        ),
        (
            json!({"rules": [{"name": "r", "priority": 1, "value": true, "conditions": [],
                "condition_groups": [{"conditions": [{"condition_type": "metric", "operator": "gt",
                                                      "metric_value": 5}]}]}]}),
            StatusCode::BAD_REQUEST,
            "rules[0].condition_groups[0].conditions[0].event_subtype",
        ),
        (
            json!({"rules": [{"name": "r", "priority": 1, "value": true, "rule_type": "plan_entitlement",
                              "conditions": [], "condition_groups": []}]}),
            StatusCode::BAD_REQUEST,
            "rules[0].rule_type",
        ),
        (
            json!({"rules": [{"name": "r", "priority": 1, "conditions": []}]}),
            StatusCode::BAD_REQUEST,
            "value",
        ),
        (
            json!({"rules": [{"name": "r", "priority": "high", "value": true}]}),
            StatusCode::BAD_REQUEST,
            "rules[0].priority",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "rules"),
    ];
    for (body, status, field) in cases {
        let (s, resp) = app.put(&rules_path, body.clone()).await;
        assert_eq!(s, status, "{body} → {resp}");
        assert!(error_of(&resp).contains(field), "{body} → {resp}");
    }
    // Every failure left the earlier rules in place.
    let (_, got) = app.get(&format!("/flags/{flag_id}")).await;
    let rules = got["data"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["name"], "keep");

    let (s, body) = app
        .put("/flags/flag_nope/rules", json!({"rules": []}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("flag_nope"));
}

#[tokio::test]
async fn readonly_keys_read_but_never_write() {
    let app = common::spawn_app().await;
    let feature = app
        .create(
            "/features",
            json!({"name": "Reports", "feature_type": "boolean"}),
        )
        .await;
    let feature_id = feature["id"].as_str().unwrap();
    let flag_id = feature["flags"][0]["id"].as_str().unwrap();
    let ro = Some(app.readonly_key.as_str());
    let writes = [
        (
            Method::POST,
            "/features".to_string(),
            Some(json!({"name": "X", "feature_type": "boolean"})),
        ),
        (
            Method::PUT,
            format!("/features/{feature_id}"),
            Some(json!({"name": "X"})),
        ),
        (Method::DELETE, format!("/features/{feature_id}"), None),
        (
            Method::POST,
            "/flags".to_string(),
            Some(json!({"key": "x", "name": "X"})),
        ),
        (
            Method::PUT,
            format!("/flags/{flag_id}"),
            Some(json!({"key": "reports", "name": "X", "default_value": true})),
        ),
        (
            Method::PUT,
            format!("/flags/{flag_id}/rules"),
            Some(json!({"rules": []})),
        ),
        (Method::DELETE, format!("/flags/{flag_id}"), None),
    ];
    for (method, path, body) in writes {
        let (s, resp) = app.send(method.clone(), &path, body.as_ref(), ro).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} → {resp}");
        assert!(error_of(&resp).contains("readonly"), "{resp}");
    }
    // Nothing changed, and reads work with the readonly key.
    let (s, got) = app
        .send(Method::GET, &format!("/features/{feature_id}"), None, ro)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["data"]["name"], "Reports");
    assert_eq!(got["data"]["flags"][0]["default_value"], false);
    let (s, list) = app.send(Method::GET, "/flags", None, ro).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // And no key at all is a 401.
    let (s, _) = app.send(Method::GET, "/features", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
