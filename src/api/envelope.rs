//! The `{data, params}` success envelope.

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
pub struct Envelope<D, P = Value> {
    pub data: D,
    pub params: P,
}

/// `200 {"data": data, "params": params}`.
pub fn ok<D: Serialize>(data: D, params: Value) -> Response {
    axum::Json(Envelope { data, params }).into_response()
}

/// `200 {"data": data, "params": {}}`.
pub fn ok_empty<D: Serialize>(data: D) -> Response {
    ok(data, Value::Object(Default::default()))
}

/// `200 {"data": {"deleted": true}, "params": {}}`.
pub fn deleted() -> Response {
    ok_empty(serde_json::json!({ "deleted": true }))
}
