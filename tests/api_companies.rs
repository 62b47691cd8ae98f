//! Companies and traits through the real HTTP stack.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn upsert_lookup_get_delete() {
    let app = common::spawn_app().await;
    let c = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme"}, "name": "Acme", "traits": {"seats": 3}}),
        )
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("comp_"));
    assert_eq!(c["name"], "Acme");
    assert_eq!(c["keys"][0]["key"], "id");
    assert_eq!(c["keys"][0]["value"], "acme");
    assert_eq!(c["traits"]["seats"], 3);

    // Same keys → same company, name updated, traits merged, a new key added.
    let again = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme", "domain": "acme.test"}, "name": "Acme Inc", "traits": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(again["id"], id);
    assert_eq!(again["name"], "Acme Inc");
    assert_eq!(again["traits"], json!({"seats": 3, "tier": "gold"}));
    assert_eq!(again["keys"].as_array().unwrap().len(), 2);

    let (s, found) = app.get("/companies/lookup?keys[domain]=acme.test").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(found["data"]["id"], id);
    // The Node SDK's JSON form.
    let (s, found) = app
        .get("/companies/lookup?keys=%7B%22id%22%3A%22acme%22%7D")
        .await;
    assert_eq!(s, StatusCode::OK, "{found}");
    assert_eq!(found["data"]["id"], id);

    let (s, list) = app.get("/companies?limit=10").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["params"]["limit"], 10);

    let (s, _) = app.delete(&format!("/companies/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app.get(&format!("/companies/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains(&id));
}

#[tokio::test]
async fn keys_of_two_companies_conflict_and_nothing_is_written() {
    let app = common::spawn_app().await;
    app.create("/companies", json!({"keys": {"id": "a"}, "name": "A"}))
        .await;
    app.create("/companies", json!({"keys": {"id": "b"}, "name": "B"}))
        .await;
    let (s, body) = app
        .post(
            "/companies",
            json!({"keys": {"id": "a", "other": "x"}, "name": "changed"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "one match: a gets the new key");
    assert_eq!(body["data"]["name"], "changed");
    // Keys naming two different companies → 409, and neither changes.
    let (s, body) = app
        .post(
            "/companies",
            json!({"keys": {"id": "b", "other": "x"}, "name": "zzz"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("more than one company"));
    let (_, b) = app.get("/companies/lookup?keys[id]=b").await;
    assert_eq!(b["data"]["name"], "B");
}

#[tokio::test]
async fn bad_input_is_named() {
    let app = common::spawn_app().await;
    let cases = [
        (json!({"name": "x"}), "keys"),
        (json!({"keys": {}}), "keys"),
        (json!({"keys": {"id": ["x"]}}), "keys.id"),
        (json!({"keys": {"id": "x"}, "traits": [1]}), "traits"),
        (
            json!({"keys": {"id": "x"}, "base_plan_id": "plan_nope"}),
            "base_plan_id",
        ),
    ];
    for (body, field) in cases {
        let (s, resp) = app.post("/companies", body.clone()).await;
        assert!(s.is_client_error(), "{body} → {s}");
        assert!(
            resp["error"].as_str().unwrap().contains(field),
            "{body} → {resp}"
        );
    }
    // Nothing was half-written: the base_plan_id failure rolled back the company.
    let (_, list) = app.get("/companies").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // Malformed JSON.
    let resp = app
        .client
        .post(format!("{}/companies", app.base))
        .header("X-Schematic-Api-Key", &app.key)
        .header("content-type", "application/json")
        .body("{\"keys\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    // Over the body limit → 413.
    let big = "x".repeat(app.config.server.body_limit_bytes + 1);
    let (s, body) = app.post("/companies", json!({"keys": {"id": big}})).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn auth_and_readonly_keys() {
    let app = common::spawn_app().await;
    let (s, body) = app.send(Method::GET, "/companies", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("X-Schematic-Api-Key"));
    let (s, _) = app
        .send(Method::GET, "/companies", None, Some("sch_wrong"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Bearer works too.
    let resp = app
        .client
        .get(format!("{}/companies", app.base))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Readonly keys read but never write.
    let (s, _) = app
        .send(Method::GET, "/companies", None, Some(&app.readonly_key))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app
        .send(
            Method::POST,
            "/companies",
            Some(&json!({"keys": {"id": "x"}})),
            Some(&app.readonly_key),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body["error"].as_str().unwrap().contains("readonly"));
    // Health needs no key.
    let (s, _) = app.send(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn traits_set_and_incr() {
    let app = common::spawn_app().await;
    app.create("/companies", json!({"keys": {"id": "t"}})).await;
    let c = app
        .create(
            "/company-traits",
            json!({"keys": {"id": "t"}, "trait": "seats", "incr": 2}),
        )
        .await;
    assert_eq!(c["traits"]["seats"], 2);
    let c = app
        .create(
            "/company-traits",
            json!({"keys": {"id": "t"}, "trait": "seats", "incr": 3}),
        )
        .await;
    assert_eq!(c["traits"]["seats"], 5);
    let c = app
        .create(
            "/company-traits",
            json!({"keys": {"id": "t"}, "trait": "tier", "set": "gold"}),
        )
        .await;
    assert_eq!(c["traits"]["tier"], "gold");
    let (s, body) = app
        .post(
            "/company-traits",
            json!({"keys": {"id": "t"}, "trait": "tier", "incr": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not a number"),
        "{body}"
    );
    let (s, _) = app
        .post(
            "/company-traits",
            json!({"keys": {"id": "t"}, "trait": "x", "set": 1, "incr": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A trait number that would not read back as a 64-bit float is refused by name, and
/// nothing is written.
#[tokio::test]
async fn trait_numbers_out_of_range_are_named() {
    let app = common::spawn_app().await;
    let (s, body) = app
        .post(
            "/companies",
            serde_json::json!({"keys": {"id": "huge"}, "traits": {"big": 1e301}}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("traits.big:"),
        "{body}"
    );
    let (s, _) = app.get("/companies/lookup?keys[id]=huge").await;
    assert_eq!(s, reqwest::StatusCode::NOT_FOUND);
}
