//! The inbox: every verified event, stored before it is acknowledged, then claimed (row lock,
//! `FOR UPDATE SKIP LOCKED`) and marked applied, skipped, ignored or failed in the same
//! transaction that applies it. A crash rolls the claim back, so the event is claimed again.
//! Which types are applied is `stripe::inbox::HANDLED_TYPES`; the rest is stored `ignored`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::Error;

pub const STATUSES: &[&str] = &["pending", "applied", "skipped", "ignored", "failed"];

/// A verified event on its way into the inbox.
pub struct NewEvent<'a> {
    pub environment_id: &'a str,
    pub id: &'a str,
    pub kind: &'a str,
    pub object_id: Option<&'a str>,
    pub created: DateTime<Utc>,
    pub livemode: bool,
    pub api_version: Option<&'a str>,
    /// The raw body, valid JSON (it was parsed before).
    pub payload: &'a str,
}

/// Stores the event; `false` when it was already there (a redelivery). An `ignored` event
/// (a type entitled does not act on) is stored as such right away.
pub async fn insert(
    conn: &mut PgConnection,
    e: &NewEvent<'_>,
    ignored: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO stripe_events (environment_id, id, type, object_id, created, livemode,
             api_version, payload, status, applied_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json,
                 CASE WHEN $9 THEN 'ignored' ELSE 'pending' END, CASE WHEN $9 THEN now() END)
         ON CONFLICT (environment_id, id) DO NOTHING",
    )
    .bind(e.environment_id)
    .bind(e.id)
    .bind(e.kind)
    .bind(e.object_id)
    .bind(e.created)
    .bind(e.livemode)
    .bind(e.api_version)
    .bind(e.payload)
    .bind(ignored)
    .execute(conn)
    .await?;
    if done.rows_affected() == 1 && ignored {
        crate::metrics::STRIPE_EVENTS.inc("ignored");
    }
    Ok(done.rows_affected() == 1)
}

/// [`insert`] for the deliveries of one group commit, in arrival order. Each row's arrival
/// time is the clock at its insert, so rows of one transaction keep their order (ties of
/// `created` are applied in arrival order). Returns the ids that were new; a redelivery, or
/// an id twice in `events`, is stored once.
pub async fn insert_many(
    conn: &mut PgConnection,
    events: &[NewEvent<'_>],
    ignored: &[bool],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "INSERT INTO stripe_events AS e (environment_id, id, type, object_id, created, livemode,
             api_version, payload, status, applied_at, received_at, next_attempt_at)
         SELECT r.environment_id, r.id, r.type, r.object_id, r.created, r.livemode,
                r.api_version, r.payload::json,
                CASE WHEN r.ignored THEN 'ignored' ELSE 'pending' END,
                CASE WHEN r.ignored THEN now() END, clock_timestamp(), clock_timestamp()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::boolean[], $7::text[], $8::text[], $9::boolean[])
              WITH ORDINALITY AS r (environment_id, id, type, object_id, created, livemode,
                                    api_version, payload, ignored, n)
         ORDER BY r.n
         ON CONFLICT (environment_id, id) DO NOTHING
         RETURNING e.environment_id, e.id, e.status = 'ignored'",
    )
    .bind(events.iter().map(|e| e.environment_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.object_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.created).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.livemode).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.api_version).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload).collect::<Vec<_>>())
    .bind(ignored)
    .fetch_all(conn)
    .await?;
    let ignored = rows.iter().filter(|(_, _, i)| *i).count();
    if ignored > 0 {
        crate::metrics::STRIPE_EVENTS.inc_by("ignored", ignored as u64);
    }
    Ok(rows.into_iter().map(|(env, id, _)| (env, id)).collect())
}

/// An event claimed for applying: its row is locked until the claiming transaction ends.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub environment_id: String,
    pub id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub created: DateTime<Utc>,
    pub attempts: i32,
    pub payload: String,
    /// When the delivery was stored: among events of one object with the same `created`,
    /// the later arrival wins.
    pub received_at: DateTime<Utc>,
}

const CLAIM_COLUMNS: &str =
    "environment_id, id, type, created, attempts, payload::text AS payload, received_at";

/// The next due event nobody else is applying: pending ones and failed ones whose backoff
/// has passed, oldest first. The inner query walks `stripe_events_due` in order and locks one
/// row; only that row's payload is read.
pub async fn claim_next(conn: &mut PgConnection) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLAIM_COLUMNS} FROM stripe_events
         WHERE (environment_id, id) = (
             SELECT environment_id, id FROM stripe_events
             WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
             ORDER BY next_attempt_at
             LIMIT 1 FOR UPDATE SKIP LOCKED)"
    ))
    .fetch_optional(conn)
    .await
}

/// Up to `limit` due events nobody else is applying (pending, and failed ones whose backoff
/// has passed), oldest first: a worker's batch. Their rows stay locked until the claiming
/// transaction ends.
pub async fn claim_batch(conn: &mut PgConnection, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLAIM_COLUMNS} FROM stripe_events
         WHERE (environment_id, id) IN (
             SELECT environment_id, id FROM stripe_events
             WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
             ORDER BY next_attempt_at
             LIMIT $1 FOR UPDATE SKIP LOCKED)
         ORDER BY next_attempt_at"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One event, when it is still due (pending, or failed) and nobody else is applying it.
pub async fn claim_due(
    conn: &mut PgConnection,
    environment_id: &str,
    id: &str,
) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLAIM_COLUMNS} FROM stripe_events
         WHERE environment_id = $1 AND id = $2 AND status IN ('pending', 'failed')
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(environment_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Takes, for the caller's transaction, the partitions (a Stripe customer, or an object
/// without one) of a batch that no other transaction holds; returns those it got. Two
/// workers never apply events of one partition at once.
pub async fn lock_partitions(
    conn: &mut PgConnection,
    keys: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT k FROM unnest($1::text[]) AS k
         WHERE pg_try_advisory_xact_lock(hashtextextended('entitled:stripe-partition:' || k, 0))",
    )
    .bind(keys)
    .fetch_all(conn)
    .await
}

/// [`finish`] for a batch: `statuses[i]` for event `ids[i]` of `environment_ids[i]`. The
/// batch's last statement: `applied_at` is the clock now, just before its commit.
pub async fn finish_many(
    conn: &mut PgConnection,
    environment_ids: &[&str],
    ids: &[&str],
    statuses: &[&'static str],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_events AS e SET status = u.status, applied_at = clock_timestamp(),
             error = NULL,
             attempts = e.attempts + 1, next_attempt_at = now()
         FROM unnest($1::text[], $2::text[], $3::text[]) AS u (environment_id, id, status)
         WHERE e.environment_id = u.environment_id AND e.id = u.id",
    )
    .bind(environment_ids)
    .bind(ids)
    .bind(statuses)
    .execute(conn)
    .await?;
    for status in statuses {
        crate::metrics::STRIPE_EVENTS.inc(status);
    }
    Ok(())
}

/// One event, whatever its status, for a retry; 409 while a worker is applying it.
pub async fn claim(
    conn: &mut PgConnection,
    environment_id: &str,
    id: &str,
) -> Result<Claimed, Error> {
    let row = sqlx::query_as(&format!(
        "SELECT {CLAIM_COLUMNS} FROM stripe_events
         WHERE environment_id = $1 AND id = $2 FOR UPDATE NOWAIT"
    ))
    .bind(environment_id)
    .bind(id)
    .fetch_optional(conn)
    .await;
    match row {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(Error::not_found(format!("Stripe event {id:?} not found"))),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
            Err(Error::Conflict(format!(
                "Stripe event {id:?} is being applied right now; retry when it is done"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// A final status: `applied`, `skipped` or `ignored`.
pub async fn finish(
    conn: &mut PgConnection,
    environment_id: &str,
    id: &str,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_events SET status = $3, applied_at = now(), error = NULL,
             attempts = attempts + 1, next_attempt_at = now()
         WHERE environment_id = $1 AND id = $2",
    )
    .bind(environment_id)
    .bind(id)
    .bind(status)
    .execute(conn)
    .await?;
    crate::metrics::STRIPE_EVENTS.inc(status);
    Ok(())
}

/// Applying failed: record why, and when to try again. Skipped when another worker holds
/// the event (it claimed it after our rollback; its outcome is the one that counts) or has
/// already applied it.
pub async fn fail(
    conn: &mut PgConnection,
    environment_id: &str,
    id: &str,
    attempts_before: i32,
    error: &str,
) -> Result<(), sqlx::Error> {
    let delay = backoff_secs(attempts_before + 1);
    sqlx::query(
        "UPDATE stripe_events SET status = 'failed', applied_at = NULL, error = $3,
             attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $4)
         WHERE (environment_id, id) IN (
             SELECT environment_id, id FROM stripe_events
             WHERE environment_id = $1 AND id = $2 AND attempts = $5
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(environment_id)
    .bind(id)
    .bind(error)
    .bind(delay as f64)
    .bind(attempts_before)
    .execute(conn)
    .await?;
    crate::metrics::STRIPE_EVENTS.inc("failed");
    Ok(())
}

/// Seconds before attempt `attempts + 1`: 5 s, 10 s, 20 s, … capped at an hour.
pub fn backoff_secs(attempts: i32) -> u64 {
    let exp = attempts.clamp(1, 16) as u32 - 1;
    (5u64 << exp).min(3600)
}

/// A `GET /stripe/events` row.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRow {
    pub id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub object_id: Option<String>,
    pub status: String,
    pub created: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub error: Option<String>,
}

const ROW_COLUMNS: &str =
    "id, type, object_id, status, created, received_at, applied_at, attempts, error";

pub async fn get(
    conn: &mut PgConnection,
    environment_id: &str,
    id: &str,
) -> Result<Option<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM stripe_events WHERE environment_id = $1 AND id = $2"
    ))
    .bind(environment_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Newest first, optionally of one status and type.
pub async fn list(
    conn: &mut PgConnection,
    environment_id: &str,
    status: Option<&str>,
    kind: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM stripe_events
         WHERE environment_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR type = $3)
         ORDER BY created DESC, received_at DESC, id DESC LIMIT $4 OFFSET $5"
    ))
    .bind(environment_id)
    .bind(status)
    .bind(kind)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// Events per status (every status, zeros included), for the inbox depth metric.
pub async fn depth(pool: &sqlx::PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.status, count(e.id) FROM unnest($1::text[]) AS s(status)
         LEFT JOIN stripe_events e ON e.status = s.status GROUP BY s.status",
    )
    .bind(STATUSES)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let got: Vec<u64> = (1..=5).map(backoff_secs).collect();
        assert_eq!(got, [5, 10, 20, 40, 80]);
        assert_eq!(backoff_secs(30), 3600);
        assert_eq!(backoff_secs(0), 5);
    }
}
