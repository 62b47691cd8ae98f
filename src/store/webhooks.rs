//! Outbound webhooks: the endpoints (`webhooks`), the outbox of messages owed to them
//! (`webhook_events`, one row per message and endpoint, written in the transaction of the
//! change it reports), every delivery attempt (`webhook_attempts`), and the limit crossings
//! that fire once per metric window.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::{Error, Result};
use crate::ids;

/// An endpoint as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub environment_id: String,
    pub name: String,
    pub url: String,
    pub request_types: Vec<String>,
    pub status: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub entitlement_trigger_configs: Json<Value>,
    pub credit_trigger_configs: Json<Value>,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const WEBHOOK_COLUMNS: &str = "id, environment_id, name, url, request_types, status, secret,
    previous_secret, previous_secret_expires_at, entitlement_trigger_configs,
    credit_trigger_configs, disabled_reason, disabled_at, created_at, updated_at";

/// The fields a create or an update sets.
#[derive(Debug, Clone)]
pub struct WebhookFields {
    pub name: String,
    pub url: String,
    pub request_types: Vec<String>,
    pub status: String,
    pub entitlement_trigger_configs: Value,
    pub credit_trigger_configs: Value,
}

/// The environment's endpoints, newest first; `q` (a `LIKE` pattern) matches the name or URL.
pub async fn list(
    conn: &mut PgConnection,
    env_id: &str,
    q: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<WebhookRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks
         WHERE environment_id = $1 AND ($2::text IS NULL OR name ILIKE $2 OR url ILIKE $2)
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(env_id)
    .bind(q)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?)
}

pub async fn count(conn: &mut PgConnection, env_id: &str, q: Option<&str>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM webhooks
         WHERE environment_id = $1 AND ($2::text IS NULL OR name ILIKE $2 OR url ILIKE $2)",
    )
    .bind(env_id)
    .bind(q)
    .fetch_one(conn)
    .await?)
}

/// Endpoint `id` of the environment, if it exists.
pub async fn find(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<Option<WebhookRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE environment_id = $1 AND id = $2"
    ))
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Endpoint `id` of the environment, or not found.
pub async fn get(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<WebhookRow> {
    find(conn, env_id, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("webhook {id:?} not found")))
}

pub async fn insert(
    conn: &mut PgConnection,
    env_id: &str,
    f: &WebhookFields,
    secret: &str,
) -> Result<WebhookRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO webhooks (id, environment_id, name, url, request_types, status, secret,
             entitlement_trigger_configs, credit_trigger_configs)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {WEBHOOK_COLUMNS}"
    ))
    .bind(ids::new_id(ids::prefix::WEBHOOK))
    .bind(env_id)
    .bind(&f.name)
    .bind(&f.url)
    .bind(&f.request_types)
    .bind(&f.status)
    .bind(secret)
    .bind(Json(&f.entitlement_trigger_configs))
    .bind(Json(&f.credit_trigger_configs))
    .fetch_one(conn)
    .await?)
}

/// Replaces the endpoint's fields. Setting it `active` again clears why it was disabled.
pub async fn update(
    conn: &mut PgConnection,
    env_id: &str,
    id: &str,
    f: &WebhookFields,
) -> Result<WebhookRow> {
    sqlx::query_as(&format!(
        "UPDATE webhooks SET name = $3, url = $4, request_types = $5, status = $6,
             entitlement_trigger_configs = $7, credit_trigger_configs = $8,
             disabled_reason = CASE WHEN $6 = 'active' THEN NULL ELSE disabled_reason END,
             disabled_at = CASE WHEN $6 = 'active' THEN NULL ELSE disabled_at END,
             updated_at = now()
         WHERE environment_id = $1 AND id = $2
         RETURNING {WEBHOOK_COLUMNS}"
    ))
    .bind(env_id)
    .bind(id)
    .bind(&f.name)
    .bind(&f.url)
    .bind(&f.request_types)
    .bind(&f.status)
    .bind(Json(&f.entitlement_trigger_configs))
    .bind(Json(&f.credit_trigger_configs))
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| Error::not_found(format!("webhook {id:?} not found")))
}

/// Deletes the endpoint with its messages and attempts; `NotFound` when there is none.
pub async fn delete(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<()> {
    let n = sqlx::query("DELETE FROM webhooks WHERE environment_id = $1 AND id = $2")
        .bind(env_id)
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(Error::not_found(format!("webhook {id:?} not found")));
    }
    Ok(())
}

/// Makes `secret` the endpoint's secret; the current one keeps signing until `keep_until`.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    env_id: &str,
    id: &str,
    secret: &str,
    keep_until: DateTime<Utc>,
) -> Result<WebhookRow> {
    sqlx::query_as(&format!(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_at = $4,
             secret = $3, updated_at = now()
         WHERE environment_id = $1 AND id = $2
         RETURNING {WEBHOOK_COLUMNS}"
    ))
    .bind(env_id)
    .bind(id)
    .bind(secret)
    .bind(keep_until)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| Error::not_found(format!("webhook {id:?} not found")))
}

/// Disables an endpoint on entitled's own decision, recording why, and gives up its pending
/// messages, in one statement (nobody sees it disabled with messages still pending).
/// `None` when it was not active (already disabled, or deleted); else how many were given up.
pub async fn disable(pool: &PgPool, id: &str, reason: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "WITH off AS (
             UPDATE webhooks SET status = 'inactive', disabled_reason = $2, disabled_at = now(),
                 updated_at = now()
             WHERE id = $1 AND status = 'active' RETURNING id),
         given_up AS (
             UPDATE webhook_events e SET status = 'failure', updated_at = now()
             FROM off WHERE e.webhook_id = off.id AND e.status = 'pending' RETURNING e.id)
         SELECT (SELECT count(*) FROM given_up) FROM off",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(pool)
    .await?)
}

/// A message about to be owed to every endpoint that subscribes to it.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// `msg_…`: the body's `id` and the `webhook-id` header.
    pub id: &'a str,
    pub request_type: &'a str,
    /// The body as it will be signed and sent.
    pub payload: &'a str,
    /// For limit events: the feature (entitlement triggers) or credit (credit triggers) it
    /// is about; endpoints with trigger configs get only those they list.
    pub feature_id: Option<&'a str>,
    pub credit_id: Option<&'a str>,
}

/// Writes the message into the outbox of every active endpoint of the environment that
/// subscribes to its type, in the caller's transaction. Returns how many rows it wrote.
pub async fn enqueue(conn: &mut PgConnection, env_id: &str, m: &Message<'_>) -> Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO webhook_events (id, environment_id, webhook_id, message_id, request_type, payload)
         SELECT 'whev_' || replace(gen_random_uuid()::text, '-', ''), $1, w.id, $2, $3, $4
         FROM webhooks w
         WHERE w.environment_id = $1 AND w.status = 'active' AND $3 = ANY (w.request_types)
           AND ($5::text IS NULL OR jsonb_array_length(w.entitlement_trigger_configs) = 0
                OR w.entitlement_trigger_configs @> jsonb_build_array(jsonb_build_object('feature_id', $5::text)))
           AND ($6::text IS NULL OR jsonb_array_length(w.credit_trigger_configs) = 0
                OR w.credit_trigger_configs @> jsonb_build_array(jsonb_build_object('credit_id', $6::text)))
         ON CONFLICT (webhook_id, message_id) DO NOTHING",
    )
    .bind(env_id)
    .bind(m.id)
    .bind(m.request_type)
    .bind(m.payload)
    .bind(m.feature_id)
    .bind(m.credit_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Writes a message for one endpoint whatever it subscribes to (`test.send`).
pub async fn enqueue_for(
    conn: &mut PgConnection,
    env_id: &str,
    webhook_id: &str,
    m: &Message<'_>,
) -> Result<String> {
    Ok(sqlx::query_scalar(
        "INSERT INTO webhook_events (id, environment_id, webhook_id, message_id, request_type, payload)
         VALUES ('whev_' || replace(gen_random_uuid()::text, '-', ''), $1, $2, $3, $4, $5)
         RETURNING id",
    )
    .bind(env_id)
    .bind(webhook_id)
    .bind(m.id)
    .bind(m.request_type)
    .bind(m.payload)
    .fetch_one(conn)
    .await?)
}

/// Records that `(company, subject, request_type)` crossed in the window starting at
/// `window_start`; `false` when it had already (so its event was sent already).
pub async fn record_crossing(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    subject_id: &str,
    request_type: &str,
    window_start: DateTime<Utc>,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO webhook_limit_crossings (environment_id, company_id, subject_id, request_type, window_start)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(env_id)
    .bind(company_id)
    .bind(subject_id)
    .bind(request_type)
    .bind(window_start)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The request types the environments' active endpoints subscribe to, as
/// `(environment_id, request_type)`: writers skip building messages nobody wants.
pub async fn subscribed_types(pool: &PgPool) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT environment_id, unnest(request_types) FROM webhooks WHERE status = 'active'",
    )
    .fetch_all(pool)
    .await?)
}

/// A message as `GET /webhook-events` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    pub webhook_id: String,
    pub message_id: String,
    pub request_type: String,
    pub payload: String,
    pub status: String,
    pub attempt_count: i32,
    pub response_code: Option<i32>,
    pub sent_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const EVENT_COLUMNS: &str = "id, webhook_id, message_id, request_type, payload, status,
    attempt_count, response_code, sent_at, next_attempt_at, created_at, updated_at";

/// Filters of `GET /webhook-events`.
#[derive(Debug, Default)]
pub struct EventFilter<'a> {
    pub webhook_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub ids: &'a [String],
    /// Matches the request type.
    pub q: Option<&'a str>,
}

pub async fn list_events(
    conn: &mut PgConnection,
    env_id: &str,
    f: &EventFilter<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM webhook_events
         WHERE environment_id = $1 AND ($2::text IS NULL OR webhook_id = $2)
           AND ($3::text IS NULL OR status = $3)
           AND (cardinality($4::text[]) = 0 OR id = ANY ($4))
           AND ($5::text IS NULL OR request_type ILIKE $5)
         ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
    ))
    .bind(env_id)
    .bind(f.webhook_id)
    .bind(f.status)
    .bind(f.ids)
    .bind(f.q)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?)
}

pub async fn count_events(
    conn: &mut PgConnection,
    env_id: &str,
    f: &EventFilter<'_>,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events
         WHERE environment_id = $1 AND ($2::text IS NULL OR webhook_id = $2)
           AND ($3::text IS NULL OR status = $3)
           AND (cardinality($4::text[]) = 0 OR id = ANY ($4))
           AND ($5::text IS NULL OR request_type ILIKE $5)",
    )
    .bind(env_id)
    .bind(f.webhook_id)
    .bind(f.status)
    .bind(f.ids)
    .bind(f.q)
    .fetch_one(conn)
    .await?)
}

pub async fn get_event(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<EventRow> {
    sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE environment_id = $1 AND id = $2"
    ))
    .bind(env_id)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| Error::not_found(format!("webhook event {id:?} not found")))
}

/// One delivery attempt as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempted_at: DateTime<Utc>,
    pub succeeded: bool,
    pub response_code: Option<i32>,
    pub latency_ms: i32,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

pub async fn attempts_of(conn: &mut PgConnection, event_id: &str) -> Result<Vec<AttemptRow>> {
    Ok(sqlx::query_as(
        "SELECT attempted_at, succeeded, response_code, latency_ms, response_body, error
         FROM webhook_attempts WHERE webhook_event_id = $1 ORDER BY attempted_at, id",
    )
    .bind(event_id)
    .fetch_all(conn)
    .await?)
}

/// A message claimed for delivery, with what delivering it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub webhook_id: String,
    pub message_id: String,
    pub request_type: String,
    pub payload: String,
    /// Attempts including this one.
    pub attempt_count: i32,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// Claims up to `limit` due messages of active endpoints (an endpoint set `inactive` keeps its
/// pending messages until it is active again): each gets its attempt counted and a lease of `lease`
/// seconds (its `next_attempt_at` moves past the delivery's timeout), so no other worker on
/// any replica takes it while this one delivers. A worker that dies leaves the message to be
/// claimed again when the lease runs out: delivery is at least once.
pub async fn claim_due(pool: &PgPool, limit: i64, lease_secs: f64) -> Result<Vec<Claimed>> {
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT e.id FROM webhook_events e
             WHERE e.status = 'pending' AND e.next_attempt_at <= now()
               -- A scalar subquery, not EXISTS: the planner cannot turn it into a join, so
               -- the claim stays a walk of the due index in order that stops at $1 rows even
               -- when a burst has outrun the table's statistics (as a join it sorted every
               -- due row: 0.3-0.9 s per claim at 20,000 pending).
               AND (SELECT w.status FROM webhooks w WHERE w.id = e.webhook_id) = 'active'
             ORDER BY e.next_attempt_at LIMIT $1 FOR UPDATE OF e SKIP LOCKED),
         claimed AS (
             UPDATE webhook_events e SET attempt_count = e.attempt_count + 1,
                 next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
             FROM due WHERE e.id = due.id
             RETURNING e.id, e.webhook_id, e.message_id, e.request_type, e.payload, e.attempt_count)
         SELECT c.id, c.webhook_id, c.message_id, c.request_type, c.payload, c.attempt_count,
                w.url, w.secret, w.previous_secret, w.previous_secret_expires_at
         FROM claimed c JOIN webhooks w ON w.id = c.webhook_id",
    )
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(pool)
    .await?)
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub succeeded: bool,
    pub response_code: Option<i32>,
    pub latency_ms: i32,
    pub response_body: Option<&'a str>,
    pub error: Option<&'a str>,
    /// After a failure: when to try again; `None`: give up (`failure`).
    pub retry_at: Option<DateTime<Utc>>,
}

/// Records attempt `attempt_count` of message `id` and its outcome, unless a newer attempt
/// has been claimed meanwhile (the lease ran out): then only the attempt row is kept.
pub async fn finish(pool: &PgPool, c: &Claimed, a: &Attempt<'_>) -> Result<()> {
    let status = match (a.succeeded, a.retry_at) {
        (true, _) => "success",
        (false, Some(_)) => "pending",
        (false, None) => "failure",
    };
    // One statement (one round trip, atomic on its own): the attempt row and the message's
    // outcome. Four round trips (BEGIN, INSERT, UPDATE, COMMIT) per delivery were most of a
    // delivery's database time.
    sqlx::query(
        "WITH attempt AS (
             INSERT INTO webhook_attempts (webhook_event_id, webhook_id, succeeded, response_code,
                 latency_ms, response_body, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7))
         UPDATE webhook_events SET status = $9, response_code = $4,
             sent_at = CASE WHEN $9 = 'success' THEN now() ELSE sent_at END,
             next_attempt_at = COALESCE($10, next_attempt_at), updated_at = now()
         WHERE id = $1 AND attempt_count = $8 AND status = 'pending'",
    )
    .bind(&c.id)
    .bind(&c.webhook_id)
    .bind(a.succeeded)
    .bind(a.response_code)
    .bind(a.latency_ms)
    .bind(a.response_body)
    .bind(a.error)
    .bind(c.attempt_count)
    .bind(status)
    .bind(a.retry_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// How an endpoint has been doing: its attempts in the last 24 hours, `(total, failed)`, and
/// for how many seconds it has accepted nothing: since its last successful attempt or its
/// last change (created, re-enabled, edited), whichever is later.
pub async fn recent_failure_rate(pool: &PgPool, webhook_id: &str) -> Result<(i64, i64, f64)> {
    Ok(sqlx::query_as(
        "SELECT
             (SELECT count(*) FROM webhook_attempts a
              WHERE a.webhook_id = w.id AND a.attempted_at > now() - interval '24 hours'),
             (SELECT count(*) FROM webhook_attempts a
              WHERE a.webhook_id = w.id AND a.attempted_at > now() - interval '24 hours'
                AND NOT a.succeeded),
             EXTRACT(EPOCH FROM now() - GREATEST(w.updated_at,
                 (SELECT max(a.attempted_at) FROM webhook_attempts a
                  WHERE a.webhook_id = w.id AND a.succeeded)))::float8
         FROM webhooks w WHERE w.id = $1",
    )
    .bind(webhook_id)
    .fetch_optional(pool)
    .await?
    .unwrap_or((0, 0, 0.0)))
}

/// Queue depth and the age of the oldest pending message, in seconds.
pub async fn queue_depth(pool: &PgPool) -> Result<(i64, f64)> {
    Ok(sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM webhook_events WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await?)
}
