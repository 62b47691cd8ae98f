//! A fake Stripe API for tests: an axum server on port 0 with in-memory objects, serving
//! them in Stripe's shapes (the objects are stored as given, so tests build them from the
//! `fixtures/stripe/` payloads). Failures can be injected for the next N requests, and every
//! request is logged.
//!
//! Routes: `GET /v1/{customers,products,prices,subscriptions}/{id}`. Later milestones add the
//! list endpoints beside them (`objects` is keyed by collection for that).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A failure to answer instead of the real response.
#[derive(Debug, Clone)]
pub enum Failure {
    /// 429 with `Retry-After: secs`.
    RateLimited { retry_after_secs: u64 },
    /// 500 with Stripe's error body.
    ServerError,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    /// collection ("customers", "subscriptions", …) → id → object.
    objects: HashMap<String, BTreeMap<String, Value>>,
    failures: VecDeque<Failure>,
    log: Vec<Logged>,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub base: String,
    pub api_key: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeStripe {
    pub async fn start(api_key: &str) -> FakeStripe {
        let fake = FakeStripe {
            base: String::new(),
            api_key: api_key.to_string(),
            inner: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/{collection}/{id}", get(retrieve))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeStripe {
            base: format!("http://{addr}"),
            ..fake
        }
    }

    /// Stores (or replaces) an object; its `object` field names the collection.
    pub fn put(&self, object: Value) {
        let collection = match object["object"].as_str() {
            Some("subscription") => "subscriptions",
            Some("customer") => "customers",
            Some("product") => "products",
            Some("price") => "prices",
            other => panic!("fake Stripe does not serve {other:?}"),
        };
        let id = object["id"].as_str().expect("object id").to_string();
        self.lock()
            .objects
            .entry(collection.into())
            .or_default()
            .insert(id, object);
    }

    /// Forgets an object: the API answers 404 for it.
    pub fn remove(&self, collection: &str, id: &str) {
        if let Some(c) = self.lock().objects.get_mut(collection) {
            c.remove(id);
        }
    }

    /// The next `n` requests fail with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut inner = self.lock();
        for _ in 0..n {
            inner.failures.push_back(failure.clone());
        }
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn stripe_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

async fn retrieve(
    State(fake): State<FakeStripe>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut inner = fake.lock();
    let response = if authorization.as_deref() != Some(&format!("Bearer {}", fake.api_key)) {
        stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided",
        )
    } else if let Some(failure) = inner.failures.pop_front() {
        match failure {
            Failure::RateLimited { retry_after_secs } => {
                let mut r = stripe_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "Too many requests hit the API too quickly.",
                );
                r.headers_mut()
                    .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
                r
            }
            Failure::ServerError => stripe_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "An unknown error occurred",
            ),
        }
    } else {
        match inner.objects.get(&collection).and_then(|c| c.get(&id)) {
            Some(object) => Json(object.clone()).into_response(),
            None => stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                &format!("No such {}: '{id}'", collection.trim_end_matches('s')),
            ),
        }
    };
    inner.log.push(Logged {
        method: "GET".into(),
        path: format!("/v1/{collection}/{id}"),
        authorization,
        status: response.status().as_u16(),
    });
    response
}
