//! `POST /events`, `POST /event-batch`, `POST /batch` (the SDKs' event capture format),
//! `GET /events`, `GET /events/{id}`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::{self, Auth};
use super::envelope;
use super::extract::{parse_json, read_body, Json, Path, Query};
use super::openapi::{Enveloped, Errors};
use super::views::key_pairs;
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::store::events::{
    self as store, EventFilter, EventRow, Identify, IdentifyCompany, Kind, NewEvent, Track,
};
use crate::store::keys;

/// Events in one batch, at most.
pub const MAX_BATCH: usize = 1000;
/// The largest magnitude of one event's quantity.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// `CreateEventRequestBody`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"event_type": "track", "body": {"event": "api_call", "company": {"id": "acme"}, "quantity": 1}}))]
pub struct CreateEvent {
    /// `track` or `identify`.
    #[schema(value_type = super::openapi::EventType)]
    event_type: String,
    /// Track: `{event, company: {k: v}, user: {k: v}, quantity, traits}`. Identify: `{keys,
    /// name, traits, company: {keys, name, traits}}`.
    #[schema(value_type = Option<Object>)]
    body: Option<Value>,
    idempotency_key: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    /// `sent_at` is the event's time for usage billed through Stripe meters.
    trusted_client_clock: Option<bool>,
    /// Historical data: counted for usage, never billed.
    backfill: Option<bool>,
}

/// One event of the SDKs' capture batch: `type`, not `event_type`, and maybe its own key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CaptureEvent {
    api_key: Option<String>,
    /// `track` or `identify`; or `flag_check`, a check the SDK evaluated locally (counted in
    /// insights, not stored).
    #[serde(rename = "type")]
    #[schema(value_type = super::openapi::EventType)]
    event_type: String,
    #[schema(value_type = Option<Object>)]
    body: Option<Value>,
    idempotency_key: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    trusted_client_clock: Option<bool>,
    backfill: Option<bool>,
}

/// An event's envelope fields besides its type and body.
#[derive(Debug, Default)]
struct Envelope {
    idempotency_key: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    trusted_client_clock: Option<bool>,
    backfill: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct TrackBody {
    event: String,
    company: Option<Map<String, Value>>,
    user: Option<Map<String, Value>>,
    quantity: Option<i64>,
    traits: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct IdentifyCompanyBody {
    keys: Map<String, Value>,
    name: Option<String>,
    traits: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct IdentifyBody {
    #[serde(default)]
    keys: Option<Map<String, Value>>,
    name: Option<String>,
    traits: Option<Map<String, Value>>,
    company: Option<IdentifyCompanyBody>,
}

/// Deserializes a JSON value, naming the offending field under `prefix` on error.
fn from_value<T: serde::de::DeserializeOwned>(prefix: &str, v: &Value) -> AppResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        if path == "." {
            AppError::bad_request(format!("{prefix}: {msg}"))
        } else {
            AppError::bad_request(format!("{prefix}.{path}: {msg}"))
        }
    })
}

/// Validates one event; `path` names it in errors (`events[3]`).
fn validate(
    path: &str,
    env_id: &str,
    event_type: &str,
    body: Option<Value>,
    envelope: Envelope,
) -> AppResult<NewEvent> {
    let Envelope {
        idempotency_key,
        sent_at,
        trusted_client_clock,
        backfill,
    } = envelope;
    let body = body.unwrap_or(Value::Object(Map::new()));
    let field = |f: &str| {
        if path.is_empty() {
            f.to_string()
        } else {
            format!("{path}.{f}")
        }
    };
    if !body.is_object() {
        return Err(AppError::bad_request(format!(
            "{}: must be a JSON object",
            field("body")
        )));
    }
    let kind = match event_type {
        "track" => {
            let b: TrackBody = from_value(&field("body"), &body)?;
            let event = b.event.trim().to_string();
            if event.is_empty() || event.len() > 255 {
                return Err(AppError::bad_request(format!(
                    "{}: the event name must be 1 to 255 characters",
                    field("body.event")
                )));
            }
            let quantity = b.quantity.unwrap_or(1);
            if quantity.abs() > MAX_QUANTITY {
                return Err(AppError::bad_request(format!(
                    "{}: must be between -{MAX_QUANTITY} and {MAX_QUANTITY}, got {quantity}",
                    field("body.quantity")
                )));
            }
            let company = match &b.company {
                Some(c) => key_pairs(&field("body.company"), c)?,
                None => Vec::new(),
            };
            let user = match &b.user {
                Some(u) => key_pairs(&field("body.user"), u)?,
                None => Vec::new(),
            };
            if company.is_empty() && user.is_empty() {
                return Err(AppError::bad_request(format!(
                    "{}: a track event needs company keys (or user keys) to count usage against",
                    field("body.company")
                )));
            }
            if !company.is_empty() {
                keys::validate(&field("body.company"), &company)?;
            }
            if !user.is_empty() {
                keys::validate(&field("body.user"), &user)?;
            }
            Kind::Track(Track {
                event,
                company,
                user,
                quantity,
                traits: b.traits,
            })
        }
        "identify" => {
            let b: IdentifyBody = from_value(&field("body"), &body)?;
            let keys = match &b.keys {
                Some(k) => key_pairs(&field("body.keys"), k)?,
                None => Vec::new(),
            };
            let company = match &b.company {
                Some(c) => {
                    let keys = key_pairs(&field("body.company.keys"), &c.keys)?;
                    keys::validate(&field("body.company.keys"), &keys)?;
                    Some(IdentifyCompany {
                        keys,
                        name: c.name.clone(),
                        traits: c.traits.clone(),
                    })
                }
                None => None,
            };
            if keys.is_empty() && company.is_none() {
                return Err(AppError::bad_request(format!(
                    "{}: an identify event needs user keys or a company",
                    field("body.keys")
                )));
            }
            Kind::Identify(Identify {
                keys,
                name: b.name,
                traits: b.traits,
                company,
            })
        }
        other => {
            return Err(AppError::bad_request(format!(
                "{}: {other:?} is not accepted; send track or identify",
                field("event_type")
            )))
        }
    };
    if let Some(k) = &idempotency_key {
        if k.is_empty() || k.len() > 255 {
            return Err(AppError::bad_request(format!(
                "{}: must be 1 to 255 characters",
                field("idempotency_key")
            )));
        }
    }
    let trusted_client_clock = trusted_client_clock.unwrap_or(false);
    if trusted_client_clock && sent_at.is_none() {
        return Err(AppError::bad_request(format!(
            "{}: trusted_client_clock needs sent_at",
            field("sent_at")
        )));
    }
    Ok(NewEvent {
        environment_id: env_id.to_string(),
        kind,
        body,
        idempotency_key,
        sent_at,
        trusted_client_clock,
        backfill: backfill.unwrap_or(false),
    })
}

/// `RawEventResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    event_id: String,
    captured_at: DateTime<Utc>,
    remote_ip: String,
    user_agent: String,
    /// True when an earlier event with the same idempotency key answered.
    duplicate: bool,
}

/// Ingests a validated batch: durable when this returns.
async fn ingest(state: &AppState, events: Vec<NewEvent>) -> AppResult<store::Ingested> {
    let started = Instant::now();
    let n = events.len();
    let done = state.ingestor.ingest(events).await?;
    tracing::debug!(
        events = n,
        elapsed_us = started.elapsed().as_micros() as u64,
        "events ingested"
    );
    Ok(done)
}

fn client_info(headers: &HeaderMap) -> (String, String) {
    let ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ua = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ip, ua)
}

fn accepted(done: &store::Ingested, headers: &HeaderMap) -> Vec<Accepted> {
    let (ip, ua) = client_info(headers);
    let now = Utc::now();
    done.ids
        .iter()
        .zip(&done.duplicate)
        .map(|(id, dup)| Accepted {
            event_id: id.clone(),
            captured_at: now,
            remote_ip: ip.clone(),
            user_agent: ua.clone(),
            duplicate: *dup,
        })
        .collect()
}

#[utoipa::path(post, path = "/events", tag = "events", request_body = CreateEvent,
    responses((status = 200, description = "The event, stored (or the first one with its idempotency key)", body = Enveloped<Accepted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Json(body): Json<CreateEvent>,
) -> AppResult<Response> {
    auth.require_write()?;
    let event = validate(
        "",
        auth.env_id(),
        &body.event_type,
        body.body,
        Envelope {
            idempotency_key: body.idempotency_key,
            sent_at: body.sent_at,
            trusted_client_clock: body.trusted_client_clock,
            backfill: body.backfill,
        },
    )?;
    let done = ingest(&state, vec![event]).await?;
    let mut out = accepted(&done, &headers);
    Ok(envelope::ok_empty(out.remove(0)))
}

/// Validates and stores one track event: the MCP `track-usage-event`. `body` is a track
/// body (`event`, `company`, `user`, `quantity`, `traits`).
pub async fn track(
    state: &AppState,
    auth: &Auth,
    headers: &HeaderMap,
    body: Value,
    idempotency_key: Option<String>,
) -> AppResult<Accepted> {
    auth.require_write()?;
    let event = validate(
        "",
        auth.env_id(),
        "track",
        Some(body),
        Envelope {
            idempotency_key,
            ..Envelope::default()
        },
    )?;
    let done = ingest(state, vec![event]).await?;
    Ok(accepted(&done, headers).remove(0))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"events": [{"event_type": "track", "body": {"event": "api_call", "company": {"id": "acme"}}}, {"event_type": "identify", "body": {"keys": {"email": "ada@example.com"}, "company": {"keys": {"id": "acme"}}}}]}))]
pub struct CreateBatch {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<CreateEvent>,
}

fn check_batch_size(n: usize) -> AppResult<()> {
    if n == 0 {
        return Err(AppError::bad_request("events: the batch is empty"));
    }
    if n > MAX_BATCH {
        return Err(AppError::bad_request(format!(
            "events: at most {MAX_BATCH} events per batch, got {n}"
        )));
    }
    Ok(())
}

/// The events of a batch, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedBatch {
    events: Vec<Accepted>,
}

#[utoipa::path(post, path = "/event-batch", tag = "events", request_body = CreateBatch,
    responses((status = 200, description = "Every event, stored in one transaction", body = Enveloped<AcceptedBatch>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create_batch(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Json(body): Json<CreateBatch>,
) -> AppResult<Response> {
    auth.require_write()?;
    check_batch_size(body.events.len())?;
    let events = body
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            validate(
                &format!("events[{i}]"),
                auth.env_id(),
                &e.event_type,
                e.body,
                Envelope {
                    idempotency_key: e.idempotency_key,
                    sent_at: e.sent_at,
                    trusted_client_clock: e.trusted_client_clock,
                    backfill: e.backfill,
                },
            )
        })
        .collect::<AppResult<Vec<_>>>()?;
    let done = ingest(&state, events).await?;
    Ok(envelope::ok_empty(AcceptedBatch {
        events: accepted(&done, &headers),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"events": [{"type": "track", "body": {"event": "api_call", "company": {"id": "acme"}, "quantity": 2}, "sent_at": "2026-01-31T12:00:00Z"}]}))]
pub struct CaptureBatch {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<CaptureEvent>,
}

/// The SDKs' event capture endpoint. Each event may carry its own `api_key`; otherwise the
/// request's key applies. Any invalid key rejects the whole batch.
#[utoipa::path(post, path = "/batch", tag = "events", request_body = CaptureBatch,
    security((), ("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "Every event, stored in one transaction", body = Enveloped<AcceptedBatch>), Errors))]
pub async fn capture(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> AppResult<Response> {
    let (parts, body) = req.into_parts();
    let header_key = auth::secret_from(&parts.headers).map(str::to_string);
    let bytes = read_body(Request::from_parts(parts, body), &state).await?;
    let batch: CaptureBatch = parse_json(&bytes)?;
    check_batch_size(batch.events.len())?;
    let mut events = Vec::with_capacity(batch.events.len());
    // Checks the SDKs evaluated locally: counted in insights once the batch is accepted.
    let mut flag_checks = Vec::new();
    for (i, e) in batch.events.into_iter().enumerate() {
        let secret = e
            .api_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .or(header_key.as_deref())
            .ok_or(AppError::Unauthorized)?;
        let auth = state.authenticate(secret).ok_or(AppError::Unauthorized)?;
        if i == 0 {
            auth.record_in_span();
        }
        auth.require_write()?;
        if e.event_type == "flag_check" {
            if let Some(check) = flag_check(&state, &format!("events[{i}]"), &auth, e.body)? {
                flag_checks.push(check);
            }
            continue;
        }
        events.push(validate(
            &format!("events[{i}]"),
            auth.env_id(),
            &e.event_type,
            e.body,
            Envelope {
                idempotency_key: e.idempotency_key,
                sent_at: e.sent_at,
                trusted_client_clock: e.trusted_client_clock,
                backfill: e.backfill,
            },
        )?);
    }
    let done = if events.is_empty() {
        store::Ingested::default()
    } else {
        ingest(&state, events).await?
    };
    for (environment_id, flag_id, value) in &flag_checks {
        state.checks.record(environment_id, flag_id, *value);
    }
    crate::metrics::SDK_FLAG_CHECKS.inc_by(flag_checks.len() as u64);
    Ok(envelope::ok_empty(AcceptedBatch {
        events: accepted(&done, &headers),
    }))
}

/// The SDKs' report of a check they evaluated locally (datastream mode).
#[derive(Deserialize)]
struct FlagCheckBody {
    flag_key: Option<String>,
    flag_id: Option<String>,
    value: bool,
}

/// A `flag_check` event: (environment, flag id, value) to count in insights' check
/// figures, or `None` for a flag this server does not know (deleted since). Not stored, no
/// usage, not in `entitled_checks_total` (which counts the checks this server answered).
fn flag_check(
    state: &AppState,
    path: &str,
    auth: &Auth,
    body: Option<Value>,
) -> AppResult<Option<(String, String, bool)>> {
    let body = body.unwrap_or(Value::Object(Map::new()));
    let b: FlagCheckBody = from_value(&format!("{path}.body"), &body)?;
    let catalog = state.cache.catalog();
    let id = match (&b.flag_id, &b.flag_key) {
        (Some(id), _) if catalog.flags_sorted.iter().any(|f| &f.id == id) => Some(id.clone()),
        (_, Some(key)) => catalog.flags_by_key.get(key).map(|f| f.id.clone()),
        (None, None) => {
            return Err(AppError::bad_request(format!(
                "{path}.body.flag_key: a flag_check event names its flag"
            )))
        }
        _ => None,
    };
    Ok(id.map(|id| (auth.env_id().to_string(), id, b.value)))
}

/// `EventDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(rename = "subtype")]
    subtype: Option<String>,
    environment_id: String,
    company_id: Option<String>,
    user_id: Option<String>,
    quantity: i64,
    #[schema(value_type = Object)]
    body: Value,
    body_preview: String,
    idempotency_key: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    status: String,
    #[serde(rename = "captured_at")]
    created_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    feature_ids: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    features: Vec<Value>,
    error_message: Option<String>,
}

impl From<EventRow> for EventView {
    fn from(r: EventRow) -> Self {
        let preview = r.body.0.to_string();
        let features = r
            .feature_ids
            .iter()
            .map(|id| serde_json::json!({"id": id, "name": id}))
            .collect();
        EventView {
            id: r.id,
            event_type: r.event_type,
            subtype: r.event_name,
            environment_id: r.environment_id,
            company_id: r.company_id,
            user_id: r.user_id,
            quantity: r.quantity,
            body: r.body.0,
            body_preview: preview.chars().take(200).collect(),
            idempotency_key: r.idempotency_key,
            sent_at: r.sent_at,
            status: r.status,
            created_at: r.created_at,
            processed_at: r.processed_at,
            feature_ids: r.feature_ids,
            features,
            error_message: None,
        }
    }
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    company_id: Option<String>,
    user_id: Option<String>,
    /// The event name of track events.
    event_subtype: Option<String>,
    idempotency_key: Option<String>,
    /// `track` and/or `identify`.
    event_types: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/events", tag = "events",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Events, newest first", body = Enveloped<Vec<EventView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let types = query.get_all("event_types");
    for t in &types {
        if t != "track" && t != "identify" {
            return Err(AppError::bad_request(format!(
                "query parameter event_types: {t:?} is not track or identify"
            )));
        }
    }
    let filter = EventFilter {
        company_id: query.get("company_id").map(str::to_string),
        user_id: query.get("user_id").map(str::to_string),
        event_subtype: query.get("event_subtype").map(str::to_string),
        idempotency_key: query.get("idempotency_key").map(str::to_string),
        event_types: types,
    };
    let mut conn = state.pool.acquire().await?;
    let rows = store::list(&mut conn, auth.env_id(), &filter, page.limit, page.offset).await?;
    let data: Vec<EventView> = rows.into_iter().map(EventView::from).collect();
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/events/{id}", tag = "events",
    params(("id" = String, Path, description = "An event id, `evnt_…`")),
    responses((status = 200, description = "The event", body = Enveloped<EventView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, event_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.pool.acquire().await?;
    let row = store::get(&mut conn, auth.env_id(), &id)
        .await?
        .ok_or_else(|| AppError::not_found("event", &id))?;
    Ok(envelope::ok_empty(EventView::from(row)))
}
