//! API key authentication as an extractor: a handler that takes `Auth` cannot forget it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use crate::api::error::AppError;
use crate::api::AppState;
use crate::cache::Grant;

pub const API_KEY_HEADER: &str = "x-schematic-api-key";

/// The caller's environment and permissions: shared with the snapshot's key table, so
/// authenticating a request copies nothing.
#[derive(Clone)]
pub struct Auth(Arc<Grant>);

impl std::ops::Deref for Auth {
    type Target = Grant;
    fn deref(&self) -> &Grant {
        &self.0
    }
}

impl Auth {
    pub fn new(grant: Arc<Grant>) -> Auth {
        Auth(grant)
    }

    pub fn env_id(&self) -> &str {
        &self.env.environment.id
    }

    /// Records the environment in the request's span (declared by the router's middleware).
    pub fn record_in_span(&self) {
        tracing::Span::current().record("env", self.env.environment.key.as_str());
    }

    /// The caller the request's key names, recorded in the request's span.
    pub fn from_headers(headers: &HeaderMap, state: &AppState) -> Result<Auth, AppError> {
        let secret = secret_from(headers).ok_or(AppError::Unauthorized)?;
        let auth = state.authenticate(secret).ok_or(AppError::Unauthorized)?;
        auth.record_in_span();
        Ok(auth)
    }

    /// Every write, events included, needs a non-readonly key.
    pub fn require_write(&self) -> Result<(), AppError> {
        if self.readonly {
            Err(AppError::Forbidden(
                "this API key is readonly: it may only check flags and read".into(),
            ))
        } else {
            Ok(())
        }
    }
}

/// The secret from `X-Schematic-Api-Key` or `Authorization: Bearer`.
pub fn secret_from(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(API_KEY_HEADER) {
        return v.to_str().ok().map(str::trim).filter(|s| !s.is_empty());
    }
    let auth = headers.get(axum::http::header::AUTHORIZATION)?;
    let auth = auth.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|s| !s.is_empty())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Auth::from_headers(&parts.headers, state)
    }
}
