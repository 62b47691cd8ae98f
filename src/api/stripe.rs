//! `POST /webhooks/stripe[/{environment_key}]` (no API key: the signature is the auth),
//! `GET /stripe/events`, `POST /stripe/events/{id}/retry`, `POST /stripe/reconcile`,
//! `GET /stripe/reconcile-runs[/{id}]`.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Auth;
use super::envelope;
use super::extract::{self, Path, Query};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::cache::EnvCache;
use crate::metrics::WEBHOOK_DELIVERIES;
use crate::store::reconcile::{self as runs, Run};
use crate::stripe::objects::EventHead;
use crate::stripe::reconcile::{self, StartError, Trigger};
use crate::stripe::{inbox, signature, worker};

/// `POST /webhooks/stripe`: the default environment.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "stripe", security(()),
    request_body(content = serde_json::Value, description = "A Stripe event, exactly as Stripe signed it"),
    params(("Stripe-Signature" = String, Header, description = "t=…,v1=…")),
    responses((status = 200, description = "Stored in the inbox (or already there)", body = serde_json::Value), (status = 400, description = "Bad signature, timestamp or payload", body = super::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = super::openapi::ErrorBody), (status = 503, description = "Postgres unavailable: Stripe retries", body = super::openapi::ErrorBody)))]
pub async fn webhook_default(State(state): State<AppState>, req: Request) -> Response {
    let Some(env) = state.cache.default_env().cloned() else {
        return AppError::NotFound("no environment is configured".into()).into_response();
    };
    receive(&state, &env, req).await
}

/// `POST /webhooks/stripe/{environment_key}`.
#[utoipa::path(post, path = "/webhooks/stripe/{environment_key}", tag = "stripe", security(()),
    request_body(content = serde_json::Value, description = "A Stripe event, exactly as Stripe signed it"),
    params(("environment_key" = String, Path, description = "An environment's key from the configuration"),
        ("Stripe-Signature" = String, Header, description = "t=…,v1=…")),
    responses((status = 200, description = "Stored in the inbox (or already there)", body = serde_json::Value), (status = 400, description = "Bad signature, timestamp or payload", body = super::openapi::ErrorBody),
        (status = 404, description = "No such environment", body = super::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = super::openapi::ErrorBody), (status = 503, description = "Postgres unavailable: Stripe retries", body = super::openapi::ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Request,
) -> Response {
    let Some(env) = state.cache.env_by_key(&key).cloned() else {
        return AppError::NotFound(format!("no environment with key {key:?}")).into_response();
    };
    receive(&state, &env, req).await
}

#[tracing::instrument(skip_all, fields(env = %env.environment.key, event_id, event_type))]
async fn receive(state: &AppState, env: &EnvCache, req: Request) -> Response {
    let (outcome, result) = store(state, env, req).await;
    WEBHOOK_DELIVERIES.inc(outcome);
    match result {
        Ok(response) => response,
        Err(e) => {
            if outcome == "invalid_signature" || outcome == "invalid_payload" {
                tracing::warn!(error = %e, outcome, "Stripe webhook rejected");
            }
            e.into_response()
        }
    }
}

/// Verify, parse, store. Returns the metrics outcome beside the answer.
async fn store(
    state: &AppState,
    env: &EnvCache,
    req: Request,
) -> (&'static str, AppResult<Response>) {
    let header = req
        .headers()
        .get(signature::HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let body = match extract::read_body(req, state).await {
        Ok(b) => b,
        Err(e) => return ("invalid_payload", Err(e)),
    };
    let config = &env.config;
    let secrets: Vec<&str> = config
        .stripe_webhook_secrets
        .iter()
        .map(|s| s.expose())
        .collect();
    if let Err(e) = signature::verify(
        &body,
        header.as_deref(),
        &secrets,
        config.stripe_webhook_tolerance_secs,
        chrono::Utc::now().timestamp(),
    ) {
        return (
            "invalid_signature",
            Err(AppError::bad_request(format!(
                "invalid Stripe signature: {e}"
            ))),
        );
    }
    let head: EventHead = match extract::parse_json(&body) {
        Ok(h) => h,
        Err(e) => return ("invalid_payload", Err(e)),
    };
    if let Err(e) = validate(&head) {
        return ("invalid_payload", Err(e));
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return (
            "invalid_payload",
            Err(AppError::bad_request("event body is not UTF-8")),
        );
    };
    let Some(created) = chrono::DateTime::from_timestamp(head.created, 0) else {
        return (
            "invalid_payload",
            Err(AppError::bad_request("created: not a valid Unix timestamp")),
        );
    };
    let span = tracing::Span::current();
    span.record("event_id", head.id.as_str());
    span.record("event_type", head.kind.as_str());
    let event = inbox::OwnedEvent {
        environment_id: env.environment.id.clone(),
        id: head.id.clone(),
        kind: head.kind.clone(),
        object_id: head.data.object.id.clone(),
        created,
        livemode: head.livemode,
        api_version: head.api_version.clone(),
        payload: text.to_string(),
    };
    // Acknowledged only once the insert committed; concurrent deliveries share it.
    let inserted = state.stripe.inbox_writer(&state.pool).insert(event).await;
    match inserted {
        Ok(true) => {
            if inbox::is_handled(&head.kind) {
                state.stripe.wake();
            }
            tracing::debug!("Stripe event stored");
            (
                "accepted",
                Ok(
                    axum::Json(json!({"received": true, "id": head.id, "duplicate": false}))
                        .into_response(),
                ),
            )
        }
        Ok(false) => (
            "duplicate",
            Ok(
                axum::Json(json!({"received": true, "id": head.id, "duplicate": true}))
                    .into_response(),
            ),
        ),
        Err(e) => {
            // Never a 500 for a verified event we could not store: Stripe retries on 5xx,
            // and 503 says "try again" rather than "we are broken".
            let e = AppError::from(e);
            let outcome = if matches!(e, AppError::Unavailable(_)) {
                "unavailable"
            } else {
                "error"
            };
            let e = match e {
                AppError::Database(inner) => {
                    tracing::error!(error = ?inner, "cannot store Stripe event");
                    AppError::Unavailable(inner)
                }
                other => other,
            };
            (outcome, Err(e))
        }
    }
}

fn validate(head: &EventHead) -> AppResult<()> {
    if !head.id.starts_with("evt_") || head.id.len() > 255 {
        return Err(AppError::bad_request(format!(
            "id: {:?} is not a Stripe event id (evt_…)",
            head.id
        )));
    }
    if head.kind.is_empty() || head.kind.len() > 255 {
        return Err(AppError::bad_request("type: must be 1 to 255 characters"));
    }
    if head
        .data
        .object
        .id
        .as_ref()
        .is_some_and(|id| id.len() > 255)
    {
        return Err(AppError::bad_request(
            "data.object.id: longer than 255 characters",
        ));
    }
    Ok(())
}

/// `GET /stripe/events?status=&type=&limit=&offset=`.
#[utoipa::path(get, path = "/stripe/events", tag = "stripe",
    params(super::openapi::PageParams, EventListParams),
    responses((status = 200, description = "Inbox rows, newest first", body = super::openapi::Enveloped<Vec<inbox::EventRow>>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let status = query.one_of("status", inbox::STATUSES)?;
    let kind = query.get("type").filter(|s| !s.is_empty());
    let mut conn = state.pool.acquire().await?;
    let rows = inbox::list(
        &mut conn,
        auth.env_id(),
        status,
        kind,
        page.limit,
        page.offset,
    )
    .await?;
    Ok(envelope::ok(rows, query.params(Some(page))))
}

/// `POST /stripe/events/{id}/retry`: applies the event again now, whatever its status, and
/// returns its row. 409 while a worker is applying it.
#[utoipa::path(post, path = "/stripe/events/{id}/retry", tag = "stripe",
    params(("id" = String, Path, description = "A Stripe event id, `evt_…`")),
    responses((status = 200, description = "The event's row after applying it", body = super::openapi::Enveloped<inbox::EventRow>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, event_id = %id))]
pub async fn retry_event(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let row = retry(&state, &auth, &id).await?;
    Ok((StatusCode::OK, envelope::ok_empty(row)).into_response())
}

/// Applies inbox event `id` again now, whatever its status; its row afterwards. The REST
/// retry and the console's both come here.
pub async fn retry(state: &AppState, auth: &Auth, id: &str) -> AppResult<inbox::EventRow> {
    let mut tx = state.pool.begin().await?;
    let event = inbox::claim(&mut tx, auth.env_id(), id).await?;
    worker::process(&state.sync(), tx, event).await?;
    let mut conn = state.pool.acquire().await?;
    inbox::get(&mut conn, auth.env_id(), id)
        .await?
        .ok_or_else(|| AppError::not_found("Stripe event", id))
}

/// Query parameters of `GET /stripe/events` (documentation type).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventListParams {
    /// `pending`, `applied`, `skipped`, `ignored` or `failed`.
    status: Option<String>,
    /// A Stripe event type, e.g. `customer.subscription.updated`.
    #[param(rename = "type")]
    kind: Option<String>,
}

/// `POST /stripe/reconcile`: starts a full reconcile of the key's environment in the
/// background and answers 202 with the run's record; follow it on
/// `GET /stripe/reconcile-runs/{id}`. 409 while a run of the environment is going on (here or
/// on another replica), 422 when the environment has no Stripe API key.
#[utoipa::path(post, path = "/stripe/reconcile", tag = "stripe",
    responses((status = 202, description = "The run, started", body = super::openapi::Enveloped<Run>),
        (status = 409, description = "A run of this environment is already going on", body = super::openapi::ErrorBody),
        (status = 422, description = "Stripe sync is disabled for this environment", body = super::openapi::ErrorBody),
        super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn start_reconcile(State(state): State<AppState>, auth: Auth) -> AppResult<Response> {
    auth.require_write()?;
    let record = reconcile_now(&state, &auth).await?;
    Ok((StatusCode::ACCEPTED, envelope::ok_empty(record)).into_response())
}

/// Starts a full reconcile of the key's environment in the background; the run's record.
/// 409 while a run is going on, 422 without a Stripe API key.
pub async fn reconcile_now(state: &AppState, auth: &Auth) -> AppResult<Run> {
    let sync = state.sync();
    let started = match reconcile::start(&sync, auth.env_id(), Trigger::Api).await {
        Ok(s) => s,
        Err(StartError::Database(e)) => return Err(e.into()),
        Err(e @ StartError::AlreadyRunning { .. }) => {
            return Err(AppError::Conflict(e.to_string()))
        }
        Err(e) => return Err(AppError::Unprocessable(e.to_string())),
    };
    let record = started.record.clone();
    let cancel = state.stripe.shutdown.clone();
    state.stripe.tasks.spawn(async move {
        if let Err(e) = started.run(&sync, &reconcile::Quiet, &cancel).await {
            tracing::error!(error = %e, "reconcile run could not record its outcome");
        }
    });
    Ok(record)
}

/// `GET /stripe/reconcile-runs?status=&limit=&offset=`: the environment's runs, newest first.
#[utoipa::path(get, path = "/stripe/reconcile-runs", tag = "stripe",
    params(super::openapi::PageParams, RunListParams),
    responses((status = 200, description = "Reconcile runs, newest first", body = super::openapi::Enveloped<Vec<Run>>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list_reconcile_runs(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let status = query.get("status").filter(|s| !s.is_empty());
    if let Some(s) = status {
        if !["running", "succeeded", "failed"].contains(&s) {
            return Err(AppError::bad_request(format!(
                "query parameter status: {s:?} is not one of running, succeeded, failed"
            )));
        }
    }
    let mut conn = state.pool.acquire().await?;
    let rows = runs::list_runs(&mut conn, auth.env_id(), status, page.limit, page.offset).await?;
    Ok(envelope::ok(rows, query.params(Some(page))))
}

/// `GET /stripe/reconcile-runs/{id}`.
#[utoipa::path(get, path = "/stripe/reconcile-runs/{id}", tag = "stripe",
    params(("id" = String, Path, description = "A reconcile run id, `rcn_…`")),
    responses((status = 200, description = "The run", body = super::openapi::Enveloped<Run>), super::openapi::Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, run_id = %id))]
pub async fn get_reconcile_run(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.pool.acquire().await?;
    let run = runs::get_run(&mut conn, Some(auth.env_id()), &id)
        .await?
        .ok_or_else(|| AppError::not_found("reconcile run", &id))?;
    Ok((StatusCode::OK, envelope::ok_empty(run)).into_response())
}

/// Query parameters of `GET /stripe/reconcile-runs` (documentation type).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct RunListParams {
    /// `running`, `succeeded` or `failed`.
    status: Option<String>,
}
