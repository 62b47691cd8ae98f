//! The admin console's own data: its people, their sessions, sign-in attempts (rate limit),
//! the audit log, and the reads its pages need that no other aggregate answers (company
//! search, a company's plans with their Stripe links).

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use super::Error;
use crate::ids;

/// Consecutive failed sign-ins that lock an account.
pub const LOCK_AFTER_FAILURES: i32 = 5;
/// How long a locked account stays locked.
pub const LOCK_MINUTES: i64 = 15;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsoleUser {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    /// `admin` or `viewer`.
    pub role: String,
    pub must_change_password: bool,
    pub disabled: bool,
    pub failed_count: i32,
    pub locked_until: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str =
    "id, email, password_hash, role, must_change_password, disabled, failed_count, locked_until";

/// Creates a user who must change the (one-time) password at the first sign-in.
pub async fn create_user(
    conn: &mut PgConnection,
    email: &str,
    password_hash: &str,
    role: &str,
) -> Result<String, Error> {
    let id = ids::new_id("cusr");
    let res = sqlx::query(
        "INSERT INTO console_users (id, email, password_hash, role) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(email)
    .bind(password_hash)
    .bind(role)
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(id),
        Err(sqlx::Error::Database(d)) if d.constraint() == Some("console_users_email_key") => {
            Err(Error::Conflict(format!(
                "a console user with email {email:?} already exists"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn user_by_email(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<ConsoleUser>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM console_users WHERE email = $1"
    ))
    .bind(email)
    .fetch_optional(conn)
    .await
}

/// Sets a new one-time password: unlocks, and signs the user out everywhere. `None` when no
/// user has that email.
pub async fn reset_password(
    conn: &mut PgConnection,
    email: &str,
    password_hash: &str,
) -> Result<Option<String>, sqlx::Error> {
    let id: Option<String> = sqlx::query_scalar(
        "UPDATE console_users SET password_hash = $2, must_change_password = true,
                failed_count = 0, locked_until = NULL, updated_at = now()
         WHERE email = $1 RETURNING id",
    )
    .bind(email)
    .bind(password_hash)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = &id {
        end_sessions_of(conn, id).await?;
    }
    Ok(id)
}

/// Disables the user and ends their sessions. `None` when no user has that email.
pub async fn disable_user(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<String>, sqlx::Error> {
    let id: Option<String> = sqlx::query_scalar(
        "UPDATE console_users SET disabled = true, updated_at = now() WHERE email = $1 RETURNING id",
    )
    .bind(email)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = &id {
        end_sessions_of(conn, id).await?;
    }
    Ok(id)
}

/// The user's own new password (after a one-time one).
pub async fn set_password(
    conn: &mut PgConnection,
    user_id: &str,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE console_users SET password_hash = $2, must_change_password = false,
                updated_at = now() WHERE id = $1",
    )
    .bind(user_id)
    .bind(password_hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts a failed sign-in; the fifth in a row locks the account for 15 minutes (and starts
/// the count again). Returns when the account is locked until, if it now is.
pub async fn record_failure(
    conn: &mut PgConnection,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE console_users SET
            locked_until = CASE WHEN failed_count + 1 >= $2 THEN $3 ELSE locked_until END,
            failed_count = CASE WHEN failed_count + 1 >= $2 THEN 0 ELSE failed_count + 1 END
         WHERE id = $1 RETURNING locked_until",
    )
    .bind(user_id)
    .bind(LOCK_AFTER_FAILURES)
    .bind(now + Duration::minutes(LOCK_MINUTES))
    .fetch_one(conn)
    .await
    .map(|until: Option<DateTime<Utc>>| until.filter(|u| *u > now))
}

pub async fn record_success(conn: &mut PgConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE console_users SET failed_count = 0, locked_until = NULL WHERE id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a sign-in attempt from `address` and returns how many it made since `since`
/// (this one included). Attempts older than a day are dropped on the way.
pub async fn note_attempt(
    conn: &mut PgConnection,
    address: &str,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query("DELETE FROM console_sign_in_attempts WHERE attempted_at < $1")
        .bind(now - Duration::days(1))
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO console_sign_in_attempts (address, attempted_at) VALUES ($1, $2)")
        .bind(address)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT count(*) FROM console_sign_in_attempts WHERE address = $1 AND attempted_at > $2",
    )
    .bind(address)
    .bind(since)
    .fetch_one(conn)
    .await
}

/// A live session with its user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub user_id: String,
    pub email: String,
    pub role: String,
    pub must_change_password: bool,
    pub csrf_token: String,
    pub environment_id: Option<String>,
    pub last_seen_at: DateTime<Utc>,
}

pub async fn create_session(
    conn: &mut PgConnection,
    id_hash: &str,
    user_id: &str,
    csrf_token: &str,
    environment_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, user_id, csrf_token, environment_id)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id_hash)
    .bind(user_id)
    .bind(csrf_token)
    .bind(environment_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The session, if it was used since `idle_since` and its user is enabled; marks it used
/// (at most once a minute, to spare writes).
pub async fn session(
    conn: &mut PgConnection,
    id_hash: &str,
    now: DateTime<Utc>,
    idle_since: DateTime<Utc>,
) -> Result<Option<SessionRow>, sqlx::Error> {
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT s.user_id, u.email, u.role, u.must_change_password, s.csrf_token,
                s.environment_id, s.last_seen_at
         FROM console_sessions s JOIN console_users u ON u.id = s.user_id
         WHERE s.id_hash = $1 AND s.last_seen_at > $2 AND NOT u.disabled",
    )
    .bind(id_hash)
    .bind(idle_since)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = &row {
        if now - r.last_seen_at > Duration::minutes(1) {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE id_hash = $1")
                .bind(id_hash)
                .bind(now)
                .execute(conn)
                .await?;
        }
    }
    Ok(row)
}

pub async fn set_session_environment(
    conn: &mut PgConnection,
    id_hash: &str,
    environment_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE console_sessions SET environment_id = $2 WHERE id_hash = $1")
        .bind(id_hash)
        .bind(environment_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn end_session(conn: &mut PgConnection, id_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Drops sessions unused since `idle_since` (they can no longer sign anyone in). Returns how
/// many went.
pub async fn end_idle_sessions(
    conn: &mut PgConnection,
    idle_since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM console_sessions WHERE last_seen_at <= $1")
            .bind(idle_since)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

async fn end_sessions_of(conn: &mut PgConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// One audited write.
#[derive(Debug)]
pub struct NewAudit<'a> {
    pub actor_id: &'a str,
    pub actor_email: &'a str,
    pub environment_id: Option<&'a str>,
    pub company_id: Option<&'a str>,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
}

/// Writes an audit entry in the transaction of the write it records.
pub async fn audit(conn: &mut PgConnection, a: &NewAudit<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO console_audit (actor_id, actor_email, environment_id, company_id, action,
             target, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(a.actor_id)
    .bind(a.actor_email)
    .bind(a.environment_id)
    .bind(a.company_id)
    .bind(a.action)
    .bind(a.target)
    .bind(a.before.map(sqlx::types::Json))
    .bind(a.after.map(sqlx::types::Json))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_email: String,
    pub environment_key: Option<String>,
    pub company_id: Option<String>,
    pub action: String,
    pub target: String,
    pub before: Option<sqlx::types::Json<Value>>,
    pub after: Option<sqlx::types::Json<Value>>,
}

/// Audit entries, newest first, optionally of one company and/or one person (email).
pub async fn audit_entries(
    conn: &mut PgConnection,
    company_id: Option<&str>,
    actor_email: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id, a.at, a.actor_email, e.key AS environment_key, a.company_id, a.action,
                a.target, a.before, a.after
         FROM console_audit a LEFT JOIN environments e ON e.id = a.environment_id
         WHERE ($1::text IS NULL OR a.company_id = $1)
           AND ($2::text IS NULL OR a.actor_email = $2)
         ORDER BY a.at DESC, a.id DESC LIMIT $3 OFFSET $4",
    )
    .bind(company_id)
    .bind(actor_email)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// Records who wrote an override's note (an override created in the console).
pub async fn set_note_author(
    conn: &mut PgConnection,
    override_id: &str,
    author: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE company_overrides SET note_author = $2 WHERE id = $1")
        .bind(override_id)
        .bind(author)
        .execute(conn)
        .await?;
    Ok(())
}

/// Note authors of overrides, by override id.
pub async fn note_authors(
    conn: &mut PgConnection,
    override_ids: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, note_author FROM company_overrides WHERE id = ANY($1) AND note_author <> ''",
    )
    .bind(override_ids)
    .fetch_all(conn)
    .await
}

/// One company search hit.
#[derive(Debug, sqlx::FromRow)]
pub struct CompanyHit {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// `key=value` pairs, by key.
    pub keys: Vec<String>,
    /// Names of its live plans.
    pub plans: Vec<String>,
}

/// What to search for.
#[derive(Debug, Default)]
pub struct CompanySearch {
    /// A name prefix (any case), a key value prefix (exact case), or a company id; empty:
    /// every company.
    pub q: String,
    pub plan_id: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// Appended to a prefix, the end of its range: the last code point sorts after every
/// character a name or key continues the prefix with.
const PREFIX_END: &str = "\u{10FFFF}";

/// The columns of a hit, computed only for the page's companies (`page`: `id`, `ord`).
const HIT_SELECT: &str = "SELECT c.id, c.name, c.created_at,
    COALESCE((SELECT array_agg(k.key || '=' || k.value ORDER BY k.key)
              FROM company_keys k WHERE k.company_id = c.id), '{}') AS keys,
    COALESCE((SELECT array_agg(p.name ORDER BY p.name) FROM company_plans cp
              JOIN plans p ON p.id = cp.plan_id
              WHERE cp.company_id = c.id AND cp.ended_at IS NULL), '{}') AS plans
    FROM page JOIN companies c ON c.id = page.id ORDER BY page.ord";

/// Companies of the environment matching `s`. Each shape walks an index and computes a hit's
/// columns only for the page: a search by name prefix (byte order of the lower-cased name,
/// the order of its `text_pattern_ops` index), key value prefix or id; the members of one
/// plan (by company id, straight off the plan index); or everyone (newest first).
pub async fn search_companies(
    conn: &mut PgConnection,
    env_id: &str,
    s: &CompanySearch,
) -> Result<Vec<CompanyHit>, sqlx::Error> {
    let q = s.q.trim();
    if !q.is_empty() {
        // Prefixes as ranges (`~>=~`, `~<~`: the operators of the `text_pattern_ops`
        // indexes), so even a generic prepared plan walks just the range. Each branch is
        // capped at what the page can use; key hits come in key order.
        return sqlx::query_as(&format!(
            "WITH hits AS (
                 (SELECT id FROM companies
                  WHERE environment_id = $1
                    AND lower(name) ~>=~ lower($2) AND lower(name) ~<~ (lower($2) || $3)
                  ORDER BY lower(name) USING ~<~, id LIMIT $5 + $6)
                 UNION
                 (SELECT company_id FROM company_keys
                  WHERE environment_id = $1 AND value ~>=~ $2 AND value ~<~ ($2 || $3)
                  ORDER BY value USING ~<~ LIMIT $5 + $6)
                 UNION
                 SELECT id FROM companies WHERE environment_id = $1 AND id = $2
             ),
             page AS (
                 SELECT c.id, row_number() OVER (ORDER BY lower(c.name) USING ~<~, c.id) AS ord
                 FROM companies c JOIN hits h ON h.id = c.id
                 WHERE c.environment_id = $1
                   AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM company_plans cp
                        WHERE cp.company_id = c.id AND cp.plan_id = $4 AND cp.ended_at IS NULL))
                 ORDER BY lower(c.name) USING ~<~, c.id LIMIT $5 OFFSET $6
             )
             {HIT_SELECT}"
        ))
        .bind(env_id)
        .bind(q)
        .bind(PREFIX_END)
        .bind(&s.plan_id)
        .bind(s.limit)
        .bind(s.offset)
        .fetch_all(conn)
        .await;
    }
    if let Some(plan_id) = &s.plan_id {
        return sqlx::query_as(&format!(
            "WITH page AS (
                 SELECT company_id AS id, row_number() OVER (ORDER BY company_id) AS ord
                 FROM company_plans
                 WHERE environment_id = $1 AND plan_id = $2 AND ended_at IS NULL
                 ORDER BY company_id LIMIT $3 OFFSET $4
             )
             {HIT_SELECT}"
        ))
        .bind(env_id)
        .bind(plan_id)
        .bind(s.limit)
        .bind(s.offset)
        .fetch_all(conn)
        .await;
    }
    sqlx::query_as(&format!(
        "WITH page AS (
             SELECT id, row_number() OVER (ORDER BY created_at DESC, id DESC) AS ord
             FROM companies WHERE environment_id = $1
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3
         )
         {HIT_SELECT}"
    ))
    .bind(env_id)
    .bind(s.limit)
    .bind(s.offset)
    .fetch_all(conn)
    .await
}

/// One of a company's plans (live or ended), with its source and Stripe links.
#[derive(Debug, sqlx::FromRow)]
pub struct CompanyPlanRow {
    pub plan_id: String,
    pub plan_key: String,
    pub plan_name: String,
    pub is_base: bool,
    /// `manual` or `stripe`.
    pub source: String,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub trial_end: Option<DateTime<Utc>>,
    pub subscription_status: Option<String>,
}

/// The company's live plans and the last ten ended ones, live first.
pub async fn company_plans(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
) -> Result<Vec<CompanyPlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT cp.plan_id, p.key AS plan_key, p.name AS plan_name, cp.is_base, cp.source,
                cp.period_start, cp.period_end, cp.started_at, cp.ended_at,
                cp.stripe_subscription_id, s.customer_id AS stripe_customer_id, s.trial_end,
                s.status AS subscription_status
         FROM company_plans cp JOIN plans p ON p.id = cp.plan_id
         LEFT JOIN stripe_subscriptions s
           ON s.environment_id = cp.environment_id AND s.id = cp.stripe_subscription_id
         WHERE cp.environment_id = $1 AND cp.company_id = $2
         ORDER BY cp.ended_at IS NOT NULL, cp.ended_at DESC, cp.is_base DESC, p.name
         LIMIT 20",
    )
    .bind(env_id)
    .bind(company_id)
    .fetch_all(conn)
    .await
}

/// The Stripe customers of a company (for links to Stripe's dashboard).
pub async fn stripe_customers_of(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM stripe_customers
         WHERE environment_id = $1 AND company_id = $2 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(env_id)
    .bind(company_id)
    .fetch_all(conn)
    .await
}

/// A Stripe inbox event's payload, as received.
pub async fn stripe_event_payload(
    conn: &mut PgConnection,
    env_id: &str,
    event_id: &str,
) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(
        "SELECT payload FROM stripe_events WHERE environment_id = $1 AND id = $2",
    )
    .bind(env_id)
    .bind(event_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|j| j.0))
}
