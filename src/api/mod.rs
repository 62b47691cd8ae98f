//! The HTTP API: routes, one file per resource.

pub mod auth;
pub mod checks;
pub mod companies;
pub mod envelope;
pub mod extract;
pub mod features;
pub mod flags;
pub mod health;
pub mod overrides;
pub mod plan_entitlements;
pub mod plans;
pub mod stripe;
pub mod users;
pub mod views;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::app::AppState;
use crate::error::AppError;

/// All routes. Does no I/O.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/companies", get(companies::list).post(companies::upsert))
        .route("/companies/lookup", get(companies::lookup))
        .route(
            "/companies/{id}",
            get(companies::get).delete(companies::delete),
        )
        .route("/company-traits", post(companies::upsert_trait))
        .route("/users", get(users::list).post(users::upsert))
        .route("/users/lookup", get(users::lookup))
        .route("/users/{id}", get(users::get).delete(users::delete))
        .route("/features", get(features::list).post(features::create))
        .route(
            "/features/{id}",
            get(features::get)
                .put(features::update)
                .delete(features::delete),
        )
        .route("/flags", get(flags::list).post(flags::create))
        .route("/flags/check", post(checks::check_all))
        .route(
            "/flags/{id}",
            get(flags::get).put(flags::update).delete(flags::delete),
        )
        .route("/flags/{id}/rules", put(flags::put_rules))
        .route("/flags/{key}/check", post(checks::check_one))
        .route("/plans", get(plans::list).post(plans::create))
        .route(
            "/plans/{id}",
            get(plans::get).put(plans::update).delete(plans::delete),
        )
        .route(
            "/plan-entitlements",
            get(plan_entitlements::list).post(plan_entitlements::create),
        )
        .route(
            "/plan-entitlements/{id}",
            get(plan_entitlements::get)
                .put(plan_entitlements::update)
                .delete(plan_entitlements::delete),
        )
        .route(
            "/company-overrides",
            get(overrides::list).post(overrides::create),
        )
        .route(
            "/company-overrides/{id}",
            get(overrides::get)
                .put(overrides::update)
                .delete(overrides::delete),
        )
        .route("/webhooks/stripe", post(stripe::webhook_default))
        .route("/webhooks/stripe/{environment_key}", post(stripe::webhook))
        .route("/stripe/events", get(stripe::list_events))
        .route("/stripe/events/{id}/retry", post(stripe::retry_event))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

async fn method_not_allowed() -> Response {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"error": "method not allowed on this route"})),
    )
        .into_response()
}

/// One span per request with the route; a metric per status class.
async fn observe(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route
        .as_ref()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let method = req.method().clone();
    let span = tracing::debug_span!("request", %method, route);
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(req), span).await;
    let status = response.status();
    crate::metrics::HTTP_RESPONSES.inc(match status.as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    });
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    }
    response
}
