//! `GET /openapi.json` documents every route the router serves, with request and response
//! schemas. Adding a route to `api::routes()` without documenting it fails here.

mod common;

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn document(app: &common::TestApp) -> Value {
    let (status, doc) = app.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "no key needed: {doc}");
    doc
}

#[tokio::test]
async fn every_route_is_documented_and_nothing_else() {
    let app = common::spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let served: BTreeSet<(String, String)> = entitled::api::routes()
        .iter()
        .map(|r| (r.method.as_str().to_lowercase(), r.path.to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(extra.is_empty(), "documented but not served: {extra:?}");
}

#[tokio::test]
async fn operations_carry_schemas_and_security() {
    let app = common::spawn_app().await;
    let doc = document(&app).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // 200, or 202 for what starts in the background (a reconcile run).
            let ok = match &op["responses"]["200"] {
                Value::Null => &op["responses"]["202"],
                ok => ok,
            };
            if path != "/metrics" && method != "head" {
                assert!(
                    ok["content"]["application/json"]["schema"].is_object(),
                    "{method} {path}: no 200 (or 202) JSON schema"
                );
            }
            // Bodiless by design: MCP documents its own protocol; a retry or a reconcile
            // takes no input; nor does rotating a webhook secret.
            let bodiless = [
                "/mcp",
                "/stripe/events/{id}/retry",
                "/stripe/meter-events/{id}/retry",
                "/stripe/reconcile",
                "/webhooks/{id}/rotate-secret",
            ];
            if (method == "post" || method == "put") && !bodiless.contains(&path.as_str()) {
                assert!(
                    op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                    "{method} {path}: no request schema"
                );
            }
        }
    }
    // The upsert body names its fields; the company view is a component.
    let upsert = &doc["paths"]["/companies"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["$ref"];
    assert_eq!(upsert, "#/components/schemas/UpsertCompanyRequestBody");
    assert!(doc["components"]["schemas"]["CompanyView"]["properties"]["keys"].is_object());
    // Key required everywhere but the operations routes.
    assert_eq!(doc["security"][0]["api_key"], serde_json::json!([]));
    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(
            doc["paths"][open]["get"]["security"],
            serde_json::json!([{}]),
            "{open} needs no key"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
}
