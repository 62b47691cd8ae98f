//! One error type for the HTTP API. Every variant has a status; the body is always
//! `{"error": "<message>"}`. Database and internal failures are logged with their cause
//! chain and answered with an opaque message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key: send it in the X-Schematic-Api-Key header")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the database is unavailable; try again")]
    Unavailable(#[source] sqlx::Error),
    /// The database breaker is open: answered without trying Postgres.
    #[error("the database is unavailable; try again")]
    DatabaseDown,
    #[error("internal error")]
    Database(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        AppError::BadRequest(msg.into())
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        AppError::NotFound(format!("{what} {id:?} not found"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable(_) | AppError::DatabaseDown => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Database(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::store::Error> for AppError {
    /// The one place store errors become HTTP statuses.
    fn from(err: crate::store::Error) -> Self {
        use crate::store::Error as S;
        match err {
            S::Invalid(m) => AppError::BadRequest(m),
            S::NotFound(m) => AppError::NotFound(m),
            S::Conflict(m) => AppError::Conflict(m),
            S::Item { index, source } => match AppError::from(*source) {
                // Batches are sent as `events: [...]`: name the item the way it was sent.
                AppError::BadRequest(m) => AppError::BadRequest(format!("events[{index}]: {m}")),
                AppError::NotFound(m) => AppError::NotFound(format!("events[{index}]: {m}")),
                AppError::Conflict(m) => AppError::Conflict(format!("events[{index}]: {m}")),
                other => other,
            },
            S::Unavailable(e) => AppError::Unavailable(e),
            S::Database(e) => AppError::Database(e),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        crate::store::Error::from(err).into()
    }
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        AppError::Internal(err)
    }
}

impl AppError {
    /// Logs database and internal failures with their cause chain (the client gets an
    /// opaque message); counts unavailability.
    pub fn log(&self) {
        match self {
            AppError::Database(e) => tracing::error!(error = ?e, "database error"),
            AppError::Unavailable(e) => {
                crate::metrics::DB_UNAVAILABLE.inc();
                tracing::warn!(error = %e, "database unavailable")
            }
            AppError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            _ => {}
        }
    }
}

/// Marks a response answered 503 because Postgres did not answer (see `api::breaker`).
#[derive(Clone, Copy, Debug)]
pub struct DatabaseUnreachable;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log();
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        if let AppError::Unavailable(_) = self {
            // Tells the route's breaker layer that Postgres was seen unreachable.
            response.extensions_mut().insert(DatabaseUnreachable);
        }
        response
    }
}

impl From<crate::ingest::IngestError> for AppError {
    fn from(err: crate::ingest::IngestError) -> Self {
        match err {
            crate::ingest::IngestError::Store(e) => e.into(),
            e @ crate::ingest::IngestError::Stopped => AppError::Internal(e.into()),
        }
    }
}
