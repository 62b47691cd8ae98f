//! Placeholder: being written.
use crate::error::{AppError, AppResult};
use axum::response::Response;
pub async fn list() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn create() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn get() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn update() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
pub async fn delete() -> AppResult<Response> {
    Err(AppError::NotFound("not yet".into()))
}
