//! The database breaker at the edge: every route that needs Postgres goes through
//! [`guard`], which answers 503 at once while the breaker is open and tells the breaker when
//! a handler found Postgres unreachable. Routes served from the snapshot (the checks) and
//! the operational ones do not (`Route::without_db` in the route table).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{AppError, DatabaseUnreachable};
use crate::metrics;
use crate::store::breaker::Breaker;

pub async fn guard(State(breaker): State<Arc<Breaker>>, req: Request, next: Next) -> Response {
    if breaker.is_open() {
        metrics::DB_BREAKER_REJECTED.inc();
        return AppError::DatabaseDown.into_response();
    }
    let response = next.run(req).await;
    if response.extensions().get::<DatabaseUnreachable>().is_some() {
        breaker.suspect();
    }
    response
}
