//! Reconcile runs, the events cursor, and the objects a full listing did not see.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::ids;

/// A run as `GET /stripe/reconcile-runs` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Run {
    pub id: String,
    /// The environment's key.
    pub environment: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// `schedule`, `api` or `cli`.
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `{customers|products|prices|subscriptions: {seen, created, updated, deleted}}`.
    #[schema(value_type = Object)]
    pub counts: sqlx::types::Json<Value>,
    /// Events listed from Stripe's `/v1/events` that had never reached the webhook.
    pub events_caught_up: i32,
    /// Requests sent to the Stripe API.
    pub requests: i32,
    #[schema(value_type = Vec<String>)]
    pub errors: sqlx::types::Json<Value>,
}

const RUN_SELECT: &str = "SELECT r.id, e.key AS environment, r.status, r.trigger, r.started_at,
        r.finished_at, r.counts, r.events_caught_up, r.requests, r.errors
     FROM stripe_reconcile_runs r JOIN environments e ON e.id = r.environment_id";

/// Records a new running run. Runs of the environment still marked running are failed
/// first: the caller holds the environment's reconcile lock, so their process is gone.
pub async fn start_run(
    conn: &mut PgConnection,
    env_id: &str,
    trigger: &str,
    instance: &str,
) -> Result<Run, sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_reconcile_runs SET status = 'failed', finished_at = now(),
             errors = errors || '[\"interrupted: the process running it stopped before it finished\"]'
         WHERE environment_id = $1 AND status = 'running'",
    )
    .bind(env_id)
    .execute(&mut *conn)
    .await?;
    let id = ids::new_sortable_id(ids::prefix::RECONCILE_RUN);
    sqlx::query(
        "INSERT INTO stripe_reconcile_runs (id, environment_id, trigger, instance)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(env_id)
    .bind(trigger)
    .bind(instance)
    .execute(&mut *conn)
    .await?;
    get_run(conn, None, &id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// Stores the progress of a running run (counts so far), so the API shows it moving.
pub async fn update_run(
    conn: &mut PgConnection,
    id: &str,
    counts: &Value,
    requests: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE stripe_reconcile_runs SET counts = $2, requests = $3 WHERE id = $1")
        .bind(id)
        .bind(sqlx::types::Json(counts))
        .bind(requests.min(i32::MAX as i64) as i32)
        .execute(conn)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn finish_run(
    conn: &mut PgConnection,
    id: &str,
    status: &str,
    counts: &Value,
    events_caught_up: i64,
    requests: i64,
    errors: &[String],
) -> Result<Run, sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_reconcile_runs SET status = $2, finished_at = now(), counts = $3,
             events_caught_up = $4, requests = $5, errors = $6
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(sqlx::types::Json(counts))
    .bind(events_caught_up.min(i32::MAX as i64) as i32)
    .bind(requests.min(i32::MAX as i64) as i32)
    .bind(sqlx::types::Json(errors))
    .execute(&mut *conn)
    .await?;
    get_run(conn, None, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// One run; with `env_id`, only if it belongs to that environment.
pub async fn get_run(
    conn: &mut PgConnection,
    env_id: Option<&str>,
    id: &str,
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{RUN_SELECT} WHERE r.id = $1 AND ($2::text IS NULL OR r.environment_id = $2)"
    ))
    .bind(id)
    .bind(env_id)
    .fetch_optional(conn)
    .await
}

/// The environment's runs, newest first.
pub async fn list_runs(
    conn: &mut PgConnection,
    env_id: &str,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{RUN_SELECT} WHERE r.environment_id = $1 AND ($2::text IS NULL OR r.status = $2)
         ORDER BY r.started_at DESC, r.id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(env_id)
    .bind(status)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// The run of the environment still running, if any.
pub async fn running(conn: &mut PgConnection, env_id: &str) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{RUN_SELECT} WHERE r.environment_id = $1 AND r.status = 'running'
         ORDER BY r.started_at DESC LIMIT 1"
    ))
    .bind(env_id)
    .fetch_optional(conn)
    .await
}

pub async fn events_cursor(
    conn: &mut PgConnection,
    env_id: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        "SELECT events_cursor FROM stripe_sync_state WHERE environment_id = $1",
    )
    .bind(env_id)
    .fetch_optional(conn)
    .await?
    .flatten())
}

/// Moves the cursor forward (never back).
pub async fn set_events_cursor(
    conn: &mut PgConnection,
    env_id: &str,
    cursor: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stripe_sync_state (environment_id, events_cursor) VALUES ($1, $2)
         ON CONFLICT (environment_id) DO UPDATE SET
             events_cursor = GREATEST(stripe_sync_state.events_cursor, EXCLUDED.events_cursor),
             updated_at = now()",
    )
    .bind(env_id)
    .bind(cursor)
    .execute(conn)
    .await?;
    Ok(())
}

/// Objects of `object_type` that entitled holds as live but that the run `marker`, whose
/// listing started in the second `since`, did not see: their version is neither this run's
/// nor an event from that second on. (A version left by an earlier reconcile counts as
/// unseen even within the same second; one left by an event of that second is kept, as the
/// object may have been created after the listing passed.) At most `limit`, in id order
/// after `after`.
pub async fn vanished(
    conn: &mut PgConnection,
    env_id: &str,
    object_type: &str,
    since: DateTime<Utc>,
    marker: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let (table, live) = match object_type {
        "customer" => ("stripe_customers", "t.deleted_at IS NULL"),
        "product" => ("billing_products", "t.deleted_at IS NULL"),
        "price" => ("billing_prices", "t.deleted_at IS NULL"),
        "subscription" => (
            "stripe_subscriptions",
            "t.status NOT IN ('canceled', 'incomplete_expired')",
        ),
        other => {
            return Err(sqlx::Error::Protocol(format!(
                "unknown object type {other}"
            )))
        }
    };
    sqlx::query_scalar(&format!(
        "SELECT t.id FROM {table} t
         LEFT JOIN stripe_object_versions v
                ON v.environment_id = t.environment_id AND v.object_id = t.id
         WHERE t.environment_id = $1 AND {live} AND t.id > $3
           AND (v.last_event_id IS NULL
                OR (v.last_event_id <> $5
                    AND (v.last_event_created < $2
                         OR (v.last_event_id LIKE 'reconcile:%' AND v.last_event_created <= $2))))
         ORDER BY t.id LIMIT $4"
    ))
    .bind(env_id)
    .bind(since)
    .bind(after)
    .bind(limit)
    .bind(marker)
    .fetch_all(conn)
    .await
}

/// Marks vanished objects deleted (subscriptions: canceled) and raises their versions to
/// `at`, so an older event arriving late cannot bring them back. Returns the companies whose
/// memberships must be recomputed.
pub async fn mark_vanished(
    conn: &mut PgConnection,
    env_id: &str,
    object_type: &str,
    ids: &[String],
    at: DateTime<Utc>,
    marker: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let companies: Vec<String> = match object_type {
        "customer" => {
            sqlx::query_scalar(
                "UPDATE stripe_customers SET deleted_at = now(), updated_at = now()
                 WHERE environment_id = $1 AND id = ANY($2) AND deleted_at IS NULL
                 RETURNING company_id",
            )
            .bind(env_id)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?
        }
        "product" | "price" => {
            sqlx::query(&format!(
                "UPDATE {} SET deleted_at = now(), active = false, updated_at = now()
                 WHERE environment_id = $1 AND id = ANY($2) AND deleted_at IS NULL",
                if object_type == "product" {
                    "billing_products"
                } else {
                    "billing_prices"
                }
            ))
            .bind(env_id)
            .bind(ids)
            .execute(&mut *conn)
            .await?;
            Vec::new()
        }
        "subscription" => {
            sqlx::query_scalar(
                "UPDATE stripe_subscriptions SET status = 'canceled',
                     canceled_at = COALESCE(canceled_at, now()), updated_at = now()
                 WHERE environment_id = $1 AND id = ANY($2)
                   AND status NOT IN ('canceled', 'incomplete_expired')
                 RETURNING company_id",
            )
            .bind(env_id)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?
        }
        other => {
            return Err(sqlx::Error::Protocol(format!(
                "unknown object type {other}"
            )))
        }
    };
    sqlx::query(
        "INSERT INTO stripe_object_versions
             (environment_id, object_id, object_type, last_event_created, last_event_id)
         SELECT $1, id, $3, $4, $5 FROM unnest($2::text[]) AS id
         ON CONFLICT (environment_id, object_id) DO UPDATE SET
             last_event_created = EXCLUDED.last_event_created,
             last_event_id = EXCLUDED.last_event_id, updated_at = now()
         WHERE stripe_object_versions.last_event_created <= EXCLUDED.last_event_created",
    )
    .bind(env_id)
    .bind(ids)
    .bind(object_type)
    .bind(at)
    .bind(marker)
    .execute(&mut *conn)
    .await?;
    let mut companies = companies;
    companies.sort();
    companies.dedup();
    Ok(companies)
}

/// The tables a reconcile writes.
const WRITTEN_TABLES: &str = "companies, company_keys, company_plans, stripe_customers, \
     stripe_subscriptions, stripe_subscription_items, stripe_object_versions, \
     billing_products, billing_prices";

/// Refreshes the planner's statistics of the tables a reconcile writes: a first import
/// grows them from empty, and plans made on empty tables scan whole indexes per lookup.
pub async fn analyze_written_tables(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    sqlx::query(&format!("ANALYZE {WRITTEN_TABLES}"))
        .execute(pool)
        .await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "tables analyzed"
    );
    Ok(())
}
