//! Applying one event: route on its `type`, map its object onto companies, billing products
//! and prices, and memberships, through the store functions. Runs inside the caller's
//! transaction (which also marks the inbox row and queues the cache notifications), and
//! returns the companies whose snapshot must be refreshed.
//!
//! Ordering: every object keeps the `created` time of the newest event applied to it
//! (`stripe_object_versions`); an older event is skipped, an equal one applies. With
//! `stripe_refetch_on_webhook`, a subscription is re-read from the API after its version row
//! is locked, so what is written is at least as new as any event that got this far.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use super::client::StripeClient;
use super::inbox::{self, Claimed};
use super::objects::{self, Customer, Meter, Price, Product, Subscription};
use crate::changes::Change;
use crate::config::EnvironmentConfig;
use crate::store::companies::{self, UpsertCompany};
use crate::store::keys::{self, Entity};
use crate::store::meters::{self, MeterFields};
use crate::store::stripe::{
    self as store, CustomerRow, ItemFields, MembershipSync, PriceFields, ProductFields,
    SubscriptionFields, Write, Written,
};

mod set_wise;
pub use set_wise::{customers, subscriptions};

/// The company key a Stripe customer id is stored under.
pub const CUSTOMER_KEY: &str = "stripe_customer_id";

/// What applying an event did.
#[derive(Debug)]
pub enum Outcome {
    /// State changed: what to refresh and report.
    Applied(Applied),
    /// Older than the newest event already applied to its object.
    Skipped,
    /// A type entitled does not act on.
    Ignored,
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Ignored => "ignored",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event cannot be mapped as it is (bad payload, conflicting keys, …).
    #[error("{0}")]
    Rejected(String),
    #[error("Stripe API: {0}")]
    Stripe(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<crate::store::Error> for ApplyError {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Database(e) | crate::store::Error::Unavailable(e) => {
                ApplyError::Database(e)
            }
            other => ApplyError::Rejected(other.to_string()),
        }
    }
}

/// Where an object's state comes from, for ordering: an event (its id and `created`), or a
/// reconcile listing (a marker naming the run, and the time the page was requested).
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    pub id: &'a str,
    pub created: DateTime<Utc>,
    /// The caller already claimed this version for the object in this transaction (a
    /// reconcile page claims all its objects in one statement).
    pub claimed: bool,
}

impl Version<'_> {
    /// Claims this version for the object unless the caller did; false: skip the object,
    /// something newer was applied.
    async fn claim(
        &self,
        conn: &mut PgConnection,
        env_id: &str,
        object_id: &str,
        object_type: &str,
    ) -> Result<bool, sqlx::Error> {
        if self.claimed {
            return Ok(true);
        }
        store::claim_version(conn, env_id, object_id, object_type, self.id, self.created).await
    }
}

/// What applying one object did, when it was not skipped as older than what was applied.
#[derive(Debug, Default)]
pub struct Applied {
    /// Created, updated, or (`None`) already as stored.
    pub written: Written,
    /// Snapshot entries to refresh.
    pub changes: Vec<Change>,
    /// Companies whose set of plans changed, with the plans before and after (for
    /// `company.plan_changed`).
    pub plan_changes: Vec<(String, MembershipSync)>,
    /// With [`Context::defer_memberships`]: companies whose Stripe memberships the caller
    /// must recompute (once each, however many objects of the batch touched them).
    pub resync: Vec<String>,
}

/// What applying needs besides the connection.
pub struct Context<'a> {
    pub environment_id: &'a str,
    pub config: &'a EnvironmentConfig,
    /// Present when the environment has an API key.
    pub client: Option<&'a StripeClient>,
    /// Customer id → company id, looked up in advance for a batch (a reconcile page of
    /// subscriptions); customers not in it are looked up one by one.
    pub companies: Option<&'a std::collections::HashMap<String, String>>,
    /// A batch recomputes each company's memberships once at its end: leave them to the
    /// caller ([`Applied::resync`]) instead of recomputing them per object.
    pub defer_memberships: bool,
}

impl Context<'_> {
    pub fn refetch(&self) -> Option<&StripeClient> {
        self.client
            .filter(|_| self.config.stripe_refetch_on_webhook)
    }
}

/// Applies `event` in the caller's transaction.
#[tracing::instrument(skip_all, fields(event_id = %event.id, event_type = %event.kind))]
pub async fn apply(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    event: &Claimed,
) -> Result<Outcome, ApplyError> {
    if !inbox::is_handled(&event.kind) {
        return Ok(Outcome::Ignored);
    }
    let parsed: objects::Event = serde_json::from_str(&event.payload)
        .map_err(|e| ApplyError::Rejected(format!("event payload: {e}")))?;
    let v = Version {
        id: &event.id,
        created: event.created,
        claimed: false,
    };
    let applied =
        apply_object(conn, ctx, &event.kind, parsed.data.object, v, ctx.refetch()).await?;
    Ok(match applied {
        Some(a) => Outcome::Applied(a),
        None => Outcome::Skipped,
    })
}

/// Applies the object of an event of a handled type `kind` as of `v`; `None`: skipped.
pub async fn apply_object(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    kind: &str,
    object: Value,
    v: Version<'_>,
    refetch: Option<&StripeClient>,
) -> Result<Option<Applied>, ApplyError> {
    if kind.starts_with("customer.subscription.") {
        let s = parse("subscription", object)?;
        subscription(conn, ctx, s, v, refetch).await
    } else if kind.starts_with("customer.") {
        let c: Customer = parse("customer", object)?;
        let deleted = kind == "customer.deleted" || c.deleted;
        customer(conn, ctx, &c, deleted, v).await
    } else if kind.starts_with("product.") {
        let deleted = kind == "product.deleted";
        product(conn, ctx, parse("product", object)?, deleted, v).await
    } else if kind.starts_with("billing.meter.") {
        meter(conn, ctx, parse("billing.meter", object)?, v).await
    } else if kind.starts_with("price.") {
        let deleted = kind == "price.deleted";
        price(conn, ctx, parse("price", object)?, deleted, v).await
    } else {
        Err(ApplyError::Rejected(format!(
            "event type {kind:?} is not one entitled applies"
        )))
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(what: &str, object: Value) -> Result<T, ApplyError> {
    serde_path_to_error::deserialize(object)
        .map_err(|e| not_a_valid(what, &e.path().to_string(), e.inner()))
}

/// The rejection of an object that does not deserialise: `path` is inside the object.
fn not_a_valid(what: &str, path: &str, error: &serde_json::Error) -> ApplyError {
    ApplyError::Rejected(format!(
        "data.object is not a valid {what}: {path}: {error}"
    ))
}

/// The typed `data.object` of an event's raw payload, read straight from the text (no JSON
/// tree in between); errors as [`parse`]'s, their path relative to the object.
pub fn parse_object<T: serde::de::DeserializeOwned>(
    what: &str,
    payload: &str,
) -> Result<T, ApplyError> {
    #[derive(serde::Deserialize)]
    struct Envelope<T> {
        data: Data<T>,
    }
    #[derive(serde::Deserialize)]
    struct Data<T> {
        object: T,
    }
    let mut de = serde_json::Deserializer::from_str(payload);
    serde_path_to_error::deserialize::<_, Envelope<T>>(&mut de)
        .map(|e| e.data.object)
        .map_err(|e| {
            let path = e.path().to_string();
            let inside = match path.strip_prefix("data.object") {
                Some("") => ".",
                Some(rest) => rest.trim_start_matches('.'),
                None => &path,
            };
            not_a_valid(what, inside, e.inner())
        })
}

fn time(field: &str, secs: i64) -> Result<chrono::DateTime<chrono::Utc>, ApplyError> {
    objects::time(field, secs).map_err(ApplyError::Rejected)
}

fn opt_time(
    field: &str,
    secs: Option<i64>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApplyError> {
    objects::opt_time(field, secs).map_err(ApplyError::Rejected)
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The company keys a customer maps to: `stripe_customer_id` plus each configured metadata
/// key the customer carries.
fn customer_keys(config: &EnvironmentConfig, c: &Customer) -> Vec<(String, String)> {
    let mut keys = vec![(CUSTOMER_KEY.to_string(), c.id.clone())];
    for k in &config.stripe_customer_metadata_keys {
        if k == CUSTOMER_KEY {
            continue;
        }
        let value = match c.metadata.get(k) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        if !value.is_empty() {
            keys.push((k.clone(), value));
        }
    }
    keys
}

/// The name a customer gives its company.
fn company_name(c: &Customer) -> Option<&str> {
    non_empty(&c.name).or(non_empty(&c.email))
}

fn customer_row<'a>(c: &'a Customer, company_id: &'a str, deleted: bool) -> CustomerRow<'a> {
    CustomerRow {
        id: &c.id,
        company_id,
        email: non_empty(&c.email),
        name: non_empty(&c.name),
        deleted,
    }
}

/// What storing a customer did to its company and its row: the company created, the
/// company's keys or name changed, or else what the customer row says.
fn customer_written(created: bool, company_changed: bool, row: Written) -> Written {
    match (created, company_changed, row) {
        (true, _, _) => Some(Write::Created),
        (false, true, None) => Some(Write::Updated),
        (false, _, w) => w,
    }
}

/// Creates or links the customer's company, records the customer, and returns the company
/// and what changed.
async fn put_customer(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    c: &Customer,
    deleted: bool,
) -> Result<(String, Written), ApplyError> {
    // The company's own upsert (keys, name), reporting whether it changed.
    let upsert = keys::Upsert {
        keys: &customer_keys(ctx.config, c),
        name: company_name(c),
        traits: None,
        update_only: false,
    };
    let company = keys::upsert(conn, Entity::Company, ctx.environment_id, &upsert)
        .await
        .map_err(|e| match e {
            crate::store::Error::Conflict(msg) => ApplyError::Rejected(format!(
                "customer {}: {msg}. The customer's metadata names a company other than the one \
                 already linked to {CUSTOMER_KEY}={}; fix the metadata or merge the companies, \
                 then retry this event",
                c.id, c.id
            )),
            other => other.into(),
        })?;
    let company_id = company.id;
    let written = store::upsert_customer(
        conn,
        ctx.environment_id,
        customer_row(c, &company_id, deleted),
    )
    .await?;
    Ok((
        company_id,
        customer_written(company.created, company.changed, written),
    ))
}

/// Applies a customer as of `v`. `None`: skipped, something newer was applied.
pub async fn customer(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    customer: &Customer,
    deleted: bool,
    v: Version<'_>,
) -> Result<Option<Applied>, ApplyError> {
    if !v
        .claim(conn, ctx.environment_id, &customer.id, "customer")
        .await?
    {
        return Ok(None);
    }
    let (company_id, mut written) = put_customer(conn, ctx, customer, deleted).await?;
    if ctx.defer_memberships {
        return Ok(Some(customer_applied(ctx, company_id, written, deleted)));
    }
    let mut plan_changes = Vec::new();
    if deleted {
        // The company and its keys stay; its Stripe memberships end.
        let sync = store::sync_memberships(conn, ctx.environment_id, &company_id).await?;
        if sync.changed {
            written = written.or(Some(Write::Updated));
        }
        if sync.plans_changed() {
            plan_changes.push((company_id.clone(), sync));
        }
    }
    let changes = match written {
        Some(_) => vec![Change::Company {
            environment_id: ctx.environment_id.to_string(),
            id: company_id,
        }],
        None => Vec::new(),
    };
    Ok(Some(Applied {
        written,
        changes,
        plan_changes,
        resync: Vec::new(),
    }))
}

/// What applying a customer did, its memberships left to the caller (a deleted customer's
/// end).
fn customer_applied(
    ctx: &Context<'_>,
    company_id: String,
    written: Written,
    deleted: bool,
) -> Applied {
    let changes = match written {
        Some(_) => vec![Change::Company {
            environment_id: ctx.environment_id.to_string(),
            id: company_id.clone(),
        }],
        None => Vec::new(),
    };
    Applied {
        written,
        changes,
        plan_changes: Vec::new(),
        resync: if deleted {
            vec![company_id]
        } else {
            Vec::new()
        },
    }
}

/// Applies a product as of `v`.
pub async fn product(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    p: Product,
    deleted: bool,
    v: Version<'_>,
) -> Result<Option<Applied>, ApplyError> {
    if !v.claim(conn, ctx.environment_id, &p.id, "product").await? {
        return Ok(None);
    }
    let fields = ProductFields {
        stripe_created: opt_time("created", p.created)?,
        deleted,
        id: p.id,
        name: p.name,
        description: p.description,
        active: p.active,
        metadata: p.metadata,
        livemode: p.livemode,
    };
    let written = store::upsert_product(conn, ctx.environment_id, &fields).await?;
    Ok(Some(Applied {
        written,
        changes: Vec::new(),
        plan_changes: Vec::new(),
        resync: Vec::new(),
    }))
}

/// Applies a price as of `v`.
pub async fn price(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    p: Price,
    deleted: bool,
    v: Version<'_>,
) -> Result<Option<Applied>, ApplyError> {
    if !v.claim(conn, ctx.environment_id, &p.id, "price").await? {
        return Ok(None);
    }
    let fields = PriceFields {
        stripe_created: opt_time("created", p.created)?,
        deleted,
        product_id: p.product.id().to_string(),
        recurring_interval: p.recurring.as_ref().map(|r| r.interval.clone()),
        recurring_interval_count: p.recurring.as_ref().and_then(|r| r.interval_count),
        usage_type: p.recurring.as_ref().and_then(|r| r.usage_type.clone()),
        meter_id: p.recurring.as_ref().and_then(|r| r.meter.clone()),
        id: p.id,
        active: p.active,
        currency: p.currency,
        unit_amount: p.unit_amount,
        billing_scheme: p.billing_scheme,
        price_type: p.price_type,
        nickname: p.nickname,
        lookup_key: p.lookup_key,
        metadata: p.metadata,
        livemode: p.livemode,
    };
    let written = store::upsert_price(conn, ctx.environment_id, &fields).await?;
    Ok(Some(Applied {
        written,
        changes: Vec::new(),
        plan_changes: Vec::new(),
        resync: Vec::new(),
    }))
}

/// Applies a meter as of `v` (`billing.meter.deactivated` carries `status = inactive`).
pub async fn meter(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    m: Meter,
    v: Version<'_>,
) -> Result<Option<Applied>, ApplyError> {
    if !v.claim(conn, ctx.environment_id, &m.id, "meter").await? {
        return Ok(None);
    }
    let fields = MeterFields {
        stripe_created: opt_time("created", m.created)?,
        customer_payload_key: m
            .customer_mapping
            .map(|c| c.event_payload_key)
            .unwrap_or_else(|| objects::DEFAULT_CUSTOMER_PAYLOAD_KEY.into()),
        value_payload_key: m
            .value_settings
            .map(|c| c.event_payload_key)
            .unwrap_or_else(|| objects::DEFAULT_VALUE_PAYLOAD_KEY.into()),
        aggregation_formula: m
            .default_aggregation
            .map(|a| a.formula)
            .unwrap_or_else(|| "sum".into()),
        id: m.id,
        display_name: m.display_name,
        event_name: m.event_name,
        status: m.status,
        livemode: m.livemode,
    };
    let written = meters::upsert_meter(conn, ctx.environment_id, &fields).await?;
    Ok(Some(Applied {
        written,
        changes: Vec::new(),
        plan_changes: Vec::new(),
        resync: Vec::new(),
    }))
}

/// The company of a customer, created from the customer id when entitled has not heard of
/// it yet: nothing is dropped for arriving early. With an API client, the customer is read
/// first, so its metadata links an app-created company instead of creating a duplicate.
async fn company_for_customer(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    customer_id: &str,
) -> Result<String, ApplyError> {
    if let Some(id) = ctx.companies.and_then(|m| m.get(customer_id)) {
        return Ok(id.clone());
    }
    let keys = [(CUSTOMER_KEY.to_string(), customer_id.to_string())];
    // Almost always known already: a hit needs no lock (the lock only serialises creating
    // the company).
    if let Some(id) = keys::find(conn, Entity::Company, ctx.environment_id, &keys).await? {
        return Ok(id);
    }
    keys::lock(conn, Entity::Company, ctx.environment_id, &keys).await?;
    if let Some(id) = keys::find(conn, Entity::Company, ctx.environment_id, &keys).await? {
        return Ok(id);
    }
    if let Some(client) = ctx.refetch() {
        match client.customer(customer_id).await {
            Ok(Some(c)) if c.id == customer_id => {
                return Ok(put_customer(conn, ctx, &c, c.deleted).await?.0);
            }
            Ok(_) => {}
            Err(e) => return Err(ApplyError::Stripe(e.to_string())),
        }
    }
    let req = UpsertCompany {
        keys: keys.to_vec(),
        ..Default::default()
    };
    let (id, _) = companies::upsert(conn, ctx.environment_id, &req).await?;
    Ok(id)
}

fn subscription_fields(s: Subscription) -> Result<SubscriptionFields, ApplyError> {
    if !objects::SUBSCRIPTION_STATUSES.contains(&s.status.as_str()) {
        return Err(ApplyError::Rejected(format!(
            "subscription {}: unknown status {:?}",
            s.id, s.status
        )));
    }
    let items = s
        .items
        .data
        .iter()
        .enumerate()
        .map(|(i, item)| {
            Ok(ItemFields {
                id: item.id.clone(),
                price_id: item.price.id.clone(),
                product_id: item.price.product.id().to_string(),
                // Metered items carry no quantity.
                quantity: item.quantity.unwrap_or(1).max(0),
                current_period_start: opt_time(
                    &format!("items.data[{i}].current_period_start"),
                    item.current_period_start,
                )?,
                current_period_end: opt_time(
                    &format!("items.data[{i}].current_period_end"),
                    item.current_period_end,
                )?,
            })
        })
        .collect::<Result<Vec<_>, ApplyError>>()?;
    Ok(SubscriptionFields {
        customer_id: s.customer.id().to_string(),
        trial_end: opt_time("trial_end", s.trial_end)?,
        canceled_at: opt_time("canceled_at", s.canceled_at)?,
        stripe_created: time("created", s.created)?,
        cancel_at_period_end: s.cancel_at_period_end,
        items_partial: s.items.has_more,
        status: s.status,
        id: s.id,
        items,
    })
}

/// Applies a subscription as of `v`; with `refetch`, its state is re-read from the API
/// under the version lock first. Its items must be complete unless `items.has_more` says not
/// (then stored items the object does not list are kept).
pub async fn subscription(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    given: Subscription,
    v: Version<'_>,
    refetch: Option<&StripeClient>,
) -> Result<Option<Applied>, ApplyError> {
    if !v
        .claim(conn, ctx.environment_id, &given.id, "subscription")
        .await?
    {
        return Ok(None);
    }
    // Re-read under the version lock: what we write is Stripe's state now.
    let subscription = match refetch {
        Some(client) => refetched(client, given).await?,
        None => given,
    };
    let fields = subscription_fields(subscription)?;
    let company_id = company_for_customer(conn, ctx, &fields.customer_id).await?;
    let put = store::put_subscription(conn, ctx.environment_id, &company_id, &fields).await?;
    if ctx.defer_memberships {
        return Ok(Some(subscription_applied(company_id, put)));
    }
    let mut written = put.written;
    // Recomputed even when the subscription is as stored: a plan linked to its product
    // since, or a membership edited by hand, is repaired here.
    let sync = store::sync_memberships(conn, ctx.environment_id, &company_id).await?;
    if sync.changed {
        written = written.or(Some(Write::Updated));
    }
    let mut plan_changes = Vec::new();
    if sync.plans_changed() {
        plan_changes.push((company_id.clone(), sync));
    }
    let mut changes = Vec::new();
    if written.is_some() {
        changes.push(Change::Company {
            environment_id: ctx.environment_id.to_string(),
            id: company_id,
        });
    }
    if let Some(previous) = put.previous_company {
        let sync = store::sync_memberships(conn, ctx.environment_id, &previous).await?;
        if sync.plans_changed() {
            plan_changes.push((previous.clone(), sync));
        }
        changes.push(Change::Company {
            environment_id: ctx.environment_id.to_string(),
            id: previous,
        });
    }
    Ok(Some(Applied {
        written,
        changes,
        plan_changes,
        resync: Vec::new(),
    }))
}

/// What storing a subscription did, its memberships (and its previous company's) left to
/// the caller.
fn subscription_applied(company_id: String, put: store::PutSubscription) -> Applied {
    let mut resync = vec![company_id];
    resync.extend(put.previous_company);
    Applied {
        written: put.written,
        resync,
        ..Applied::default()
    }
}

/// The subscription as Stripe holds it now (`given` canceled when Stripe no longer has it).
pub async fn refetched(
    client: &StripeClient,
    given: Subscription,
) -> Result<Subscription, ApplyError> {
    match client.subscription(&given.id).await {
        Ok(Some(s)) if s.id == given.id => Ok(s),
        Ok(Some(s)) => Err(ApplyError::Stripe(format!(
            "asked for subscription {}, got {}",
            given.id, s.id
        ))),
        // Stripe no longer has it: deleted, so canceled.
        Ok(None) => Ok(Subscription {
            status: "canceled".into(),
            ..given
        }),
        Err(e) => Err(ApplyError::Stripe(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_object_reads_the_object_and_names_paths_inside_it() {
        let ok: objects::Customer = parse_object(
            "customer",
            r#"{"id": "evt_1", "data": {"object": {"id": "cus_1", "name": "Acme"}}}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.name.as_deref()),
            ("cus_1", Some("Acme"))
        );

        let message =
            |payload: &str| match parse_object::<objects::Subscription>("subscription", payload) {
                Err(ApplyError::Rejected(m)) => m,
                other => panic!("expected a rejection, got {:?}", other.map(|s| s.id)),
            };
        // The same wording as `parse` over the object: the path starts inside it.
        let nested = message(
            r#"{"data": {"object": {"id": "sub_1", "customer": "cus_1", "status": "active",
                "items": {"data": [{"id": "si_1", "price": {"id": "price_1", "product": "prod_1"}, "quantity": "two"}]}}}}"#,
        );
        assert!(
            nested.starts_with(
                "data.object is not a valid subscription: items.data[0].quantity: invalid type"
            ),
            "{nested}"
        );
        let root = message(r#"{"data": {"object": 7}}"#);
        assert!(
            root.starts_with("data.object is not a valid subscription: .: invalid type"),
            "{root}"
        );
    }
}
