//! Outbound webhook endpoints and their messages, in Schematic's shapes (the SDK's
//! `webhooks` client): `GET/POST /webhooks`, `GET /webhooks/count`,
//! `GET/PUT/DELETE /webhooks/{id}`, `POST /webhooks/{id}/test`,
//! `POST /webhooks/{id}/rotate-secret`, `GET /webhook-events[/count|/{id}]`.
//! Endpoints belong to the key's environment.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Auth;
use super::envelope;
use super::extract::{Json, Path, Query};
use super::openapi::{Deleted, Enveloped, Errors};
use super::resource::{self, Edit};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::outbound::{self, sign, target, Event};
use crate::store::webhooks::{self as store, EventFilter, WebhookFields, WebhookRow};

/// An endpoint (`WebhookResponseData`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub name: String,
    pub url: String,
    pub request_types: Vec<String>,
    /// `active` or `inactive`.
    pub status: String,
    /// `whsec_…`: verify deliveries with it.
    pub secret: String,
    #[schema(value_type = Vec<Object>)]
    pub entitlement_trigger_configs: Value,
    #[schema(value_type = Vec<Object>)]
    pub credit_trigger_configs: Value,
    /// Why entitled disabled the endpoint (410 Gone, a high failure rate), if it did.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookRow> for WebhookView {
    fn from(r: WebhookRow) -> Self {
        WebhookView {
            id: r.id,
            name: r.name,
            url: r.url,
            request_types: r.request_types,
            status: r.status,
            secret: r.secret,
            entitlement_trigger_configs: r.entitlement_trigger_configs.0,
            credit_trigger_configs: r.credit_trigger_configs.0,
            disabled_reason: r.disabled_reason,
            disabled_at: r.disabled_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

resource::resource!(Webhooks: WebhookView, "webhook", "webhooks", None,
    |conn, _state, auth, id| {
        Ok(store::find(conn, auth.env_id(), id)
            .await?
            .map(WebhookView::from))
    }
);

/// `POST /webhooks`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateWebhookRequestBody)]
#[schema(example = json!({"name": "Slack relay", "url": "https://hooks.example.com/entitled", "request_types": ["company.plan_changed", "company.override.created"]}))]
pub struct CreateBody {
    name: String,
    url: String,
    request_types: Vec<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    entitlement_trigger_configs: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    credit_trigger_configs: Option<Value>,
}

/// `PUT /webhooks/{id}`: absent fields keep their value.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdateWebhookRequestBody)]
#[schema(example = json!({"status": "inactive"}))]
pub struct UpdateBody {
    name: Option<String>,
    url: Option<String>,
    request_types: Option<Vec<String>>,
    /// `active` or `inactive`.
    status: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    entitlement_trigger_configs: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    credit_trigger_configs: Option<Value>,
}

/// Validates the fields, naming the one at fault.
async fn validate(state: &AppState, f: &WebhookFields) -> AppResult<()> {
    if f.name.trim().is_empty() || f.name.chars().count() > 255 {
        return Err(AppError::bad_request("name: must be 1 to 255 characters"));
    }
    let url = target::validate_url(&f.url).map_err(AppError::BadRequest)?;
    if !state.config.webhooks.allow_private_targets {
        target::check_public(&url)
            .await
            .map_err(AppError::BadRequest)?;
    }
    if f.request_types.is_empty() {
        return Err(AppError::bad_request(
            "request_types: name at least one request type",
        ));
    }
    for (i, t) in f.request_types.iter().enumerate() {
        if !outbound::REQUEST_TYPES.contains(&t.as_str()) {
            return Err(AppError::BadRequest(format!(
                "request_types[{i}]: {t:?} is not a webhook request type (e.g. company.plan_changed, company.override.created, entitlement.limit.reached)"
            )));
        }
    }
    if f.status != "active" && f.status != "inactive" {
        return Err(AppError::BadRequest(format!(
            "status: {:?} is not active or inactive",
            f.status
        )));
    }
    trigger_configs(
        "entitlement_trigger_configs",
        "feature_id",
        &f.entitlement_trigger_configs,
    )?;
    trigger_configs(
        "credit_trigger_configs",
        "credit_id",
        &f.credit_trigger_configs,
    )?;
    Ok(())
}

/// `[{<id_field>: "…"}, …]`.
fn trigger_configs(field: &str, id_field: &str, v: &Value) -> AppResult<()> {
    let Some(items) = v.as_array() else {
        return Err(AppError::BadRequest(format!("{field}: must be a list")));
    };
    for (i, item) in items.iter().enumerate() {
        let named = item
            .get(id_field)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if !named {
            return Err(AppError::BadRequest(format!(
                "{field}[{i}].{id_field}: required (a string)"
            )));
        }
    }
    Ok(())
}

/// `q` of the endpoint lists: a pattern matching the name or URL anywhere.
fn name_or_url(query: &Query) -> Option<String> {
    query
        .get("q")
        .filter(|s| !s.is_empty())
        .map(crate::store::catalog::contains_pattern)
}

#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    params(super::openapi::PageParams, WebhookListParams),
    responses((status = 200, description = "Endpoints, newest first", body = Enveloped<Vec<WebhookView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let q = name_or_url(&query);
    let mut conn = state.pool.acquire().await?;
    let rows = store::list(
        &mut conn,
        auth.env_id(),
        q.as_deref(),
        page.limit,
        page.offset,
    )
    .await?;
    let data: Vec<WebhookView> = rows.into_iter().map(Into::into).collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/webhooks/count", tag = "webhooks",
    params(WebhookListParams),
    responses((status = 200, description = "How many endpoints the environment has", body = Enveloped<Value>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn count(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let q = name_or_url(&query);
    let mut conn = state.pool.acquire().await?;
    let n = store::count(&mut conn, auth.env_id(), q.as_deref()).await?;
    Ok(envelope::ok(json!({ "count": n }), query.params(None)))
}

#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = CreateBody,
    responses((status = 200, description = "The endpoint, created, with its secret", body = Enveloped<WebhookView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let fields = WebhookFields {
        name: body.name.trim().to_string(),
        url: body.url,
        request_types: body.request_types,
        status: "active".into(),
        entitlement_trigger_configs: body.entitlement_trigger_configs.unwrap_or(json!([])),
        credit_trigger_configs: body.credit_trigger_configs.unwrap_or(json!([])),
    };
    validate(&state, &fields).await?;
    let mut edit = Edit::<Webhooks>::begin(&state, &auth).await?;
    let row = store::insert(&mut edit.tx, auth.env_id(), &fields, &sign::new_secret()).await?;
    edit.commit(Some(&row.id), vec![Change::Webhooks]).await?;
    tracing::info!(webhook_id = %row.id, url = %row.url, "webhook endpoint created");
    Ok(envelope::ok_empty(WebhookView::from(row)))
}

#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "A webhook id, `whk_…`")),
    responses((status = 200, description = "The endpoint", body = Enveloped<WebhookView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, webhook_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Webhooks>(&state, &auth, &id).await
}

#[utoipa::path(put, path = "/webhooks/{id}", tag = "webhooks", request_body = UpdateBody,
    params(("id" = String, Path, description = "A webhook id, `whk_…`")),
    responses((status = 200, description = "The endpoint, updated", body = Enveloped<WebhookView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, webhook_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<UpdateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Webhooks>::of(&state, &auth, &id).await?;
    let current = store::get(&mut edit.tx, auth.env_id(), &id).await?;
    let was_active = current.status == "active";
    let fields = WebhookFields {
        name: body
            .name
            .map(|n| n.trim().to_string())
            .unwrap_or(current.name),
        url: body.url.unwrap_or(current.url),
        request_types: body.request_types.unwrap_or(current.request_types),
        status: body.status.unwrap_or(current.status),
        entitlement_trigger_configs: body
            .entitlement_trigger_configs
            .unwrap_or(current.entitlement_trigger_configs.0),
        credit_trigger_configs: body
            .credit_trigger_configs
            .unwrap_or(current.credit_trigger_configs.0),
    };
    validate(&state, &fields).await?;
    let reactivated = !was_active && fields.status == "active";
    let row = store::update(&mut edit.tx, auth.env_id(), &id, &fields).await?;
    // An endpoint made active again has the messages it held: wake the delivery workers
    // rather than leave them to the next poll.
    let mut changes = vec![Change::Webhooks];
    if reactivated {
        changes.push(Change::Outbox);
    }
    edit.commit(Some(&id), changes).await?;
    Ok(envelope::ok_empty(WebhookView::from(row)))
}

#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "A webhook id, `whk_…`")),
    responses((status = 200, description = "Deleted, with its messages", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, webhook_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Webhooks>::of(&state, &auth, &id).await?;
    store::delete(&mut edit.tx, auth.env_id(), &id).await?;
    edit.commit(None, vec![Change::Webhooks]).await?;
    Ok(envelope::deleted())
}

/// `POST /webhooks/{id}/rotate-secret`: a new secret; the old one keeps signing beside it
/// (Standard Webhooks' `webhook-signature` carries both) for 24 hours.
#[utoipa::path(post, path = "/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "A webhook id, `whk_…`")),
    responses((status = 200, description = "The endpoint with its new secret", body = Enveloped<WebhookView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, webhook_id = %id))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Webhooks>::of(&state, &auth, &id).await?;
    let keep_until = Utc::now() + chrono::Duration::hours(24);
    let row = store::rotate_secret(
        &mut edit.tx,
        auth.env_id(),
        &id,
        &sign::new_secret(),
        keep_until,
    )
    .await?;
    edit.commit(Some(&id), vec![Change::Webhooks]).await?;
    tracing::info!("webhook secret rotated; the previous one signs for 24 hours more");
    Ok(envelope::ok_empty(WebhookView::from(row)))
}

/// `POST /webhooks/{id}/test`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TestWebhookRequestBody)]
pub struct TestBody {
    /// The request type the test stands for; the message's type is `test.send`.
    request_type: Option<String>,
}

/// `POST /webhooks/{id}/test`: queues a `test.send` message for the endpoint (whatever it
/// subscribes to) and waits up to the delivery timeout for its first attempt, answering how
/// it went (`TestWebhookResponseData`). The delivery itself is the outbox's, recorded like
/// any other under `/webhook-events`.
#[utoipa::path(post, path = "/webhooks/{id}/test", tag = "webhooks", request_body = TestBody,
    params(("id" = String, Path, description = "A webhook id, `whk_…`")),
    responses((status = 200, description = "How the first attempt went", body = Enveloped<Value>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, webhook_id = %id))]
pub async fn test(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<TestBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    if let Some(t) = &body.request_type {
        if !outbound::REQUEST_TYPES.contains(&t.as_str()) {
            return Err(AppError::BadRequest(format!(
                "request_type: {t:?} is not a webhook request type"
            )));
        }
    }
    let mut tx = state.begin().await?;
    let hook = store::get(&mut tx, auth.env_id(), &id).await?;
    let message_id = crate::ids::new_sortable_id(crate::ids::prefix::WEBHOOK_MESSAGE);
    let event = Event::new(
        "test.send",
        json!({"webhook_id": hook.id, "request_type": body.request_type}),
    );
    let payload = outbound::body(&message_id, &auth.env.environment.key, &event);
    let event_id = store::enqueue_for(
        &mut tx,
        auth.env_id(),
        &hook.id,
        &store::Message {
            id: &message_id,
            request_type: "test.send",
            payload: &payload,
            feature_id: None,
            credit_id: None,
        },
    )
    .await?;
    state.commit(tx, &[Change::Outbox]).await?;
    // Wait for the first attempt, as long as one may take and a little more.
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.config.webhooks.timeout_secs + 5);
    loop {
        let mut conn = state.pool.acquire().await?;
        let attempts = store::attempts_of(&mut conn, &event_id).await?;
        drop(conn);
        if let Some(a) = attempts.first() {
            return Ok(envelope::ok_empty(json!({
                "success": a.succeeded,
                "response_code": a.response_code.unwrap_or(0),
                "failure_reason": (!a.succeeded).then(|| a.error.clone().unwrap_or_else(|| {
                    format!("the endpoint answered {}", a.response_code.unwrap_or(0))
                })),
                "webhook_event_id": event_id,
            })));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(envelope::ok_empty(json!({
                "success": false,
                "response_code": 0,
                "failure_reason": "not attempted yet; follow it on GET /webhook-events/{id}",
                "webhook_event_id": event_id,
            })));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message for one endpoint (`WebhookEventResponseData`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookEventView {
    pub id: String,
    pub webhook_id: String,
    /// The body's `id` and the `webhook-id` header, the same on every retry.
    pub message_id: String,
    pub request_type: String,
    /// The body, exactly as sent.
    pub payload: String,
    /// `pending`, `success` or `failure`.
    pub status: String,
    pub attempt_count: i32,
    pub response_code: Option<i32>,
    pub sent_at: Option<DateTime<Utc>>,
    /// While pending: the next attempt.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::EventRow> for WebhookEventView {
    fn from(r: store::EventRow) -> Self {
        WebhookEventView {
            next_attempt_at: (r.status == "pending").then_some(r.next_attempt_at),
            id: r.id,
            webhook_id: r.webhook_id,
            message_id: r.message_id,
            request_type: r.request_type,
            payload: r.payload,
            status: r.status,
            attempt_count: r.attempt_count,
            response_code: r.response_code,
            sent_at: r.sent_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempted_at: DateTime<Utc>,
    pub succeeded: bool,
    pub response_code: Option<i32>,
    pub latency_ms: i32,
    /// The first KiB of the response body.
    pub response_body: Option<String>,
    /// Why there was no response (timeout, connection refused, …).
    pub error: Option<String>,
}

/// `GET /webhook-events/{id}` (`WebhookEventDetailResponseData`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookEventDetailView {
    #[serde(flatten)]
    pub event: WebhookEventView,
    pub webhook: Option<WebhookView>,
    pub attempts: Vec<AttemptView>,
}

const EVENT_STATUSES: [&str; 3] = ["pending", "success", "failure"];

fn event_filter(query: &Query) -> AppResult<(EventFilter<'_>, Vec<String>)> {
    let status = query.get("status").filter(|s| !s.is_empty());
    if let Some(s) = status {
        if !EVENT_STATUSES.contains(&s) {
            return Err(AppError::BadRequest(format!(
                "query parameter status: {s:?} is not one of pending, success, failure"
            )));
        }
    }
    let ids = query.get_all("ids");
    Ok((
        EventFilter {
            webhook_id: query.get("webhook_id").filter(|s| !s.is_empty()),
            status,
            ids: &[],
            q: query.get("q").filter(|s| !s.is_empty()),
        },
        ids,
    ))
}

#[utoipa::path(get, path = "/webhook-events", tag = "webhooks",
    params(super::openapi::PageParams, EventListParams),
    responses((status = 200, description = "Messages, newest first", body = Enveloped<Vec<WebhookEventView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let page = query.page()?;
    let (mut filter, ids) = event_filter(&query)?;
    let pattern = filter.q.map(crate::store::catalog::contains_pattern);
    filter.q = pattern.as_deref();
    filter.ids = &ids;
    let mut conn = state.pool.acquire().await?;
    let rows =
        store::list_events(&mut conn, auth.env_id(), &filter, page.limit, page.offset).await?;
    let data: Vec<WebhookEventView> = rows.into_iter().map(Into::into).collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/webhook-events/count", tag = "webhooks",
    params(EventListParams),
    responses((status = 200, description = "How many messages match", body = Enveloped<Value>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn count_events(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let (mut filter, ids) = event_filter(&query)?;
    let pattern = filter.q.map(crate::store::catalog::contains_pattern);
    filter.q = pattern.as_deref();
    filter.ids = &ids;
    let mut conn = state.pool.acquire().await?;
    let n = store::count_events(&mut conn, auth.env_id(), &filter).await?;
    Ok(envelope::ok(json!({ "count": n }), query.params(None)))
}

#[utoipa::path(get, path = "/webhook-events/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "A webhook event id, `whev_…`")),
    responses((status = 200, description = "The message, its endpoint and every attempt", body = Enveloped<WebhookEventDetailView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, webhook_event_id = %id))]
pub async fn get_event(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.pool.acquire().await?;
    let row = store::get_event(&mut conn, auth.env_id(), &id).await?;
    let webhook = store::get(&mut conn, auth.env_id(), &row.webhook_id)
        .await
        .ok()
        .map(WebhookView::from);
    let attempts = store::attempts_of(&mut conn, &row.id)
        .await?
        .into_iter()
        .map(|a| AttemptView {
            attempted_at: a.attempted_at,
            succeeded: a.succeeded,
            response_code: a.response_code,
            latency_ms: a.latency_ms,
            response_body: a.response_body,
            error: a.error,
        })
        .collect();
    Ok(envelope::ok_empty(WebhookEventDetailView {
        event: row.into(),
        webhook,
        attempts,
    }))
}

/// Query parameters of `GET /webhook-events` (documentation type).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventListParams {
    /// Only this endpoint's messages.
    webhook_id: Option<String>,
    /// `pending`, `success` or `failure`.
    status: Option<String>,
    /// Matches the request type.
    q: Option<String>,
}

/// Query parameters of `GET /webhooks` and `/webhooks/count` (documentation type).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct WebhookListParams {
    /// Matches the name or URL.
    q: Option<String>,
}
