//! SQL for insights: check-count buckets, the environment summary, top features and plan
//! growth. Every query is scoped to one environment (catalog counts are shared).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Check counts taken out of a process's memory for one flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    pub environment_id: String,
    pub flag_id: String,
    pub checks: u64,
    pub allowed: u64,
}

/// Adds drained in-memory check counts to the hourly bucket `bucket_start`.
pub async fn add_check_counts(
    pool: &sqlx::PgPool,
    bucket_start: DateTime<Utc>,
    counts: &[Drained],
) -> super::Result<()> {
    let env_ids: Vec<&str> = counts.iter().map(|c| c.environment_id.as_str()).collect();
    let flag_ids: Vec<&str> = counts.iter().map(|c| c.flag_id.as_str()).collect();
    let checks: Vec<i64> = counts.iter().map(|c| c.checks as i64).collect();
    let allowed: Vec<i64> = counts.iter().map(|c| c.allowed as i64).collect();
    sqlx::query(
        "INSERT INTO flag_check_counts (environment_id, flag_id, bucket_start, checks, allowed)
         SELECT e, f, $1, c, a FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
              AS t(e, f, c, a)
         ON CONFLICT (environment_id, bucket_start, flag_id) DO UPDATE
         SET checks = flag_check_counts.checks + EXCLUDED.checks,
             allowed = flag_check_counts.allowed + EXCLUDED.allowed",
    )
    .bind(bucket_start)
    .bind(&env_ids)
    .bind(&flag_ids)
    .bind(&checks)
    .bind(&allowed)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct SummaryRow {
    pub companies: i64,
    pub users: i64,
    pub features: i64,
    pub flags: i64,
    pub plans: i64,
    pub paid_companies: i64,
    pub companies_without_plan: i64,
    pub track_events: i64,
    pub identify_events: i64,
    pub tracked_quantity: i64,
    pub checks: i64,
}

/// Counts for the environment; events and checks since `since`.
pub async fn summary(
    conn: &mut PgConnection,
    env_id: &str,
    since: DateTime<Utc>,
) -> Result<SummaryRow, sqlx::Error> {
    sqlx::query_as(
        "SELECT
            (SELECT count(*) FROM companies WHERE environment_id = $1) AS companies,
            (SELECT count(*) FROM users WHERE environment_id = $1) AS users,
            (SELECT count(*) FROM features) AS features,
            (SELECT count(*) FROM flags) AS flags,
            (SELECT count(*) FROM plans) AS plans,
            (SELECT count(DISTINCT cp.company_id) FROM company_plans cp
               JOIN plans p ON p.id = cp.plan_id
              WHERE cp.environment_id = $1 AND cp.ended_at IS NULL
                AND p.billing_product_id IS NOT NULL) AS paid_companies,
            (SELECT count(*) FROM companies c WHERE c.environment_id = $1
                AND NOT EXISTS (SELECT 1 FROM company_plans cp
                                 WHERE cp.company_id = c.id AND cp.ended_at IS NULL))
                AS companies_without_plan,
            e.track_events, e.identify_events, e.tracked_quantity,
            (SELECT COALESCE(sum(checks), 0)::bigint FROM flag_check_counts
              WHERE environment_id = $1 AND bucket_start >= date_trunc('hour', $2::timestamptz))
                AS checks
         FROM (SELECT count(*) FILTER (WHERE event_type = 'track') AS track_events,
                      count(*) FILTER (WHERE event_type = 'identify') AS identify_events,
                      COALESCE(sum(quantity) FILTER (WHERE event_type = 'track'), 0)::bigint
                          AS tracked_quantity
                 FROM events WHERE environment_id = $1 AND created_at >= $2) e",
    )
    .bind(env_id)
    .bind(since)
    .fetch_one(conn)
    .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct PlanCountRow {
    pub id: String,
    pub key: String,
    pub name: String,
    pub plan_type: String,
    pub companies: i64,
}

/// Every plan with the number of the environment's companies on it now, most first.
pub async fn plan_counts(
    conn: &mut PgConnection,
    env_id: &str,
) -> Result<Vec<PlanCountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.key, p.name, p.plan_type, count(cp.company_id) AS companies
         FROM plans p
         LEFT JOIN company_plans cp
                ON cp.plan_id = p.id AND cp.environment_id = $1 AND cp.ended_at IS NULL
         GROUP BY p.id
         ORDER BY companies DESC, p.key",
    )
    .bind(env_id)
    .fetch_all(conn)
    .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct TopFeatureRow {
    pub id: String,
    pub key: String,
    pub name: String,
    pub feature_type: String,
    pub event_subtype: Option<String>,
    pub usage: i64,
    pub prior_usage: i64,
    pub checks: i64,
    pub prior_checks: i64,
    pub allowed_checks: i64,
}

/// What to rank features by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    Usage,
    Checks,
}

/// Features by tracked usage (the quantity of track events named by the feature's
/// `event_subtype`) and by checks of the feature's flag in `[start, end)`, with the same
/// figures for the window of equal length before it. Checks count per hour: the window's
/// edges round down to the hour.
pub async fn top_features(
    conn: &mut PgConnection,
    env_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    prior_start: DateTime<Utc>,
    by: Ranking,
    limit: i64,
) -> Result<Vec<TopFeatureRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH usage AS (
            SELECT e.event_name,
                   COALESCE(sum(e.quantity) FILTER (WHERE e.created_at >= $2), 0)::bigint AS usage,
                   COALESCE(sum(e.quantity) FILTER (WHERE e.created_at < $2), 0)::bigint AS prior_usage
            FROM events e
            WHERE e.environment_id = $1 AND e.event_type = 'track'
              AND e.event_name IN (SELECT event_subtype FROM features WHERE event_subtype IS NOT NULL)
              AND e.created_at >= $4 AND e.created_at < $3
            GROUP BY e.event_name
         ), checks AS (
            SELECT fl.feature_id,
                   COALESCE(sum(c.checks) FILTER (WHERE c.bucket_start >= date_trunc('hour', $2::timestamptz)), 0)::bigint AS checks,
                   COALESCE(sum(c.allowed) FILTER (WHERE c.bucket_start >= date_trunc('hour', $2::timestamptz)), 0)::bigint AS allowed_checks,
                   COALESCE(sum(c.checks) FILTER (WHERE c.bucket_start < date_trunc('hour', $2::timestamptz)), 0)::bigint AS prior_checks
            FROM flag_check_counts c JOIN flags fl ON fl.id = c.flag_id
            WHERE c.environment_id = $1 AND fl.feature_id IS NOT NULL
              AND c.bucket_start >= date_trunc('hour', $4::timestamptz) AND c.bucket_start < $3
            GROUP BY fl.feature_id
         )
         SELECT f.id, f.key, f.name, f.feature_type, f.event_subtype,
                COALESCE(u.usage, 0) AS usage, COALESCE(u.prior_usage, 0) AS prior_usage,
                COALESCE(c.checks, 0) AS checks, COALESCE(c.prior_checks, 0) AS prior_checks,
                COALESCE(c.allowed_checks, 0) AS allowed_checks
         FROM features f
         LEFT JOIN usage u ON u.event_name = f.event_subtype
         LEFT JOIN checks c ON c.feature_id = f.id
         ORDER BY CASE WHEN $5 THEN COALESCE(c.checks, 0) ELSE COALESCE(u.usage, 0) END DESC,
                  CASE WHEN $5 THEN COALESCE(u.usage, 0) ELSE COALESCE(c.checks, 0) END DESC,
                  f.key
         LIMIT $6",
    )
    .bind(env_id)
    .bind(start)
    .bind(end)
    .bind(prior_start)
    .bind(by == Ranking::Checks)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Time buckets of plan growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Month,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct GrowthRow {
    pub bucket: DateTime<Utc>,
    pub plan_id: String,
    pub plan_key: String,
    pub plan_name: String,
    pub plan_type: String,
    pub joined: i64,
    pub left: i64,
    pub subscribers: i64,
}

/// Per plan and UTC day (or month) bucket overlapping `[start, end)`: memberships that
/// started (`joined`) and ended (`left`) in the window within that bucket, and companies on
/// the plan at the bucket's end (or at `end`, for the last). Plans without any membership
/// in the window are left out.
pub async fn plan_growth(
    conn: &mut PgConnection,
    env_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    granularity: Granularity,
) -> Result<Vec<GrowthRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH buckets AS (
            SELECT (b AT TIME ZONE 'UTC') AS bucket
            FROM generate_series(date_trunc($4, $2::timestamptz AT TIME ZONE 'UTC'),
                                 ($3::timestamptz AT TIME ZONE 'UTC') - interval '1 microsecond',
                                 ('1 ' || $4)::interval) AS b
         ), active AS (
            SELECT plan_id, started_at, ended_at FROM company_plans
            WHERE environment_id = $1 AND started_at < $3 AND (ended_at IS NULL OR ended_at >= $2)
         ), base AS (
            SELECT plan_id, count(*) AS n FROM active
            WHERE started_at < $2 GROUP BY plan_id
         ), joins AS (
            SELECT plan_id, date_trunc($4, started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                   count(*) AS n
            FROM active WHERE started_at >= $2 GROUP BY 1, 2
         ), leaves AS (
            SELECT plan_id, date_trunc($4, ended_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                   count(*) AS n
            FROM active WHERE ended_at IS NOT NULL AND ended_at < $3 GROUP BY 1, 2
         )
         SELECT b.bucket, p.id AS plan_id, p.key AS plan_key, p.name AS plan_name, p.plan_type,
                COALESCE(j.n, 0) AS joined, COALESCE(l.n, 0) AS \"left\",
                (COALESCE(base.n, 0)
                 + sum(COALESCE(j.n, 0) - COALESCE(l.n, 0))
                   OVER (PARTITION BY p.id ORDER BY b.bucket))::bigint AS subscribers
         FROM (SELECT DISTINCT plan_id FROM active) a
         JOIN plans p ON p.id = a.plan_id
         CROSS JOIN buckets b
         LEFT JOIN base ON base.plan_id = p.id
         LEFT JOIN joins j ON j.plan_id = p.id AND j.bucket = b.bucket
         LEFT JOIN leaves l ON l.plan_id = p.id AND l.bucket = b.bucket
         ORDER BY b.bucket, p.key",
    )
    .bind(env_id)
    .bind(start)
    .bind(end)
    .bind(granularity.as_str())
    .fetch_all(conn)
    .await
}
