//! `GET /datastream`: authenticates the key, admits the connection under its key's limit,
//! and hands the upgraded socket to `crate::datastream`.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::api::auth::API_KEY_HEADER;
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;

/// Upgrades to the SDKs' datastream: 401 without a valid `X-Schematic-Api-Key`, 429 when
/// the key has `datastream.max_connections_per_key` connections open, 400 when the request
/// is not a WebSocket upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> AppResult<Response> {
    let secret = headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(AppError::Unauthorized)?;
    let auth = state.authenticate(secret).ok_or(AppError::Unauthorized)?;
    let ws = ws.map_err(|e| {
        AppError::bad_request(format!(
            "GET /datastream is a WebSocket endpoint: {}",
            e.body_text()
        ))
    })?;
    let slot = state.datastream.admit(&auth.key_id).ok_or_else(|| {
        AppError::TooManyRequests(format!(
            "this API key already has {} datastream connections open (datastream.max_connections_per_key)",
            state.config.datastream.max_connections_per_key
        ))
    })?;
    let hub = state.datastream.clone();
    let env = auth.env.clone();
    Ok(ws
        .on_upgrade(move |socket| async move { hub.serve(socket, env, slot) })
        .into_response())
}
