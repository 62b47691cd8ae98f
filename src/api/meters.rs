//! Usage billed through Stripe meters: `GET /billing/meters` (the environment's meters as
//! Stripe last described them), and the meter-event outbox: `GET /stripe/meter-events`,
//! `GET /stripe/meter-events/{id}`, `POST /stripe/meter-events/{id}/retry`.

use axum::extract::State;
use axum::response::Response;

use super::auth::Auth;
use super::envelope;
use super::extract::{Path, Query};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::meter_events::{self, Filter, MeterEventRow};
use crate::store::meters::{self, MeterRow};

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct MeterListParams {
    /// `active` or `inactive`.
    status: Option<String>,
}

/// `GET /billing/meters?status=&limit=&offset=`.
#[utoipa::path(get, path = "/billing/meters", tag = "billing",
    params(super::openapi::PageParams, MeterListParams),
    responses((status = 200, description = "Stripe meters mirrored by reconcile and webhooks, newest first", body = super::openapi::Enveloped<Vec<MeterRow>>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list_meters(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let status = query.one_of("status", &["active", "inactive"])?;
    let mut conn = state.pool.acquire().await?;
    let rows = meters::list(&mut conn, auth.env_id(), status, page.limit, page.offset).await?;
    Ok(envelope::ok(rows, query.params(Some(page))))
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct MeterEventListParams {
    /// `pending`, `sent`, `failed` or `expired`.
    status: Option<String>,
    company_id: Option<String>,
    /// A meter id (`mtr_…`).
    meter: Option<String>,
}

/// `GET /stripe/meter-events?status=&company_id=&meter=&limit=&offset=`.
#[utoipa::path(get, path = "/stripe/meter-events", tag = "billing",
    params(super::openapi::PageParams, MeterEventListParams),
    responses((status = 200, description = "Meter events owed to or sent to Stripe, newest first", body = super::openapi::Enveloped<Vec<MeterEventRow>>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list_meter_events(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let param = |name: &str| query.get(name).filter(|s| !s.is_empty());
    let status = query.one_of("status", meter_events::STATUSES)?;
    let filter = Filter {
        id: None,
        status,
        company_id: param("company_id"),
        meter: param("meter"),
    };
    let mut conn = state.pool.acquire().await?;
    let rows =
        meter_events::list(&mut conn, auth.env_id(), &filter, page.limit, page.offset).await?;
    Ok(envelope::ok(rows, query.params(Some(page))))
}

async fn one(state: &AppState, auth: &Auth, id: &str) -> AppResult<MeterEventRow> {
    let filter = Filter {
        id: Some(id),
        ..Filter::default()
    };
    let mut conn = state.pool.acquire().await?;
    meter_events::list(&mut conn, auth.env_id(), &filter, 1, 0)
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found("meter event", id))
}

/// `GET /stripe/meter-events/{id}`.
#[utoipa::path(get, path = "/stripe/meter-events/{id}", tag = "billing",
    params(("id" = String, Path, description = "A meter event id, `mevt_…`")),
    responses((status = 200, description = "The meter event", body = super::openapi::Enveloped<MeterEventRow>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, meter_event_id = %id))]
pub async fn get_meter_event(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    Ok(envelope::ok_empty(one(&state, &auth, &id).await?))
}

/// `POST /stripe/meter-events/{id}/retry`: sends a failed or expired row again (with its
/// own identifier) as soon as a sender is free; 409 for a row Stripe already has.
#[utoipa::path(post, path = "/stripe/meter-events/{id}/retry", tag = "billing",
    params(("id" = String, Path, description = "A meter event id, `mevt_…`")),
    responses((status = 200, description = "The meter event, pending again", body = super::openapi::Enveloped<MeterEventRow>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, meter_event_id = %id))]
pub async fn retry_meter_event(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut tx = state.pool.begin().await?;
    meter_events::retry(&mut tx, auth.env_id(), &id).await?;
    state.commit(tx, &[Change::Outbox]).await?;
    crate::metrics::WRITES.inc("meter_events");
    tracing::info!("meter event retry requested");
    Ok(envelope::ok_empty(one(&state, &auth, &id).await?))
}
