//! The console's errors, answered as HTML pages (or redirects to sign in).

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::api::error::AppError;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No live session: go and sign in.
    #[error("sign in first")]
    SignIn,
    /// The one-time password must be replaced first.
    #[error("choose a new password first")]
    ChangePassword,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// An error of the API code the console reuses, with its status and message.
    #[error("{0}")]
    Api(AppError),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> Self {
        ConsoleError::Api(AppError::from(e))
    }
}

impl From<crate::store::Error> for ConsoleError {
    fn from(e: crate::store::Error) -> Self {
        ConsoleError::Api(AppError::from(e))
    }
}

impl From<AppError> for ConsoleError {
    fn from(e: AppError) -> Self {
        ConsoleError::Api(e)
    }
}

impl From<askama::Error> for ConsoleError {
    fn from(e: askama::Error) -> Self {
        ConsoleError::Internal(anyhow::anyhow!("rendering a template: {e}"))
    }
}

#[derive(Template)]
#[template(path = "console/bare_error.html")]
struct ErrorPage<'a> {
    status: String,
    message: &'a str,
}

impl ConsoleError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn | ConsoleError::ChangePassword => StatusCode::SEE_OTHER,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Api(e) => e.status(),
            ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match &self {
            ConsoleError::SignIn => return Redirect::to("/console/login").into_response(),
            ConsoleError::ChangePassword => {
                return Redirect::to("/console/password").into_response()
            }
            ConsoleError::Api(e) => e.log(),
            ConsoleError::Internal(e) => tracing::error!(error = ?e, "console internal error"),
            _ => {}
        }
        let status = self.status();
        let message = self.to_string();
        let page = ErrorPage {
            status: format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            message: &message,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("{} {message}", status.as_u16()));
        (status, Html(body)).into_response()
    }
}

pub type ConsoleResult<T> = Result<T, ConsoleError>;
