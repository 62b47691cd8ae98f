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
    Unprocessable(String),
    #[error("the database is unavailable; try again")]
    Unavailable(#[source] sqlx::Error),
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
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Database(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// SQLSTATE codes we act on.
pub mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const NOT_NULL_VIOLATION: &str = "23502";
}

/// The constraint a database error names, when it is a violation of `code`.
pub fn violated_constraint<'e>(err: &'e sqlx::Error, code: &str) -> Option<&'e str> {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(code) => {
            Some(db.constraint().unwrap_or(""))
        }
        _ => None,
    }
}

/// Postgres rejected a value the client sent (SQLSTATE class 22): a 400, named without
/// leaking the database's message.
fn data_exception(err: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?;
    Some(match code.as_ref() {
        // character_not_in_repertoire, untranslatable_character (a \u0000 in JSON)
        "22021" | "22P05" => "text must not contain NUL (\\u0000) characters",
        "22001" => "a text value is too long",
        "22003" => "a number is out of range",
        "22007" | "22008" => "a timestamp is out of range",
        c if c.starts_with("22") => "a value was rejected as invalid",
        _ => return None,
    })
}

/// A connection-level failure: the database is down or unreachable, not the query wrong.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: shutdown; 53: insufficient resources.
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            return AppError::Unavailable(err);
        }
        if violated_constraint(&err, sqlstate::CHECK_VIOLATION).is_some() {
            let c = violated_constraint(&err, sqlstate::CHECK_VIOLATION).unwrap_or("");
            return AppError::BadRequest(format!("value rejected by constraint {c}"));
        }
        if let Some(c) = violated_constraint(&err, sqlstate::FOREIGN_KEY_VIOLATION) {
            let msg = if c.ends_with("_credit_fk") {
                "value_credit_id: no credit type with this id".to_string()
            } else {
                format!("a record this refers to does not exist ({c})")
            };
            return AppError::NotFound(msg);
        }
        if let Some(c) = violated_constraint(&err, sqlstate::UNIQUE_VIOLATION) {
            return AppError::Conflict(format!("conflicts with an existing record ({c})"));
        }
        if let Some(c) = violated_constraint(&err, sqlstate::FOREIGN_KEY_VIOLATION) {
            return AppError::NotFound(format!("refers to a record that does not exist ({c})"));
        }
        if let Some(msg) = data_exception(&err) {
            return AppError::BadRequest(msg.into());
        }
        AppError::Database(err)
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log();
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}
