//! Stripe's side of the model: per-object versions, billing products and prices, customers,
//! subscriptions and their items, and the Stripe memberships (company_plans rows with
//! `source = 'stripe'`) derived from them. Every function takes the caller's connection or
//! transaction; the caller owns the boundary.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::rows::PgQuery;
use crate::ids;

/// Records `event_created` as the newest event applied to `object_id`, unless a newer one
/// already was. Returns false when the event is older than what was applied (skip it).
///
/// The row stays locked until the transaction ends, so applies of one object serialise: a
/// concurrent event for the same object waits here, then compares against the committed
/// version.
pub async fn claim_version(
    conn: &mut PgConnection,
    env_id: &str,
    object_id: &str,
    object_type: &str,
    event_id: &str,
    event_created: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let claimed = claim_versions(
        conn,
        env_id,
        &[object_id],
        object_type,
        &[event_id],
        &[event_created],
    )
    .await?;
    Ok(!claimed.is_empty())
}

/// [`claim_version`] for many objects of one type at once, each at its own version
/// (`sources[i]`, `created[i]` for `object_ids[i]`; a listed page gives every object the
/// same one). Returns the ids claimed; the others had a newer version applied. Rows are
/// locked in id order, so two batches over overlapping objects cannot deadlock here. An id
/// twice in one call is an error (the caller keeps one version per object).
pub async fn claim_versions(
    conn: &mut PgConnection,
    env_id: &str,
    object_ids: &[&str],
    object_type: &str,
    sources: &[&str],
    created: &[DateTime<Utc>],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO stripe_object_versions AS v
             (environment_id, object_id, object_type, last_event_created, last_event_id)
         SELECT $1, o.id, $3, o.created, o.source
         FROM unnest($2::text[], $4::text[], $5::timestamptz[]) AS o (id, source, created)
         ORDER BY o.id
         ON CONFLICT (environment_id, object_id) DO UPDATE
             SET last_event_created = EXCLUDED.last_event_created,
                 last_event_id = EXCLUDED.last_event_id, updated_at = now()
             WHERE v.last_event_created <= EXCLUDED.last_event_created
         RETURNING object_id",
    )
    .bind(env_id)
    .bind(object_ids)
    .bind(object_type)
    .bind(sources)
    .bind(created)
    .fetch_all(conn)
    .await
}

/// A product as Stripe last described it.
#[derive(Debug, Clone)]
pub struct ProductFields {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub metadata: Map<String, Value>,
    pub livemode: bool,
    pub stripe_created: Option<DateTime<Utc>>,
    pub deleted: bool,
}

/// What an upsert did: `None` when the stored row already said the same.
pub type Written = Option<Write>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Created,
    Updated,
}

pub(crate) fn written(inserted: Option<bool>) -> Written {
    inserted.map(|i| if i { Write::Created } else { Write::Updated })
}

pub async fn upsert_product(
    conn: &mut PgConnection,
    env_id: &str,
    p: &ProductFields,
) -> Result<Written, sqlx::Error> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO billing_products (environment_id, id, name, description, active, metadata,
             livemode, stripe_created, deleted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN now() END)
         ON CONFLICT (environment_id, id) DO UPDATE SET
             name = EXCLUDED.name, description = EXCLUDED.description, active = EXCLUDED.active,
             metadata = EXCLUDED.metadata, livemode = EXCLUDED.livemode,
             stripe_created = COALESCE(EXCLUDED.stripe_created, billing_products.stripe_created),
             deleted_at = CASE WHEN $9 THEN COALESCE(billing_products.deleted_at, now()) END,
             updated_at = now()
         WHERE (billing_products.name, billing_products.description, billing_products.active,
                billing_products.metadata, billing_products.livemode,
                billing_products.deleted_at IS NOT NULL)
               IS DISTINCT FROM
               (EXCLUDED.name, EXCLUDED.description, EXCLUDED.active, EXCLUDED.metadata,
                EXCLUDED.livemode, $9)
         RETURNING (xmax = 0)",
    )
    .bind(env_id)
    .bind(&p.id)
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.active && !p.deleted)
    .bind(sqlx::types::Json(&p.metadata))
    .bind(p.livemode)
    .bind(p.stripe_created)
    .bind(p.deleted)
    .fetch_optional(conn)
    .await?;
    Ok(written(inserted))
}

/// A price as Stripe last described it.
#[derive(Debug, Clone)]
pub struct PriceFields {
    pub id: String,
    pub product_id: String,
    pub active: bool,
    pub currency: String,
    pub unit_amount: Option<i64>,
    pub billing_scheme: Option<String>,
    pub price_type: Option<String>,
    pub recurring_interval: Option<String>,
    pub recurring_interval_count: Option<i32>,
    pub usage_type: Option<String>,
    /// `recurring.meter`: the meter a metered price bills.
    pub meter_id: Option<String>,
    pub nickname: Option<String>,
    pub lookup_key: Option<String>,
    pub metadata: Map<String, Value>,
    pub livemode: bool,
    pub stripe_created: Option<DateTime<Utc>>,
    pub deleted: bool,
}

pub async fn upsert_price(
    conn: &mut PgConnection,
    env_id: &str,
    p: &PriceFields,
) -> Result<Written, sqlx::Error> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO billing_prices (environment_id, id, product_id, active, currency, unit_amount,
             billing_scheme, price_type, recurring_interval, recurring_interval_count, usage_type,
             nickname, lookup_key, metadata, livemode, stripe_created, deleted_at, meter_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 CASE WHEN $17 THEN now() END, $18)
         ON CONFLICT (environment_id, id) DO UPDATE SET
             product_id = EXCLUDED.product_id, active = EXCLUDED.active,
             currency = EXCLUDED.currency, unit_amount = EXCLUDED.unit_amount,
             billing_scheme = EXCLUDED.billing_scheme, price_type = EXCLUDED.price_type,
             recurring_interval = EXCLUDED.recurring_interval,
             recurring_interval_count = EXCLUDED.recurring_interval_count,
             usage_type = EXCLUDED.usage_type, nickname = EXCLUDED.nickname,
             lookup_key = EXCLUDED.lookup_key, metadata = EXCLUDED.metadata,
             livemode = EXCLUDED.livemode, meter_id = EXCLUDED.meter_id,
             stripe_created = COALESCE(EXCLUDED.stripe_created, billing_prices.stripe_created),
             deleted_at = CASE WHEN $17 THEN COALESCE(billing_prices.deleted_at, now()) END,
             updated_at = now()
         WHERE (billing_prices.product_id, billing_prices.active, billing_prices.currency,
                billing_prices.unit_amount, billing_prices.billing_scheme, billing_prices.price_type,
                billing_prices.recurring_interval, billing_prices.recurring_interval_count,
                billing_prices.usage_type, billing_prices.nickname, billing_prices.lookup_key,
                billing_prices.metadata, billing_prices.livemode,
                billing_prices.deleted_at IS NOT NULL, billing_prices.meter_id)
               IS DISTINCT FROM
               (EXCLUDED.product_id, EXCLUDED.active, EXCLUDED.currency, EXCLUDED.unit_amount,
                EXCLUDED.billing_scheme, EXCLUDED.price_type, EXCLUDED.recurring_interval,
                EXCLUDED.recurring_interval_count, EXCLUDED.usage_type, EXCLUDED.nickname,
                EXCLUDED.lookup_key, EXCLUDED.metadata, EXCLUDED.livemode, $17,
                EXCLUDED.meter_id)
         RETURNING (xmax = 0)",
    )
    .bind(env_id)
    .bind(&p.id)
    .bind(&p.product_id)
    .bind(p.active && !p.deleted)
    .bind(&p.currency)
    .bind(p.unit_amount)
    .bind(&p.billing_scheme)
    .bind(&p.price_type)
    .bind(&p.recurring_interval)
    .bind(p.recurring_interval_count)
    .bind(&p.usage_type)
    .bind(&p.nickname)
    .bind(&p.lookup_key)
    .bind(sqlx::types::Json(&p.metadata))
    .bind(p.livemode)
    .bind(p.stripe_created)
    .bind(p.deleted)
    .bind(&p.meter_id)
    .fetch_optional(conn)
    .await?;
    Ok(written(inserted))
}

/// A customer row: the customer → company mapping and what Stripe says about the customer.
#[derive(Debug, Clone, Copy)]
pub struct CustomerRow<'a> {
    pub id: &'a str,
    pub company_id: &'a str,
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub deleted: bool,
}

/// Records one customer ([`upsert_customers`]).
pub async fn upsert_customer(
    conn: &mut PgConnection,
    env_id: &str,
    row: CustomerRow<'_>,
) -> Result<Written, sqlx::Error> {
    Ok(upsert_customers(conn, env_id, &[row]).await?[0])
}

/// Records customers (ids distinct) in one statement; returns what changed, per row. A
/// deleted customer stays deleted (Stripe never undeletes one).
pub async fn upsert_customers(
    conn: &mut PgConnection,
    env_id: &str,
    rows: &[CustomerRow<'_>],
) -> Result<Vec<Written>, sqlx::Error> {
    let changed: Vec<(String, bool)> = sqlx::query_as(
        "INSERT INTO stripe_customers AS t (environment_id, id, company_id, email, name, deleted_at)
         SELECT $1, c.id, c.company_id, c.email, c.name, CASE WHEN c.deleted THEN now() END
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bool[])
              AS c (id, company_id, email, name, deleted)
         ORDER BY c.id
         ON CONFLICT (environment_id, id) DO UPDATE SET
             company_id = EXCLUDED.company_id, email = EXCLUDED.email, name = EXCLUDED.name,
             deleted_at = COALESCE(t.deleted_at, EXCLUDED.deleted_at),
             updated_at = now()
         WHERE (t.company_id, t.email, t.name)
               IS DISTINCT FROM (EXCLUDED.company_id, EXCLUDED.email, EXCLUDED.name)
            OR (t.deleted_at IS NULL AND EXCLUDED.deleted_at IS NOT NULL)
         RETURNING t.id, (t.xmax = 0)",
    )
    .bind(env_id)
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.company_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.email).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.deleted).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let changed: HashMap<String, bool> = changed.into_iter().collect();
    Ok(rows
        .iter()
        .map(|r| written(changed.get(r.id).copied()))
        .collect())
}

/// A subscription item as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFields {
    pub id: String,
    pub price_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
}

/// A subscription as stored.
#[derive(Debug, Clone)]
pub struct SubscriptionFields {
    pub id: String,
    pub customer_id: String,
    pub status: String,
    pub trial_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    pub stripe_created: DateTime<Utc>,
    pub items: Vec<ItemFields>,
    /// Stripe embedded only the first page of items: keep stored items it did not list.
    pub items_partial: bool,
}

/// What storing a subscription did.
#[derive(Debug)]
pub struct PutSubscription {
    /// The company the subscription belonged to before, when that was another company (its
    /// memberships need recomputing too).
    pub previous_company: Option<String>,
    /// Whether the subscription or its items changed.
    pub written: Written,
}

/// Replaces the subscription and its items with `s` ([`put_subscriptions`]).
pub async fn put_subscription(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    s: &SubscriptionFields,
) -> Result<PutSubscription, sqlx::Error> {
    let mut put = put_subscriptions(conn, env_id, &[company_id], std::slice::from_ref(s)).await?;
    Ok(put.remove(0))
}

/// Replaces subscriptions (ids distinct) and their items, `subscriptions[i]` belonging to
/// `companies[i]`, in two statements; returns what it did, per subscription.
pub async fn put_subscriptions(
    conn: &mut PgConnection,
    env_id: &str,
    companies: &[&str],
    subscriptions: &[SubscriptionFields],
) -> Result<Vec<PutSubscription>, sqlx::Error> {
    let subs = subscriptions;
    // The CTE reads the rows as they were before the upsert. A subscription that did not
    // change returns no row.
    let rows: Vec<(String, Option<String>, bool)> = sqlx::query_as(
        "WITH previous AS (
             SELECT id, company_id FROM stripe_subscriptions
             WHERE environment_id = $1 AND id = ANY($2)
         )
         INSERT INTO stripe_subscriptions AS t (environment_id, id, customer_id, company_id,
             status, trial_end, cancel_at_period_end, canceled_at, stripe_created)
         SELECT $1, s.id, s.customer_id, s.company_id, s.status, s.trial_end,
                s.cancel_at_period_end, s.canceled_at, s.stripe_created
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::bool[], $8::timestamptz[], $9::timestamptz[])
              AS s (id, customer_id, company_id, status, trial_end, cancel_at_period_end,
                    canceled_at, stripe_created)
         ORDER BY s.id
         ON CONFLICT (environment_id, id) DO UPDATE SET
             customer_id = EXCLUDED.customer_id, company_id = EXCLUDED.company_id,
             status = EXCLUDED.status, trial_end = EXCLUDED.trial_end,
             cancel_at_period_end = EXCLUDED.cancel_at_period_end,
             canceled_at = EXCLUDED.canceled_at, stripe_created = EXCLUDED.stripe_created,
             updated_at = now()
         WHERE (t.customer_id, t.company_id, t.status, t.trial_end, t.cancel_at_period_end,
                t.canceled_at, t.stripe_created)
               IS DISTINCT FROM
               (EXCLUDED.customer_id, EXCLUDED.company_id, EXCLUDED.status, EXCLUDED.trial_end,
                EXCLUDED.cancel_at_period_end, EXCLUDED.canceled_at, EXCLUDED.stripe_created)
         RETURNING t.id, (SELECT p.company_id FROM previous p WHERE p.id = t.id), (t.xmax = 0)",
    )
    .bind(env_id)
    .bind(subs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
    .bind(
        subs.iter()
            .map(|s| s.customer_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(companies)
    .bind(subs.iter().map(|s| s.status.as_str()).collect::<Vec<_>>())
    .bind(subs.iter().map(|s| s.trial_end).collect::<Vec<_>>())
    .bind(
        subs.iter()
            .map(|s| s.cancel_at_period_end)
            .collect::<Vec<_>>(),
    )
    .bind(subs.iter().map(|s| s.canceled_at).collect::<Vec<_>>())
    .bind(subs.iter().map(|s| s.stripe_created).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    // Items the objects no longer list go, the others are upserted: one statement (the two
    // touch disjoint rows: nothing listed is deleted). A partial item list deletes nothing.
    let items: Vec<(&str, &ItemFields)> = subs
        .iter()
        .flat_map(|s| s.items.iter().map(move |i| (s.id.as_str(), i)))
        .collect();
    let items_changed: Vec<String> = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM stripe_subscription_items AS t
             USING unnest($2::text[], $3::bool[]) AS s (id, partial)
             WHERE t.environment_id = $1 AND t.subscription_id = s.id AND NOT s.partial
               AND t.id <> ALL($4)
             RETURNING t.subscription_id
         ), put AS (
             INSERT INTO stripe_subscription_items AS t (environment_id, id, subscription_id,
                 price_id, product_id, quantity, current_period_start, current_period_end)
             SELECT $1, i.id, i.subscription_id, i.price_id, i.product_id, i.quantity,
                    i.period_start, i.period_end
             FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[],
                         $9::timestamptz[], $10::timestamptz[])
                  AS i (id, subscription_id, price_id, product_id, quantity, period_start,
                        period_end)
             ORDER BY i.id
             ON CONFLICT (environment_id, id) DO UPDATE SET
                 subscription_id = EXCLUDED.subscription_id, price_id = EXCLUDED.price_id,
                 product_id = EXCLUDED.product_id, quantity = EXCLUDED.quantity,
                 current_period_start = EXCLUDED.current_period_start,
                 current_period_end = EXCLUDED.current_period_end, updated_at = now()
             WHERE (t.subscription_id, t.price_id, t.product_id, t.quantity,
                    t.current_period_start, t.current_period_end)
                   IS DISTINCT FROM
                   (EXCLUDED.subscription_id, EXCLUDED.price_id, EXCLUDED.product_id,
                    EXCLUDED.quantity, EXCLUDED.current_period_start, EXCLUDED.current_period_end)
             RETURNING t.subscription_id
         )
         SELECT subscription_id FROM gone UNION SELECT subscription_id FROM put",
    )
    .bind(env_id)
    .bind(subs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
    .bind(subs.iter().map(|s| s.items_partial).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, i)| i.id.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|(s, _)| *s).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|(_, i)| i.price_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(_, i)| i.product_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|(_, i)| i.quantity).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|(_, i)| i.current_period_start)
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(_, i)| i.current_period_end)
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let items_changed: std::collections::HashSet<String> = items_changed.into_iter().collect();
    let mut rows: HashMap<String, (Option<String>, bool)> = rows
        .into_iter()
        .map(|(id, previous, inserted)| (id, (previous, inserted)))
        .collect();
    Ok(subs
        .iter()
        .zip(companies)
        .map(|(s, company)| {
            let (previous, inserted) = match rows.remove(&s.id) {
                Some((previous, inserted)) => (previous, Some(inserted)),
                None => (None, items_changed.contains(&s.id).then_some(false)),
            };
            PutSubscription {
                previous_company: previous.filter(|p| p != company),
                written: written(inserted),
            }
        })
        .collect())
}

/// A Stripe membership: what company_plans should hold for one plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub plan_id: String,
    pub is_base: bool,
    pub quantity: i64,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub subscription_id: String,
    pub item_id: String,
    pub status: String,
    pub trial_end: Option<DateTime<Utc>>,
}

impl Desired {
    /// Binds what Stripe says of the membership, in the order `sync_memberships` names the
    /// columns: `quantity`, `period_start`, `period_end`, `stripe_subscription_id`,
    /// `stripe_subscription_item_id`, `stripe_status`, `trial_end`.
    fn bind_subscription<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(self.quantity)
            .bind(self.period_start)
            .bind(self.period_end)
            .bind(&self.subscription_id)
            .bind(&self.item_id)
            .bind(&self.status)
            .bind(self.trial_end)
    }
}

/// A row of [`sync_memberships`]' one query: a grant (part 0) or a current membership (1).
#[derive(sqlx::FromRow)]
struct SyncRow {
    company_id: String,
    part: i32,
    plan_id: String,
    plan_type: Option<String>,
    is_base: Option<bool>,
    quantity: i64,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    subscription_id: Option<String>,
    item_id: Option<String>,
    status: Option<String>,
    trial_end: Option<DateTime<Utc>>,
    id: Option<String>,
    source: Option<String>,
}

struct GrantRow {
    plan_id: String,
    plan_type: String,
    quantity: i64,
    current_period_start: Option<DateTime<Utc>>,
    current_period_end: Option<DateTime<Utc>>,
    subscription_id: String,
    item_id: String,
    status: String,
    trial_end: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct CurrentRow {
    id: String,
    plan_id: String,
    is_base: bool,
    quantity: i64,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    stripe_subscription_id: Option<String>,
    stripe_subscription_item_id: Option<String>,
    stripe_status: Option<String>,
    trial_end: Option<DateTime<Utc>>,
    source: String,
}

/// What the company's Stripe memberships should be: one per plan linked (by
/// `billing_product_id`) to a product of an item of a subscription that grants access, of a
/// customer that is not deleted. Items of one plan add up their quantities; the newest
/// subscription's item gives the period. Of several base plans, the newest subscription's
/// wins (a company has one base plan); the others grant nothing.
fn desired(rows: Vec<GrantRow>) -> Vec<Desired> {
    // Rows come newest subscription first.
    let mut out: Vec<Desired> = Vec::new();
    let mut base_plan: Option<String> = None;
    for r in rows {
        let is_base = r.plan_type == "plan";
        if let Some(d) = out.iter_mut().find(|d| d.plan_id == r.plan_id) {
            d.quantity += r.quantity;
            continue;
        }
        if is_base {
            if let Some(winner) = &base_plan {
                tracing::warn!(plan_id = %r.plan_id, winner = %winner, subscription_id = %r.subscription_id,
                    "company has several Stripe base plans; the newest subscription's applies");
                continue;
            }
            base_plan = Some(r.plan_id.clone());
        }
        out.push(Desired {
            plan_id: r.plan_id,
            is_base,
            quantity: r.quantity,
            period_start: r.current_period_start,
            period_end: r.current_period_end,
            subscription_id: r.subscription_id,
            item_id: r.item_id,
            status: r.status,
            trial_end: r.trial_end,
        });
    }
    out
}

/// A company's plans as `(plan_id, is_base)`, for telling whether its plans changed.
pub type PlanSlot = (String, bool);

/// What [`sync_memberships`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MembershipSync {
    /// Any membership row written (plans, quantities, periods, statuses).
    pub changed: bool,
    /// The company's active plans before and after, sorted.
    pub before: Vec<PlanSlot>,
    pub after: Vec<PlanSlot>,
}

impl MembershipSync {
    /// The set of plans changed (not just a quantity or a period).
    pub fn plans_changed(&self) -> bool {
        self.before != self.after
    }
}

/// Recomputes the company's Stripe memberships from its subscriptions. A Stripe base plan
/// replaces a manual one (which is ended), and a Stripe membership of a plan replaces a
/// manual membership of the same plan. Returns what changed.
pub async fn sync_memberships(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
) -> Result<MembershipSync, sqlx::Error> {
    let company = [company_id.to_string()];
    let mut synced = sync_memberships_many(conn, env_id, &company).await?;
    Ok(synced.pop().map(|(_, s)| s).unwrap_or_default())
}

/// [`sync_memberships`] for each of `company_ids`, once each, in id order (so concurrent
/// callers lock companies in the same order): what their subscriptions grant and their
/// current memberships are read in one round trip for all of them; only a company whose
/// memberships change costs more.
pub async fn sync_memberships_many(
    conn: &mut PgConnection,
    env_id: &str,
    company_ids: &[String],
) -> Result<Vec<(String, MembershipSync)>, sqlx::Error> {
    let mut company_ids: Vec<&str> = company_ids.iter().map(String::as_str).collect();
    company_ids.sort_unstable();
    company_ids.dedup();
    // Both sides for every company: what the subscriptions grant (part 0, newest
    // subscription first) and the company's current memberships (part 1).
    let rows: Vec<SyncRow> = sqlx::query_as(
        "SELECT * FROM (
             SELECT s.company_id, 0 AS part,
                    row_number() OVER (PARTITION BY s.company_id
                                       ORDER BY s.stripe_created DESC, s.id DESC, i.id) AS ord,
                    p.id AS plan_id, p.plan_type, NULL::boolean AS is_base, i.quantity,
                    i.current_period_start AS period_start, i.current_period_end AS period_end,
                    s.id AS subscription_id, i.id AS item_id, s.status, s.trial_end,
                    NULL::text AS id, NULL::text AS source
             FROM stripe_subscriptions s
             JOIN stripe_subscription_items i
                  ON i.environment_id = s.environment_id AND i.subscription_id = s.id
             JOIN plans p ON p.billing_product_id = i.product_id
             LEFT JOIN stripe_customers c
                  ON c.environment_id = s.environment_id AND c.id = s.customer_id
             WHERE s.environment_id = $1 AND s.company_id = ANY($2)
               AND s.status IN ('trialing', 'active', 'past_due')
               AND c.deleted_at IS NULL
             UNION ALL
             SELECT company_id, 1, 0, plan_id, NULL, is_base, quantity, period_start, period_end,
                    stripe_subscription_id, stripe_subscription_item_id, stripe_status, trial_end,
                    id, source
             FROM company_plans
             WHERE company_id = ANY($2) AND ended_at IS NULL
         ) x ORDER BY company_id, part, ord",
    )
    .bind(env_id)
    .bind(&company_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_company: HashMap<String, Vec<SyncRow>> = HashMap::new();
    for row in rows {
        by_company
            .entry(row.company_id.clone())
            .or_default()
            .push(row);
    }
    let mut out = Vec::with_capacity(company_ids.len());
    for company_id in company_ids {
        let rows = by_company.remove(company_id).unwrap_or_default();
        let synced = sync_company(conn, env_id, company_id, rows).await?;
        out.push((company_id.to_string(), synced));
    }
    Ok(out)
}

/// One company's part of [`sync_memberships_many`]: its rows, in order, to the writes.
async fn sync_company(
    conn: &mut PgConnection,
    env_id: &str,
    company_id: &str,
    rows: Vec<SyncRow>,
) -> Result<MembershipSync, sqlx::Error> {
    let (grants, current): (Vec<SyncRow>, Vec<SyncRow>) =
        rows.into_iter().partition(|r| r.part == 0);
    let desired = desired(
        grants
            .into_iter()
            .map(|r| GrantRow {
                plan_id: r.plan_id,
                plan_type: r.plan_type.unwrap_or_default(),
                quantity: r.quantity,
                current_period_start: r.period_start,
                current_period_end: r.period_end,
                subscription_id: r.subscription_id.unwrap_or_default(),
                item_id: r.item_id.unwrap_or_default(),
                status: r.status.unwrap_or_default(),
                trial_end: r.trial_end,
            })
            .collect(),
    );
    let current: Vec<CurrentRow> = current
        .into_iter()
        .map(|r| CurrentRow {
            id: r.id.unwrap_or_default(),
            plan_id: r.plan_id,
            is_base: r.is_base.unwrap_or_default(),
            quantity: r.quantity,
            period_start: r.period_start,
            period_end: r.period_end,
            stripe_subscription_id: r.subscription_id,
            stripe_subscription_item_id: r.item_id,
            stripe_status: r.status,
            trial_end: r.trial_end,
            source: r.source.unwrap_or_default(),
        })
        .collect();
    let mut before: Vec<PlanSlot> = current
        .iter()
        .map(|r| (r.plan_id.clone(), r.is_base))
        .collect();
    before.sort();
    // Manual memberships a Stripe one would replace: (plan, is_base) pairs.
    let manual: Vec<(String, bool)> = current
        .iter()
        .filter(|r| r.source != "stripe")
        .map(|r| (r.plan_id.clone(), r.is_base))
        .collect();
    let mut current: HashMap<(String, bool), CurrentRow> = current
        .into_iter()
        .filter(|r| r.source == "stripe")
        .map(|r| ((r.plan_id.clone(), r.is_base), r))
        .collect();
    let mut changed = false;
    let mut after: Vec<PlanSlot> = desired
        .iter()
        .map(|d| (d.plan_id.clone(), d.is_base))
        .collect();
    after.extend(
        manual
            .iter()
            .filter(|(plan, is_base)| {
                !desired
                    .iter()
                    .any(|d| d.plan_id == *plan || (d.is_base && *is_base))
            })
            .cloned(),
    );
    after.sort();

    // Keep or update the rows still wanted; end the rest first, so the partial unique
    // indexes (one active base, one active row per plan) have room for the inserts.
    let mut to_insert = Vec::new();
    let mut to_update = Vec::new();
    for d in desired {
        match current.remove(&(d.plan_id.clone(), d.is_base)) {
            Some(row) => {
                let same = row.quantity == d.quantity
                    && row.period_start == d.period_start
                    && row.period_end == d.period_end
                    && row.stripe_subscription_id.as_deref() == Some(&d.subscription_id)
                    && row.stripe_subscription_item_id.as_deref() == Some(&d.item_id)
                    && row.stripe_status.as_deref() == Some(&d.status)
                    && row.trial_end == d.trial_end;
                if !same {
                    to_update.push((row.id, d));
                }
            }
            None => to_insert.push(d),
        }
    }
    let ended: Vec<String> = current.into_values().map(|r| r.id).collect();
    if !ended.is_empty() {
        sqlx::query(
            "UPDATE company_plans SET ended_at = now(), updated_at = now() WHERE id = ANY($1)",
        )
        .bind(&ended)
        .execute(&mut *conn)
        .await?;
        changed = true;
    }
    for (id, d) in to_update {
        let update = sqlx::query(
            "UPDATE company_plans SET quantity = $2, period_start = $3, period_end = $4,
                 stripe_subscription_id = $5, stripe_subscription_item_id = $6,
                 stripe_status = $7, trial_end = $8, updated_at = now()
             WHERE id = $1",
        )
        .bind(&id);
        d.bind_subscription(update).execute(&mut *conn).await?;
        changed = true;
    }
    for d in to_insert {
        // Stripe wins over a manual membership of the same plan, and a Stripe base plan over
        // a manual base plan.
        let replaces_manual = manual
            .iter()
            .any(|(plan, is_base)| *plan == d.plan_id || (d.is_base && *is_base));
        if replaces_manual {
            sqlx::query(
                "UPDATE company_plans SET ended_at = now(), updated_at = now()
             WHERE company_id = $1 AND source = 'manual' AND ended_at IS NULL
               AND (plan_id = $2 OR ($3 AND is_base))",
            )
            .bind(company_id)
            .bind(&d.plan_id)
            .bind(d.is_base)
            .execute(&mut *conn)
            .await?;
        }
        let insert = sqlx::query(
            "INSERT INTO company_plans (id, environment_id, company_id, plan_id, is_base, source,
                 quantity, period_start, period_end, stripe_subscription_id,
                 stripe_subscription_item_id, stripe_status, trial_end)
             VALUES ($1, $2, $3, $4, $5, 'stripe', $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(ids::new_id(ids::prefix::COMPANY_PLAN))
        .bind(env_id)
        .bind(company_id)
        .bind(&d.plan_id)
        .bind(d.is_base);
        d.bind_subscription(insert).execute(&mut *conn).await?;
        changed = true;
    }
    Ok(MembershipSync {
        changed,
        before,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(plan: &str, plan_type: &str, sub: &str, item: &str, q: i64) -> GrantRow {
        GrantRow {
            plan_id: plan.into(),
            plan_type: plan_type.into(),
            quantity: q,
            current_period_start: None,
            current_period_end: None,
            subscription_id: sub.into(),
            item_id: item.into(),
            status: "active".into(),
            trial_end: None,
        }
    }

    #[test]
    fn items_of_one_plan_add_up_and_the_newest_base_plan_wins() {
        let d = desired(vec![
            row("plan_pro", "plan", "sub_new", "si_1", 1),
            row("plan_seats", "add_on", "sub_new", "si_2", 5),
            row("plan_team", "plan", "sub_old", "si_3", 1),
            row("plan_seats", "add_on", "sub_old", "si_4", 3),
        ]);
        let summary: Vec<_> = d
            .iter()
            .map(|d| {
                (
                    d.plan_id.as_str(),
                    d.is_base,
                    d.quantity,
                    d.item_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("plan_pro", true, 1, "si_1"),
                ("plan_seats", false, 8, "si_2")
            ]
        );
    }
}
