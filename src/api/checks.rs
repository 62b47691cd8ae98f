//! Placeholder: being written.
use crate::error::{AppError, AppResult};
use axum::response::Response;
pub async fn check_one() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn check_all() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
