//! Placeholder: being written.
use crate::error::{AppError, AppResult};
use axum::response::Response;
pub async fn list() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn upsert() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn lookup() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn get() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn delete() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
