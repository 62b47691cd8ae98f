//! The meter-event outbox: billable units owed to Stripe's Billing Meters.
//!
//! Written by [`bill`] inside the transaction that stores the track events (`events::ingest`),
//! so no unit is billed without its event and no event loses its unit. For each company and
//! tracked event, the metered entitlements of the company's plans ([`billing_rules`]) say
//! what is billable: `pay_as_you_go` every unit, `overage` the units above the allocation in
//! the entitlement's metric window, split exactly when one event crosses it. Only a company
//! whose active Stripe subscription has an item on the entitlement's metered price is billed.
//!
//! Drained by the sender (`stripe::meters`) with [`claim_due`]: leased rows, `SKIP LOCKED`,
//! and never a second row of a (customer, meter) pair while one is in flight.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::events::{Kind, NewEvent};
use super::Error;
use crate::engine::{self, MetricPeriod, MonthReset};
use crate::ids;

pub const STATUSES: &[&str] = &["pending", "sent", "failed", "expired"];

/// Stripe keeps meter events for this long; older units end `expired`.
pub const MAX_AGE_DAYS: i64 = 35;

/// One metered entitlement that bills a company's usage of one tracked event to a meter.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BillingRule {
    pub company_id: String,
    /// The tracked event (the feature's `event_subtype`).
    pub usage_event: String,
    pub entitlement_id: String,
    pub price_behavior: String,
    pub value_type: String,
    pub value_numeric: Option<i64>,
    pub metric_period: Option<String>,
    pub metric_period_month_reset: Option<String>,
    pub price_id: String,
    pub meter_id: String,
    /// The meter's `event_name`.
    pub meter_event_name: String,
    pub customer_payload_key: String,
    pub value_payload_key: String,
    pub stripe_customer_id: String,
}

impl BillingRule {
    /// The units included before billing starts: `None` when nothing is ever billable
    /// (an `overage` entitlement without a numeric allocation).
    fn included(&self) -> Option<i64> {
        match (self.price_behavior.as_str(), self.value_type.as_str()) {
            ("pay_as_you_go", _) => Some(0),
            ("overage", "numeric") => Some(self.value_numeric.unwrap_or(0).max(0)),
            _ => None,
        }
    }

    /// The usage counter the allocation is measured against.
    fn window(&self, anchor: Option<DateTime<Utc>>) -> (MetricPeriod, MonthReset) {
        let period = self
            .metric_period
            .as_deref()
            .and_then(MetricPeriod::parse)
            .unwrap_or(MetricPeriod::AllTime);
        let reset = if period == MetricPeriod::CurrentMonth {
            self.metric_period_month_reset
                .as_deref()
                .and_then(MonthReset::parse)
                .unwrap_or_default()
        } else {
            MonthReset::FirstOfMonth
        };
        (period, engine::counter_reset(period, reset, anchor))
    }
}

/// Units billable when usage goes from `before` by `quantity`, with `included` units free
/// (0 for pay-as-you-go): the part of the move that lies above the allocation. Negative
/// quantities (corrections) give negative values, the same way.
pub fn billable(included: i64, before: i64, quantity: i64) -> i64 {
    let above = |u: i64| u.saturating_sub(included).max(0);
    above(before.saturating_add(quantity)) - above(before)
}

/// The metered entitlements billing each `(company_id, tracked event)`: one per company,
/// event and meter (the most generous allocation when plans overlap), only where the
/// company's active subscription has an item on the metered price and the meter is active.
pub async fn billing_rules(
    conn: &mut PgConnection,
    pairs: &[(String, String)],
) -> Result<Vec<BillingRule>, sqlx::Error> {
    let (companies, events): (Vec<&str>, Vec<&str>) =
        pairs.iter().map(|(c, e)| (c.as_str(), e.as_str())).unzip();
    sqlx::query_as(
        "SELECT DISTINCT ON (p.company_id, p.event_name, pr.meter_id)
                p.company_id, p.event_name AS usage_event, e.id AS entitlement_id,
                e.price_behavior, e.value_type, e.value_numeric, e.metric_period,
                e.metric_period_month_reset, si.price_id, pr.meter_id,
                m.event_name AS meter_event_name, m.customer_payload_key, m.value_payload_key,
                s.customer_id AS stripe_customer_id
         FROM unnest($1::text[], $2::text[]) AS p (company_id, event_name)
         JOIN company_plans cp ON cp.company_id = p.company_id AND cp.ended_at IS NULL
         JOIN plan_entitlements e ON e.plan_id = cp.plan_id
              AND e.price_behavior IN ('pay_as_you_go', 'overage')
         JOIN features f ON f.id = e.feature_id AND f.feature_type = 'event'
              AND f.event_subtype = p.event_name
         JOIN stripe_subscriptions s ON s.company_id = p.company_id
              AND s.status IN ('trialing', 'active', 'past_due')
         JOIN stripe_subscription_items si ON si.environment_id = s.environment_id
              AND si.subscription_id = s.id
              AND si.price_id IN (e.monthly_metered_price_id, e.yearly_metered_price_id)
         JOIN billing_prices pr ON pr.environment_id = s.environment_id AND pr.id = si.price_id
              AND pr.meter_id IS NOT NULL AND pr.deleted_at IS NULL
         JOIN billing_meters m ON m.environment_id = pr.environment_id AND m.id = pr.meter_id
              AND m.status = 'active'
         ORDER BY p.company_id, p.event_name, pr.meter_id,
                  (e.price_behavior = 'pay_as_you_go') DESC, e.value_numeric DESC NULLS FIRST, e.id",
    )
    .bind(&companies)
    .bind(&events)
    .fetch_all(conn)
    .await
}

/// What billing needs from ingestion besides the events.
#[derive(Debug, Clone, Default)]
pub struct MeterContext {
    /// Whether any plan entitlement is metered at all (when none is, nothing is billed and
    /// nothing is read).
    pub metered_exist: bool,
    /// Per environment id: `stripe_meter_flush_secs` (absent or 0: one row per event).
    pub flush_secs: HashMap<String, u64>,
}

/// Per `(company, event, period, counter reset)` of the current windows: the counter's
/// value after the batch and how much the batch added to it.
pub type CounterMoves = HashMap<(String, String, &'static str, &'static str), (i64, i64)>;

/// One billable amount, before it is written.
#[derive(Debug, Clone)]
struct Unit<'a> {
    env: &'a str,
    rule: &'a BillingRule,
    usage_event_id: &'a str,
    value: i64,
    timestamp: DateTime<Utc>,
}

/// Writes the meter-event rows a stored batch makes billable. `company_of[i]` and
/// `duplicate[i]`/`ids[i]` describe event `i` as ingestion resolved it; `moves` are the
/// counters it wrote; `anchors` the billing-cycle starts it used. Returns the rows written.
#[allow(clippy::too_many_arguments)]
pub async fn bill(
    conn: &mut PgConnection,
    ctx: &MeterContext,
    events: &[NewEvent],
    ids: &[String],
    duplicate: &[bool],
    company_of: &[Option<String>],
    moves: &CounterMoves,
    anchors: &HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    if !ctx.metered_exist {
        return Ok(0);
    }
    let mut pairs: Vec<(String, String)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match (&e.kind, &company_of[i]) {
            (Kind::Track(t), Some(c)) if !duplicate[i] => Some((c.clone(), t.event.clone())),
            _ => None,
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    if pairs.is_empty() {
        return Ok(0);
    }
    let rules = billing_rules(conn, &pairs).await?;
    if rules.is_empty() {
        return Ok(0);
    }
    let mut units = Vec::new();
    for rule in &rules {
        let Some(included) = rule.included() else {
            continue;
        };
        let (period, reset) = rule.window(anchors.get(&rule.company_id).copied());
        let key = (
            rule.company_id.clone(),
            rule.usage_event.clone(),
            period.as_str(),
            reset.as_str(),
        );
        let Some(&(after, delta)) = moves.get(&key) else {
            continue;
        };
        // The counter before this batch; the batch's events move it in order.
        let mut usage = after - delta;
        for (i, e) in events.iter().enumerate() {
            let Kind::Track(t) = &e.kind else { continue };
            if duplicate[i]
                || t.event != rule.usage_event
                || company_of[i].as_deref() != Some(rule.company_id.as_str())
            {
                continue;
            }
            let value = billable(included, usage, t.quantity);
            usage += t.quantity;
            // Backfilled history counts for usage, never for billing.
            if e.backfill || value == 0 {
                continue;
            }
            units.push(Unit {
                env: &e.environment_id,
                rule,
                usage_event_id: &ids[i],
                value,
                timestamp: match (e.trusted_client_clock, e.sent_at) {
                    (true, Some(at)) => at,
                    _ => now,
                },
            });
        }
    }
    let (single, windowed): (Vec<Unit<'_>>, Vec<Unit<'_>>) = units
        .into_iter()
        .partition(|u| ctx.flush_secs.get(u.env).copied().unwrap_or(0) == 0);
    let mut written = insert_single(conn, &single).await?;
    written += upsert_windows(conn, ctx, &windowed).await?;
    Ok(written)
}

/// An identifier Stripe accepts (at most 100 characters): `readable` itself when short
/// enough, else a digest of it.
fn identifier(readable: &str) -> String {
    if readable.len() <= 80 {
        return readable.to_string();
    }
    let digest = Sha256::digest(readable.as_bytes());
    format!("ent-{}", &hex::encode(digest)[..60])
}

/// Columns of rows to insert, for `unnest`.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    env: Vec<String>,
    company: Vec<String>,
    customer: Vec<String>,
    meter: Vec<String>,
    event_name: Vec<String>,
    customer_key: Vec<String>,
    value_key: Vec<String>,
    price: Vec<String>,
    entitlement: Vec<String>,
    usage_event: Vec<Option<String>>,
    identifier: Vec<String>,
    /// Aggregated rows: the identifier when the window already has a claimed row.
    late_identifier: Vec<String>,
    value: Vec<i64>,
    timestamp: Vec<DateTime<Utc>>,
    window_start: Vec<Option<DateTime<Utc>>>,
    window_end: Vec<Option<DateTime<Utc>>>,
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl Columns {
    /// Binds the columns as `$1`…`$16`, in [`INSERT_COLUMNS`] order.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(&self.id)
            .bind(&self.env)
            .bind(&self.company)
            .bind(&self.customer)
            .bind(&self.meter)
            .bind(&self.event_name)
            .bind(&self.customer_key)
            .bind(&self.value_key)
            .bind(&self.price)
            .bind(&self.entitlement)
            .bind(&self.usage_event)
            .bind(&self.identifier)
            .bind(&self.value)
            .bind(&self.timestamp)
            .bind(&self.window_start)
            .bind(&self.window_end)
    }

    fn push(&mut self, env: &str, rule: &BillingRule, usage_event: Option<&str>, value: i64) {
        self.id.push(ids::new_sortable_id("mevt"));
        self.env.push(env.to_string());
        self.company.push(rule.company_id.clone());
        self.customer.push(rule.stripe_customer_id.clone());
        self.meter.push(rule.meter_id.clone());
        self.event_name.push(rule.meter_event_name.clone());
        self.customer_key.push(rule.customer_payload_key.clone());
        self.value_key.push(rule.value_payload_key.clone());
        self.price.push(rule.price_id.clone());
        self.entitlement.push(rule.entitlement_id.clone());
        self.usage_event.push(usage_event.map(str::to_string));
        self.value.push(value);
    }
}

const INSERT_COLUMNS: &str = "id, environment_id, company_id, stripe_customer_id, meter_id,
    event_name, customer_payload_key, value_payload_key, price_id, entitlement_id,
    usage_event_id, identifier, value, timestamp, window_start, window_end";

async fn insert_single(conn: &mut PgConnection, units: &[Unit<'_>]) -> Result<u64, Error> {
    if units.is_empty() {
        return Ok(0);
    }
    let mut c = Columns::default();
    for u in units {
        c.push(u.env, u.rule, Some(u.usage_event_id), u.value);
        c.identifier.push(identifier(&format!(
            "{}-{}",
            u.usage_event_id, u.rule.meter_id
        )));
        c.timestamp.push(u.timestamp);
        c.window_start.push(None);
        c.window_end.push(None);
    }
    let sql = format!(
        "INSERT INTO meter_events ({INSERT_COLUMNS})
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
             $12::text[], $13::bigint[], $14::timestamptz[], $15::timestamptz[],
             $16::timestamptz[])"
    );
    let done = c.bind(sqlx::query(&sql)).execute(conn).await?;
    Ok(done.rows_affected())
}

/// Adds windowed units to their window's open row (one per company, meter and window),
/// creating it when there is none. A window whose row a sender already claimed gets a new
/// row with an identifier of its own.
async fn upsert_windows(
    conn: &mut PgConnection,
    ctx: &MeterContext,
    units: &[Unit<'_>],
) -> Result<u64, Error> {
    if units.is_empty() {
        return Ok(0);
    }
    // Summed per window first; sorted, so concurrent writers lock rows in one order.
    let mut sums: BTreeMap<(&str, &str, &str, i64), (&Unit<'_>, i64)> = BTreeMap::new();
    for u in units {
        let secs = ctx.flush_secs.get(u.env).copied().unwrap_or(1).max(1) as i64;
        let start = u.timestamp.timestamp().div_euclid(secs) * secs;
        let e = sums
            .entry((u.env, &u.rule.company_id, &u.rule.meter_id, start))
            .or_insert((u, 0));
        e.1 += u.value;
    }
    let mut c = Columns::default();
    for ((env, _, _, start), (u, value)) in sums {
        if value == 0 {
            continue;
        }
        let secs = ctx.flush_secs.get(env).copied().unwrap_or(1).max(1) as i64;
        let start_at = DateTime::from_timestamp(start, 0).unwrap_or(u.timestamp);
        let end_at = DateTime::from_timestamp(start + secs, 0).unwrap_or(u.timestamp);
        c.push(env, u.rule, None, value);
        let base = identifier(&format!(
            "{}-{}-{start}",
            u.rule.company_id, u.rule.meter_id
        ));
        let row_id = c.id.last().cloned().unwrap_or_default();
        let tail = &row_id[row_id.len().saturating_sub(11)..];
        c.late_identifier.push(format!("{base}-{tail}"));
        c.identifier.push(base);
        c.timestamp.push(start_at);
        c.window_start.push(Some(start_at));
        c.window_end.push(Some(end_at));
    }
    if c.id.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO meter_events ({INSERT_COLUMNS})
         SELECT r.id, r.env, r.company, r.customer, r.meter, r.event_name, r.customer_key,
                r.value_key, r.price, r.entitlement, r.usage_event,
                CASE WHEN EXISTS (SELECT 1 FROM meter_events x
                                  WHERE x.environment_id = r.env AND x.identifier = r.identifier)
                     THEN r.late_identifier ELSE r.identifier END,
                r.value, r.ts, r.window_start, r.window_end
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
             $12::text[], $13::bigint[], $14::timestamptz[], $15::timestamptz[],
             $16::timestamptz[], $17::text[])
             AS r (id, env, company, customer, meter, event_name, customer_key, value_key,
                   price, entitlement, usage_event, identifier, value, ts, window_start,
                   window_end, late_identifier)
         ON CONFLICT (environment_id, company_id, meter_id, window_start)
             WHERE status = 'pending' AND attempts = 0 AND window_start IS NOT NULL
         DO UPDATE SET value = meter_events.value + EXCLUDED.value, updated_at = now()"
    );
    let done = c
        .bind(sqlx::query(&sql))
        .bind(&c.late_identifier)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// A row a sender holds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub environment_id: String,
    pub stripe_customer_id: String,
    pub meter_id: String,
    pub event_name: String,
    pub customer_payload_key: String,
    pub value_payload_key: String,
    pub identifier: String,
    pub value: i64,
    pub timestamp: DateTime<Utc>,
    /// This claim's attempt number.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` due rows for `lease_secs`: at most one per (customer, meter), and
/// none of a pair that has a row in flight. Claims are serialised across replicas (a
/// transaction advisory lock held for the statement), so two replicas never claim two rows
/// of one pair at once.
pub async fn claim_due(pool: &PgPool, limit: i64, lease_secs: f64) -> Result<Vec<Claimed>, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('entitled.meter_events.claim'))")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_as(
        "WITH busy AS (
             SELECT DISTINCT stripe_customer_id, meter_id FROM meter_events
             WHERE status = 'pending' AND claimed_until IS NOT NULL AND claimed_until > now()),
         due AS (
             SELECT e.id, e.stripe_customer_id, e.meter_id, e.next_attempt_at, e.timestamp
             FROM meter_events e
             WHERE e.status = 'pending' AND e.next_attempt_at <= now()
               AND (e.window_end IS NULL OR e.window_end <= now())
             ORDER BY e.next_attempt_at
             LIMIT $1 * 20),
         first_per_pair AS (
             SELECT id, next_attempt_at, row_number() OVER (
                 PARTITION BY stripe_customer_id, meter_id ORDER BY timestamp, id) AS n
             FROM due d
             WHERE NOT EXISTS (SELECT 1 FROM busy b WHERE b.stripe_customer_id = d.stripe_customer_id
                                                      AND b.meter_id = d.meter_id)),
         picked AS (
             SELECT e.id FROM meter_events e
             JOIN first_per_pair f ON f.id = e.id AND f.n = 1
             ORDER BY f.next_attempt_at LIMIT $1
             FOR UPDATE OF e SKIP LOCKED)
         UPDATE meter_events e SET attempts = e.attempts + 1,
             claimed_until = now() + make_interval(secs => $2),
             next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
         FROM picked WHERE e.id = picked.id
         RETURNING e.id, e.environment_id, e.stripe_customer_id, e.meter_id, e.event_name,
                   e.customer_payload_key, e.value_payload_key, e.identifier, e.value,
                   e.timestamp, e.attempts, e.created_at",
    )
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent,
    /// Try again at this time; the error stays visible meanwhile.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Stripe refused it (a 4xx); its message.
    Failed(String),
    /// Older than Stripe accepts.
    Expired(String),
}

/// Records the outcome of attempt `c.attempts`, unless the lease ran out and another
/// attempt was claimed meanwhile. Returns whether it was recorded.
pub async fn finish(pool: &PgPool, c: &Claimed, outcome: &Outcome) -> Result<bool, Error> {
    let (status, error, retry_at) = match outcome {
        Outcome::Sent => ("sent", None, None),
        Outcome::Retry { at, error } => ("pending", Some(error.as_str()), Some(*at)),
        Outcome::Failed(e) => ("failed", Some(e.as_str()), None),
        Outcome::Expired(e) => ("expired", Some(e.as_str()), None),
    };
    let done = sqlx::query(
        "UPDATE meter_events SET status = $3, error = $4,
             next_attempt_at = COALESCE($5, next_attempt_at), claimed_until = NULL,
             sent_at = CASE WHEN $3 = 'sent' THEN now() END, updated_at = now()
         WHERE id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(&c.id)
    .bind(c.attempts)
    .bind(status)
    .bind(error)
    .bind(retry_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// `GET /stripe/meter-events` rows.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MeterEventRow {
    pub id: String,
    /// The environment's key.
    pub environment: String,
    pub company_id: String,
    pub stripe_customer_id: String,
    /// The meter's id (`mtr_…`).
    pub meter: String,
    /// The meter's `event_name`, as sent.
    pub event_name: String,
    /// Sent with every attempt; Stripe drops a repeat.
    pub identifier: String,
    pub value: i64,
    /// The event's time as sent to Stripe.
    pub timestamp: DateTime<Utc>,
    /// `pending`, `sent`, `failed` or `expired`.
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub usage_event_id: Option<String>,
    pub price_id: String,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// What `GET /stripe/meter-events` selects. `None` does not filter.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub company_id: Option<&'a str>,
    pub meter: Option<&'a str>,
}

/// The environment's meter events `filter` selects, newest first.
pub async fn list(
    conn: &mut PgConnection,
    env_id: &str,
    filter: &Filter<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<MeterEventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, env.key AS environment, e.company_id, e.stripe_customer_id,
                e.meter_id AS meter, e.event_name, e.identifier, e.value, e.timestamp, e.status,
                e.attempts, e.error, e.usage_event_id, e.price_id, e.window_start, e.window_end,
                e.next_attempt_at, e.created_at, e.sent_at
         FROM meter_events e JOIN environments env ON env.id = e.environment_id
         WHERE e.environment_id = $1
           AND ($2::text IS NULL OR e.id = $2)
           AND ($3::text IS NULL OR e.status = $3)
           AND ($4::text IS NULL OR e.company_id = $4)
           AND ($5::text IS NULL OR e.meter_id = $5)
         ORDER BY e.created_at DESC, e.id DESC
         LIMIT $6 OFFSET $7",
    )
    .bind(env_id)
    .bind(filter.id)
    .bind(filter.status)
    .bind(filter.company_id)
    .bind(filter.meter)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// Makes a failed, expired or pending row due now (a pending one in flight keeps its
/// lease). Not found: `NotFound`; already sent: `Conflict` (a resend could bill twice once
/// Stripe has forgotten the identifier).
pub async fn retry(conn: &mut PgConnection, env_id: &str, id: &str) -> Result<(), Error> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM meter_events WHERE environment_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(env_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match status.as_deref() {
        None => Err(Error::not_found(format!("meter event {id:?} not found"))),
        Some("sent") => Err(Error::conflict(format!(
            "meter event {id:?} was sent already; Stripe has it"
        ))),
        Some(_) => {
            sqlx::query(
                "UPDATE meter_events SET status = 'pending', error = NULL, updated_at = now(),
                     next_attempt_at = CASE WHEN claimed_until > now() THEN next_attempt_at
                                            ELSE now() END
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    }
}

/// Rows waiting to be sent, and the age in seconds of the oldest.
pub async fn queue_depth(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM meter_events WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billable_units_split_exactly_at_the_allocation() {
        // (included, before, quantity) → billable
        let table: &[(i64, i64, i64, i64)] = &[
            // pay as you go: every unit, corrections negative
            (0, 0, 5, 5),
            (0, 100, 1, 1),
            (0, 10, -3, -3),
            // overage, 100 included
            (100, 0, 99, 0),
            (100, 99, 1, 0),
            (100, 100, 1, 1),
            (100, 95, 10, 5),
            (100, 0, 150, 50),
            (100, 150, 20, 20),
            // corrections above and across the allocation
            (100, 150, -20, -20),
            (100, 110, -20, -10),
            (100, 90, -20, 0),
            (100, 0, 0, 0),
        ];
        for &(included, before, quantity, want) in table {
            assert_eq!(
                billable(included, before, quantity),
                want,
                "included {included}, before {before}, quantity {quantity}"
            );
        }
        // A batch's events sum to the move of the whole batch.
        let mut usage = 40;
        let total: i64 = [30, 30, 30, -5, 40]
            .iter()
            .map(|q| {
                let v = billable(100, usage, *q);
                usage += q;
                v
            })
            .sum();
        assert_eq!(total, billable(100, 40, 125));
    }

    #[test]
    fn identifiers_fit_stripe() {
        assert_eq!(identifier("evnt_1-mtr_1"), "evnt_1-mtr_1");
        let long = identifier(&"x".repeat(300));
        assert!(long.len() <= 100 && long.starts_with("ent-"));
        assert_eq!(long, identifier(&"x".repeat(300)), "deterministic");
    }
}
