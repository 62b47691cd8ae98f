//! `/health`, `/ready`, `/metrics`: no API key needed.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::openapi::ErrorBody;
use crate::api::AppState;
use crate::store;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Status {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "The process is up", body = Status)))]
pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// The database is reachable and every migration is applied. While the database breaker is
/// open (Postgres known to be down) the answer is 503 at once.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready to serve", body = Status),
        (status = 503, description = "Postgres unreachable or migrations pending", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let unreachable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "database unreachable"})),
        )
            .into_response()
    };
    if state.db.is_open() {
        return unreachable();
    }
    match store::db::migrations_applied(&state.pool).await {
        Ok(true) => axum::Json(json!({"status": "ready"})).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "migrations are pending; run `entitled migrate`"})),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            if e.is_unavailable() {
                state.db.suspect();
            }
            unreachable()
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Inbox depth by status, read at scrape time (skipped, keeping the last values, when
    // Postgres does not answer within a second).
    let depth = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        store::stripe_inbox::depth(&state.pool),
    )
    .await;
    if let Ok(Ok(rows)) = depth {
        for (status, n) in rows {
            crate::metrics::INBOX_DEPTH.set([status.as_str()], n);
        }
    }
    // The outbound webhook outbox: messages pending delivery and the oldest one's age.
    let (webhook_pending, webhook_oldest) = match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        store::webhooks::queue_depth(&state.pool),
    )
    .await
    {
        Ok(Ok((n, age))) => (n as f64, age),
        _ => (f64::NAN, f64::NAN),
    };
    // The meter-event outbox: rows waiting to be sent to Stripe and the oldest one's age.
    let (meter_pending, meter_oldest) = match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        store::meter_events::queue_depth(&state.pool),
    )
    .await
    {
        Ok(Ok((n, age))) => (n as f64, age),
        _ => (f64::NAN, f64::NAN),
    };
    let pool_size = state.pool.size() as f64;
    let idle = state.pool.num_idle() as f64;
    let companies: usize = state
        .config
        .environments
        .iter()
        .filter_map(|e| state.cache.env_by_key(&e.key))
        .map(|e| e.company_count())
        .sum();
    let body = crate::metrics::render(&[
        (
            "entitled_db_pool_connections",
            "Open database connections.",
            pool_size,
        ),
        ("entitled_db_pool_idle", "Idle database connections.", idle),
        (
            "entitled_db_pool_in_use",
            "Database connections checked out by requests and tasks.",
            (pool_size - idle).max(0.0),
        ),
        (
            "entitled_db_pool_max",
            "Configured maximum database connections.",
            state.config.database.max_connections as f64,
        ),
        (
            "entitled_cache_companies",
            "Companies in the check snapshot.",
            companies as f64,
        ),
        (
            "entitled_webhook_queue_depth",
            "Outbound webhook messages pending delivery (NaN when Postgres did not answer).",
            webhook_pending,
        ),
        (
            "entitled_webhook_oldest_pending_seconds",
            "Age of the oldest outbound webhook message pending delivery.",
            webhook_oldest,
        ),
        (
            "entitled_stripe_meter_events_pending",
            "Meter events waiting to be sent to Stripe (NaN when Postgres did not answer).",
            meter_pending,
        ),
        (
            "entitled_stripe_meter_events_oldest_pending_seconds",
            "Age of the oldest meter event waiting to be sent to Stripe.",
            meter_oldest,
        ),
    ]);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
