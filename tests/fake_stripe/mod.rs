//! A fake Stripe API for tests and benchmarks: an axum server with in-memory objects, served
//! in Stripe's `2026-09-30.endive` shapes, with Stripe's list semantics so that a
//! reconciliation job can page through it.
//!
//! Objects added with [`FakeStripe::put`] (and events with [`FakeStripe::push_event`]) are
//! stored as given, so tests build them from the `fixtures/stripe/` payloads; `put` of an
//! existing id replaces the object but keeps its place in list order. Large data sets come
//! from [`FakeStripe::populate`], which keeps compact records (ids and positions) and writes
//! each object into the response from a JSON template made from the fixtures (a page of 100
//! generated subscriptions renders in well under a millisecond in a release build).
//! [`FakeStripe::delete_customer`] deletes as Stripe does, canceling the customer's
//! subscriptions that had not ended; [`FakeStripe::get`] reads an object back (to change and
//! `put` it).
//!
//! Routes (all `GET`, all behind `Authorization: Bearer <api_key>`, else 401):
//! - `/v1/{customers,products,prices,subscriptions,events}/{id}`: one object; 404 with
//!   Stripe's error body when unknown or [`FakeStripe::remove`]d; a deleted customer answers
//!   `{"id", "object": "customer", "deleted": true}`. Subscriptions embed at most 10 items
//!   (`items` is a list object with `has_more` and `total_count`).
//! - `/v1/{customers,products,prices,subscriptions,events}`: lists, newest first (`created`
//!   descending, ties by insertion descending: a total order, so paging never skips or
//!   repeats), answering `{"object": "list", "url", "has_more", "data"}`. Parameters: `limit`
//!   (1..=100, default 10), `starting_after` / `ending_before` (an id; unknown → 400 "No such
//!   …"), `created` / `created[gt|gte|lt|lte]`, `expand[]` (accepted and ignored: item prices
//!   always come expanded), and per collection: customers `email`; products `active`; prices
//!   `active`, `product`; subscriptions `status` (absent: all but `canceled` and
//!   `incomplete_expired`; `all`; `ended`; or one status), `customer`, `price`; events `type`
//!   (`prefix.*` works) or `types[]`. Any other parameter is a 400, as in Stripe. Deleted
//!   customers and removed objects are not listed but keep their place, so they still work as
//!   cursors.
//! - `/v1/subscription_items?subscription=sub_x` (required, else 400; an unknown subscription
//!   is a 404): the subscription's full item list, in stored order, with the same `limit` /
//!   cursor parameters.
//!
//! Cursors are found by id in O(1) and pages start from a `BTreeMap` range, and the
//! `customer` filter has an index; the other filters scan from the cursor, so a filter that
//! matches almost nothing (`status=canceled` among 100k active) walks the whole list (a few
//! ms per request at 100k).
//!
//! Failures: [`FakeStripe::fail_next`] queues failures for the next authorized requests;
//! [`FakeStripe::fail_every`] makes every nth authorized request fail (for soak tests); both
//! apply to every route. 429s carry `Retry-After` and `Stripe-Should-Retry: true`;
//! [`Failure::ServerErrorNoRetry`] is a 500 with `Stripe-Should-Retry: false`.
//! [`FakeStripe::set_latency`] delays every answer. Every request (401s and failures included)
//! is logged with method, path, query, status and its arrival [`Instant`];
//! [`FakeStripe::max_requests_in_any_window`] checks a client's rate limit.
//!
//! Meters: `GET /v1/billing/meters[/{id}]` (list filter `status`) serve objects `put` with
//! `"object": "billing.meter"`; `POST /v1/billing/meter_events` is in `meter_events.rs`
//! (identifier deduplication, Stripe's timestamp window, 429 on overlapping requests for one
//! customer and meter, per-customer totals). [`FakeStripe::fail_for`] fails every request for
//! a while.
//!
//! The module compiles both in test binaries (`mod fake_stripe;`) and in the
//! `fake_stripe_server` bench (`#[path]`): it needs nothing from `tests/common`.
#![allow(dead_code)]

mod meter_events;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

const CUSTOMER_FIXTURE: &str = include_str!("../../fixtures/stripe/customer.created.json");
const SUBSCRIPTION_FIXTURE: &str =
    include_str!("../../fixtures/stripe/customer.subscription.updated.json");
const PRODUCT_FIXTURE: &str = include_str!("../../fixtures/stripe/product.created.json");
const PRICE_FIXTURE: &str = include_str!("../../fixtures/stripe/price.created.json");

/// Subscriptions embed at most this many items; `/v1/subscription_items` has the rest.
pub const EMBEDDED_ITEMS: usize = 10;

/// A failure to answer instead of the real response.
#[derive(Debug, Clone)]
pub enum Failure {
    /// 429 with `Retry-After: secs` and `Stripe-Should-Retry: true`.
    RateLimited { retry_after_secs: u64 },
    /// 500 with Stripe's error body (no `Stripe-Should-Retry` header).
    ServerError,
    /// 500 with Stripe's error body and `Stripe-Should-Retry: false`.
    ServerErrorNoRetry,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// The raw query string (still percent-encoded), empty when there was none.
    pub query: String,
    pub authorization: Option<String>,
    pub status: u16,
    /// When the request arrived (before any artificial latency).
    pub at: Instant,
}

impl Logged {
    /// The route: the path, with a retrieved object's id replaced by `{id}`
    /// (`/v1/customers/{id}`); list paths stay as they are.
    pub fn route(&self) -> String {
        match self
            .path
            .strip_prefix("/v1/")
            .map(|p| p.split('/').collect::<Vec<_>>())
            .as_deref()
        {
            Some(["billing", "meters", _]) => "/v1/billing/meters/{id}".into(),
            Some([collection, _]) if *collection != "billing" => {
                format!("/v1/{collection}/{{id}}")
            }
            _ => self.path.clone(),
        }
    }
}

/// What [`FakeStripe::populate`] generates. Ids are numbered from 1:
/// [`Populate::customer_id`]`(n)` is `cus_0000001`…, customer n has subscription
/// `sub_000000n` with one item `si_000000n` on price `((n - 1) % products) + 1`; product k has
/// one monthly recurring price, `price_000k` of `k * 1000` cents.
#[derive(Debug, Clone)]
pub struct Populate {
    pub customers: usize,
    pub products: usize,
    /// `created` of customer (and subscription) 1; products and prices are created before.
    pub start: i64,
    /// How many customers share each `created` second (many ties, as in a bulk import).
    pub per_second: usize,
    /// Whether customers carry `metadata.company_id` (`acme-000001`).
    pub company_metadata: bool,
}

impl Default for Populate {
    fn default() -> Self {
        Populate {
            customers: 0,
            products: 5,
            start: 1_790_000_000,
            per_second: 25_000,
            company_metadata: true,
        }
    }
}

impl Populate {
    pub fn customer_id(n: usize) -> String {
        format!("cus_{n:07}")
    }
    pub fn subscription_id(n: usize) -> String {
        format!("sub_{n:07}")
    }
    pub fn item_id(n: usize) -> String {
        format!("si_{n:07}")
    }
    pub fn product_id(k: usize) -> String {
        format!("prod_{k:04}")
    }
    pub fn price_id(k: usize) -> String {
        format!("price_{k:04}")
    }
    pub fn company_id(n: usize) -> String {
        format!("acme-{n:06}")
    }
    /// The `created` of customer n (and of its subscription).
    pub fn created(&self, n: usize) -> i64 {
        self.start + ((n - 1) / self.per_second.max(1)) as i64
    }
}

#[derive(Default)]
struct Control {
    failures: VecDeque<Failure>,
    /// Every authorized request fails this way until the instant.
    until: Option<(Instant, Failure)>,
    every: Option<(usize, Failure)>,
    counted: usize,
    latency: Duration,
    log: Vec<Logged>,
    meters: meter_events::Ledger,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub base: String,
    pub api_key: String,
    store: Arc<RwLock<Store>>,
    control: Arc<Mutex<Control>>,
}

impl FakeStripe {
    /// A fake listening on `127.0.0.1:0`; `base` is its URL.
    pub async fn start(api_key: &str) -> FakeStripe {
        FakeStripe::new(api_key).serve_on("127.0.0.1:0").await
    }

    /// A fake that does not listen yet (populate it, then [`FakeStripe::serve_on`]).
    pub fn new(api_key: &str) -> FakeStripe {
        FakeStripe {
            base: String::new(),
            api_key: api_key.to_string(),
            store: Arc::default(),
            control: Arc::default(),
        }
    }

    /// Binds `addr` (e.g. `127.0.0.1:0`), serves in a spawned task, and returns the fake with
    /// `base` set.
    pub async fn serve_on(self, addr: &str) -> FakeStripe {
        let app = Router::new().fallback(handle).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeStripe {
            base: format!("http://{addr}"),
            ..self
        }
    }

    /// Stores (or replaces) an object; its `object` field names the collection (customer,
    /// product, price, subscription or event). A replaced object keeps its place among equal
    /// `created` values. A subscription's `items.data` is its full item list.
    pub fn put(&self, object: Value) {
        let kind = object["object"]
            .as_str()
            .and_then(Kind::from_object)
            .unwrap_or_else(|| panic!("fake Stripe does not serve {:?}", object["object"]));
        let id = object["id"].as_str().expect("object id").to_string();
        let created = object["created"].as_i64().unwrap_or(0);
        let state = if kind == Kind::Customer && object["deleted"] == true {
            Live::Deleted
        } else {
            Live::Yes
        };
        let obj = match kind {
            Kind::Subscription => Obj::Sub(Box::new(GivenSub::new(object))),
            _ => Obj::Value(Box::new(object)),
        };
        self.store_mut().insert(kind, &id, created, obj, state);
    }

    /// Stores an event (the whole event object, as `tests/common/stripe.rs::event` builds it).
    pub fn push_event(&self, event: Value) {
        assert_eq!(event["object"], "event", "push_event wants an event");
        self.put(event);
    }

    /// Forgets an object: retrieving it answers 404 and lists skip it (it keeps its place as a
    /// cursor). `collection` is the path segment: `customers`, `subscriptions`, …
    pub fn remove(&self, collection: &str, id: &str) {
        if let Some(kind) = Kind::from_collection(collection) {
            self.store_mut().remove(kind, id);
        }
    }

    /// Deletes a customer as Stripe does: it leaves the list, retrieving it answers
    /// `{"id", "object": "customer", "deleted": true}`, and its subscriptions that had not
    /// ended are canceled now.
    pub fn delete_customer(&self, id: &str) {
        self.store_mut().delete_customer(id, unix_now());
    }

    /// The object as the API would render it, but with the full item list embedded for a
    /// subscription (so that a test can change it and `put` it back); `None` when unknown or
    /// removed.
    pub fn get(&self, collection: &str, id: &str) -> Option<Value> {
        let kind = Kind::from_collection(collection)?;
        let store = self.store();
        let col = store.col(kind);
        let (pos, entry) = col.ids.get(id).and_then(|p| col.index.get_key_value(p))?;
        match entry.live {
            Live::Yes => Some(store.render(kind, pos, entry, usize::MAX)),
            Live::Deleted => Some(deleted_customer(id)),
            Live::Removed => None,
        }
    }

    /// Generates customers, products, prices and subscriptions (see [`Populate`]). Generated
    /// objects are compact records rendered on demand; call it once per fake, before `put`ting
    /// objects with the same ids.
    pub fn populate(&self, spec: &Populate) {
        let mut store = self.store_mut();
        assert!(store.gen.is_none(), "populate once per fake");
        assert!(
            spec.products > 0 || spec.customers == 0,
            "subscriptions need at least one product"
        );
        let product_tpl = fixture_object(PRODUCT_FIXTURE);
        let price_tpl = fixture_object(PRICE_FIXTURE);
        let sub_tpl = fixture_object(SUBSCRIPTION_FIXTURE);
        let mut subs = Vec::with_capacity(spec.products);
        for k in 1..=spec.products {
            let created = spec.start - 1000 + k as i64;
            let mut product = product_tpl.clone();
            product["id"] = json!(Populate::product_id(k));
            product["name"] = json!(format!("Plan {k}"));
            product["description"] = json!(format!("Generated plan {k}"));
            product["default_price"] = json!(Populate::price_id(k));
            product["created"] = json!(created);
            product["updated"] = json!(created);
            store.insert(
                Kind::Product,
                &Populate::product_id(k),
                created,
                Obj::Value(Box::new(product)),
                Live::Yes,
            );
            let mut price = price_tpl.clone();
            let amount = (k * 1000) as i64;
            price["id"] = json!(Populate::price_id(k));
            price["product"] = json!(Populate::product_id(k));
            price["created"] = json!(created);
            price["unit_amount"] = json!(amount);
            price["unit_amount_decimal"] = json!(amount.to_string());
            store.insert(
                Kind::Price,
                &Populate::price_id(k),
                created,
                Obj::Value(Box::new(price.clone())),
                Live::Yes,
            );
            // The subscription template for this price: one item, the price expanded.
            let mut s = sub_tpl.clone();
            let mut item = s["items"]["data"][0].clone();
            item["price"] = price;
            item["plan"]["id"] = json!(Populate::price_id(k));
            item["plan"]["product"] = json!(Populate::product_id(k));
            item["plan"]["amount"] = json!(amount);
            item["plan"]["amount_decimal"] = json!(amount.to_string());
            item["plan"]["created"] = json!(created);
            item["quantity"] = json!(1);
            for key in ["trial_start", "trial_end", "canceled_at", "ended_at"] {
                s[key] = Value::Null;
            }
            // Holes: 0 id, 1 customer, 2 created, 3 latest invoice, 4 status, 5 items url,
            // 6 item id, 7 period end.
            for key in ["created", "start_date", "billing_cycle_anchor"] {
                s[key] = Template::hole(2);
            }
            s["id"] = Template::hole(0);
            s["customer"] = Template::hole(1);
            s["latest_invoice"] = Template::hole(3);
            s["status"] = Template::hole(4);
            item["id"] = Template::hole(6);
            item["subscription"] = Template::hole(0);
            item["created"] = Template::hole(2);
            item["current_period_start"] = Template::hole(2);
            item["current_period_end"] = Template::hole(7);
            s["items"] = json!({"object": "list", "data": [item], "has_more": false,
                "total_count": 1, "url": Template::hole(5)});
            subs.push(Template::new(&s));
        }
        // Holes: 0 id, 1 created, 2 name, 3 email, 4 invoice prefix, 5 metadata.
        let mut customer = fixture_object(CUSTOMER_FIXTURE);
        customer["description"] = Value::Null;
        for (i, key) in [
            "id",
            "created",
            "name",
            "email",
            "invoice_prefix",
            "metadata",
        ]
        .iter()
        .enumerate()
        {
            customer[*key] = Template::hole(i);
        }
        store.gen = Some(Box::new(Generated {
            spec: spec.clone(),
            customer: Template::new(&customer),
            subs,
        }));
        for n in 1..=spec.customers {
            let created = spec.created(n);
            store.insert(
                Kind::Customer,
                &Populate::customer_id(n),
                created,
                Obj::GenCustomer(n as u32),
                Live::Yes,
            );
            store.insert(
                Kind::Subscription,
                &Populate::subscription_id(n),
                created,
                Obj::GenSub {
                    n: n as u32,
                    status: "active",
                },
                Live::Yes,
            );
        }
    }

    /// The next `n` authorized requests fail with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut control = self.control();
        for _ in 0..n {
            control.failures.push_back(failure.clone());
        }
    }

    /// From now on every `nth` authorized request (the nth, the 2nth, …, counted among those
    /// that `fail_next` did not fail) fails with `failure`; `nth == 0` stops it.
    pub fn fail_every(&self, nth: usize, failure: Failure) {
        let mut control = self.control();
        control.every = (nth > 0).then_some((nth, failure));
        control.counted = 0;
    }

    /// Every answer waits `latency` first (zero: none).
    /// Every authorized request fails with `failure` for the next `duration`.
    pub fn fail_for(&self, duration: Duration, failure: Failure) {
        self.control().until = Some((Instant::now() + duration, failure));
    }

    pub fn set_latency(&self, latency: Duration) {
        self.control().latency = latency;
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.control().log.clone()
    }

    /// The logged requests whose path starts with `path_prefix`.
    pub fn requests_matching(&self, path_prefix: &str) -> Vec<Logged> {
        let control = self.control();
        control
            .log
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    pub fn request_count(&self) -> usize {
        self.control().log.len()
    }

    /// How many requests each route saw ([`Logged::route`]).
    pub fn requests_per_route(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in &self.control().log {
            *counts.entry(r.route()).or_insert(0) += 1;
        }
        counts
    }

    pub fn clear_requests(&self) {
        self.control().log.clear();
    }

    /// The most requests that arrived within any half-open window `[t, t + window)`.
    pub fn max_requests_in_any_window(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.control().log.iter().map(|r| r.at).collect();
        max_in_any_window(times, window)
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The failure this authorized request answers with, if any.
    fn next_failure(&self) -> Option<Failure> {
        let mut control = self.control();
        if let Some((until, failure)) = control.until.clone() {
            if Instant::now() < until {
                return Some(failure);
            }
            control.until = None;
        }
        if let Some(f) = control.failures.pop_front() {
            return Some(f);
        }
        let (nth, failure) = control.every.clone()?;
        control.counted += 1;
        control.counted.is_multiple_of(nth).then_some(failure)
    }
}

/// The most instants within any half-open window `[t, t + window)` (the best `t` is always one
/// of the instants).
pub fn max_in_any_window(times: impl IntoIterator<Item = Instant>, window: Duration) -> usize {
    let mut times: Vec<Instant> = times.into_iter().collect();
    times.sort_unstable();
    let mut best = 0;
    let mut end = 0;
    for (start, t) in times.iter().enumerate() {
        let limit = *t + window;
        end = end.max(start);
        while end < times.len() && times[end] < limit {
            end += 1;
        }
        best = best.max(end - start);
    }
    best
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn fixture_object(text: &str) -> Value {
    let mut event: Value = serde_json::from_str(text).expect("fixture JSON");
    event["data"]["object"].take()
}

fn deleted_customer(id: &str) -> Value {
    json!({"id": id, "object": "customer", "deleted": true})
}

// ---------------------------------------------------------------------------------------------
// The store.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Customer,
    Product,
    Price,
    Subscription,
    Event,
    Meter,
}

impl Kind {
    fn from_collection(collection: &str) -> Option<Kind> {
        Some(match collection {
            "customers" => Kind::Customer,
            "products" => Kind::Product,
            "prices" => Kind::Price,
            "subscriptions" => Kind::Subscription,
            "events" => Kind::Event,
            "billing/meters" => Kind::Meter,
            _ => return None,
        })
    }

    fn from_object(object: &str) -> Option<Kind> {
        Some(match object {
            "customer" => Kind::Customer,
            "product" => Kind::Product,
            "price" => Kind::Price,
            "subscription" => Kind::Subscription,
            "event" => Kind::Event,
            "billing.meter" => Kind::Meter,
            _ => return None,
        })
    }

    fn collection(self) -> &'static str {
        match self {
            Kind::Customer => "customers",
            Kind::Product => "products",
            Kind::Price => "prices",
            Kind::Subscription => "subscriptions",
            Kind::Event => "events",
            Kind::Meter => "billing/meters",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Product => "product",
            Kind::Price => "price",
            Kind::Subscription => "subscription",
            Kind::Event => "event",
            Kind::Meter => "billing meter",
        }
    }
}

/// A place in list order: newest `created` first, then the latest inserted first. `Ord`
/// follows list order, so a `BTreeMap<Pos, _>` iterates as the list pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Pos {
    created: i64,
    seq: u64,
}

impl Ord for Pos {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .created
            .cmp(&self.created)
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Pos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Yes,
    /// A deleted customer: not listed, retrieve answers the `deleted: true` stub.
    Deleted,
    /// Removed: not listed, retrieve answers 404.
    Removed,
}

enum Obj {
    /// Stored as given.
    Value(Box<Value>),
    /// A subscription as given, its items kept apart.
    Sub(Box<GivenSub>),
    /// Generated customer n.
    GenCustomer(u32),
    /// Generated subscription n (of customer n).
    GenSub {
        n: u32,
        status: &'static str,
    },
    Gone,
}

struct GivenSub {
    /// The subscription with `items.data` emptied.
    object: Value,
    items: Vec<Value>,
}

impl GivenSub {
    fn new(mut object: Value) -> GivenSub {
        let items = match object["items"]["data"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        GivenSub { object, items }
    }
}

struct Entry {
    id: Box<str>,
    live: Live,
    obj: Obj,
}

const STATUSES: [&str; 8] = [
    "active",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
];

impl Entry {
    fn value(&self) -> Option<&Value> {
        match &self.obj {
            Obj::Value(v) => Some(v),
            Obj::Sub(s) => Some(&s.object),
            _ => None,
        }
    }

    fn status(&self) -> Option<&str> {
        match &self.obj {
            Obj::GenSub { status, .. } => Some(status),
            _ => self.value()?["status"].as_str(),
        }
    }

    fn customer(&self) -> Option<String> {
        match &self.obj {
            Obj::GenSub { n, .. } => Some(Populate::customer_id(*n as usize)),
            _ => {
                let c = &self.value()?["customer"];
                c.as_str().or_else(|| c["id"].as_str()).map(str::to_string)
            }
        }
    }
}

#[derive(Default)]
struct Collection {
    index: BTreeMap<Pos, Entry>,
    ids: HashMap<Box<str>, Pos>,
    /// Subscriptions only: customer id → positions, in list order.
    by_customer: HashMap<Box<str>, Vec<Pos>>,
}

impl Collection {
    fn unlink_customer(&mut self, pos: Pos) {
        let Some(customer) = self.index.get(&pos).and_then(Entry::customer) else {
            return;
        };
        if let Some(list) = self.by_customer.get_mut(customer.as_str()) {
            if let Ok(i) = list.binary_search(&pos) {
                list.remove(i);
            }
            if list.is_empty() {
                self.by_customer.remove(customer.as_str());
            }
        }
    }
}

struct Generated {
    spec: Populate,
    customer: Template,
    /// Per price (index k - 1): a subscription with one item on that price.
    subs: Vec<Template>,
}

/// JSON text with holes, for rendering generated objects fast: `literals[0]`, the argument
/// `slots[0]`, `literals[1]`, … Holes are strings `"@@hole<n>@@"` in the template value.
struct Template {
    literals: Vec<String>,
    slots: Vec<usize>,
}

const HOLE: &str = "\"@@hole";

impl Template {
    fn hole(n: usize) -> Value {
        json!(format!("@@hole{n}@@"))
    }

    fn new(value: &Value) -> Template {
        let text = value.to_string();
        let mut literals = Vec::new();
        let mut slots = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(HOLE) {
            literals.push(rest[..at].to_string());
            let after = &rest[at + HOLE.len()..];
            let end = after.find("@@\"").expect("a hole's end");
            slots.push(after[..end].parse().expect("a hole's number"));
            rest = &after[end + 3..];
        }
        literals.push(rest.to_string());
        Template { literals, slots }
    }

    /// Writes the template with `args` (JSON text: quoted strings, numbers, objects).
    fn write(&self, out: &mut Vec<u8>, args: &[&str]) {
        for (literal, slot) in self.literals.iter().zip(&self.slots) {
            out.extend_from_slice(literal.as_bytes());
            out.extend_from_slice(args[*slot].as_bytes());
        }
        out.extend_from_slice(self.literals.last().expect("a literal").as_bytes());
    }
}

#[derive(Default)]
struct Store {
    cols: [Collection; 6],
    seq: u64,
    gen: Option<Box<Generated>>,
}

impl Store {
    fn col(&self, kind: Kind) -> &Collection {
        &self.cols[kind as usize]
    }

    fn col_mut(&mut self, kind: Kind) -> &mut Collection {
        &mut self.cols[kind as usize]
    }

    fn insert(&mut self, kind: Kind, id: &str, created: i64, obj: Obj, live: Live) {
        self.seq += 1;
        let fresh = self.seq;
        let col = self.col_mut(kind);
        let seq = match col.ids.get(id).copied() {
            Some(old) => {
                col.unlink_customer(old);
                let kept = col.index.remove(&old).map(|e| e.live);
                match kept {
                    Some(Live::Yes) => old.seq,
                    _ => fresh,
                }
            }
            None => fresh,
        };
        let pos = Pos { created, seq };
        let entry = Entry {
            id: id.into(),
            live,
            obj,
        };
        if kind == Kind::Subscription && live == Live::Yes {
            if let Some(customer) = entry.customer() {
                let list = col.by_customer.entry(customer.into()).or_default();
                let at = list.binary_search(&pos).unwrap_or_else(|i| i);
                list.insert(at, pos);
            }
        }
        col.index.insert(pos, entry);
        col.ids.insert(id.into(), pos);
    }

    fn remove(&mut self, kind: Kind, id: &str) {
        let col = self.col_mut(kind);
        let Some(pos) = col.ids.get(id).copied() else {
            return;
        };
        col.unlink_customer(pos);
        if let Some(entry) = col.index.get_mut(&pos) {
            entry.live = Live::Removed;
            entry.obj = Obj::Gone;
        }
    }

    fn delete_customer(&mut self, id: &str, now: i64) {
        let subs: Vec<Pos> = self
            .col(Kind::Subscription)
            .by_customer
            .get(id)
            .cloned()
            .unwrap_or_default();
        for pos in subs {
            let Some(entry) = self.col(Kind::Subscription).index.get(&pos) else {
                continue;
            };
            if matches!(entry.status(), Some("canceled" | "incomplete_expired")) {
                continue;
            }
            let mut object = self.render(Kind::Subscription, &pos, entry, usize::MAX);
            object["status"] = json!("canceled");
            object["canceled_at"] = json!(now);
            object["ended_at"] = json!(now);
            let sub_id = entry.id.to_string();
            let obj = Obj::Sub(Box::new(GivenSub::new(object)));
            self.insert(Kind::Subscription, &sub_id, pos.created, obj, Live::Yes);
        }
        let col = self.col_mut(Kind::Customer);
        match col.ids.get(id).and_then(|p| col.index.get_mut(p)) {
            Some(entry) => {
                entry.live = Live::Deleted;
                entry.obj = Obj::Gone;
            }
            None => self.insert(Kind::Customer, id, 0, Obj::Gone, Live::Deleted),
        }
    }

    /// Writes a live object as JSON; a subscription embeds at most `embed` items.
    fn write(&self, out: &mut Vec<u8>, kind: Kind, pos: &Pos, entry: &Entry, embed: usize) {
        match &entry.obj {
            Obj::Value(v) => serde_json::to_writer(out, v).expect("JSON"),
            Obj::Sub(s) => {
                let mut object = s.object.clone();
                let data: Vec<Value> = s.items.iter().take(embed).cloned().collect();
                object["items"] = items_list(&entry.id, data, s.items.len());
                serde_json::to_writer(out, &object).expect("JSON");
            }
            Obj::GenCustomer(n) => self.write_customer(out, *n as usize, pos.created),
            Obj::GenSub { n, status } => self.write_sub(out, *n as usize, pos.created, status),
            Obj::Gone => panic!("rendering a gone {}", kind.noun()),
        }
    }

    /// A live object as a value; a subscription embeds at most `embed` items.
    fn render(&self, kind: Kind, pos: &Pos, entry: &Entry, embed: usize) -> Value {
        let mut out = Vec::new();
        self.write(&mut out, kind, pos, entry, embed);
        serde_json::from_slice(&out).expect("rendered JSON")
    }

    /// A subscription's full item list.
    fn items(&self, entry: &Entry, pos: &Pos) -> Vec<Value> {
        match &entry.obj {
            Obj::Sub(s) => s.items.clone(),
            Obj::GenSub { .. } => {
                let mut s = self.render(Kind::Subscription, pos, entry, usize::MAX);
                match s["items"]["data"].take() {
                    Value::Array(items) => items,
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn write_customer(&self, out: &mut Vec<u8>, n: usize, created: i64) {
        let gen = self.gen.as_ref().expect("generated");
        let company = Populate::company_id(n);
        let metadata = if gen.spec.company_metadata {
            format!("{{\"company_id\":\"{company}\"}}")
        } else {
            "{}".to_string()
        };
        gen.customer.write(
            out,
            &[
                &format!("\"{}\"", Populate::customer_id(n)),
                &created.to_string(),
                &format!("\"Acme {n:06}\""),
                &format!("\"billing@{company}.test\""),
                &format!("\"AC{n:06}\""),
                &metadata,
            ],
        );
    }

    fn write_sub(&self, out: &mut Vec<u8>, n: usize, created: i64, status: &str) {
        let gen = self.gen.as_ref().expect("generated");
        let id = Populate::subscription_id(n);
        gen.subs[(n - 1) % gen.subs.len()].write(
            out,
            &[
                &format!("\"{id}\""),
                &format!("\"{}\"", Populate::customer_id(n)),
                &created.to_string(),
                &format!("\"in_{n:07}\""),
                &format!("\"{status}\""),
                &format!("\"/v1/subscription_items?subscription={id}\""),
                &format!("\"{}\"", Populate::item_id(n)),
                &(created + 30 * 86_400).to_string(),
            ],
        );
    }
}

fn items_list(sub_id: &str, data: Vec<Value>, total: usize) -> Value {
    json!({
        "object": "list",
        "has_more": total > data.len(),
        "total_count": total,
        "url": format!("/v1/subscription_items?subscription={sub_id}"),
        "data": data,
    })
}

// ---------------------------------------------------------------------------------------------
// The API.

struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    fn missing(status: StatusCode, noun: &str, id: &str, param: &str) -> ApiError {
        ApiError {
            status,
            kind: "invalid_request_error",
            message: format!("No such {noun}: '{id}'"),
            param: Some(param.to_string()),
            code: Some("resource_missing"),
        }
    }

    fn unrecognized(method: &Method, path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!(
                "Unrecognized request URL ({method}: {path}). The fake Stripe serves GET \
                 lists and retrieves of customers, products, prices, subscriptions, events \
                 and billing/meters, GET /v1/subscription_items and POST \
                 /v1/billing/meter_events."
            ),
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(param) = self.param {
            error["param"] = json!(param);
        }
        if let Some(code) = self.code {
            error["code"] = json!(code);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

fn failure_response(failure: &Failure) -> Response {
    let error = |status, kind: &'static str, message: &str| ApiError {
        status,
        kind,
        message: message.to_string(),
        param: None,
        code: None,
    };
    match failure {
        Failure::RateLimited { retry_after_secs } => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Too many requests hit the API too quickly.",
            )
            .into_response();
            let headers = r.headers_mut();
            headers.insert("retry-after", HeaderValue::from(*retry_after_secs));
            headers.insert("stripe-should-retry", HeaderValue::from_static("true"));
            r
        }
        Failure::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred",
        )
        .into_response(),
        Failure::ServerErrorNoRetry => {
            let mut r = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "An unknown error occurred",
            )
            .into_response();
            r.headers_mut()
                .insert("stripe-should-retry", HeaderValue::from_static("false"));
            r
        }
    }
}

async fn handle(
    State(fake): State<FakeStripe>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let at = Instant::now();
    let latency = fake.control().latency;
    let meter_event = method == Method::POST && uri.path() == "/v1/billing/meter_events";
    // A meter event spends its latency while in flight (see `meter_events`).
    if !latency.is_zero() && !meter_event {
        tokio::time::sleep(latency).await;
    }
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let response = if authorization.as_deref() != Some(&format!("Bearer {}", fake.api_key)) {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "Invalid API Key provided".into(),
            param: None,
            code: None,
        }
        .into_response()
    } else if let Some(failure) = fake.next_failure() {
        failure_response(&failure)
    } else if meter_event {
        meter_events::post(&fake, &body, latency).await
    } else {
        // Render under the read lock; serialize after it.
        let answer = answer(&fake.store(), &method, path, query);
        match answer {
            Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => e.into_response(),
        }
    };
    fake.control().log.push(Logged {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        authorization,
        status: response.status().as_u16(),
        at,
    });
    response
}

/// The JSON body answering a request, or the error.
fn answer(store: &Store, method: &Method, path: &str, query: &str) -> Result<Vec<u8>, ApiError> {
    let unrecognized = || ApiError::unrecognized(method, path);
    if method != Method::GET {
        return Err(unrecognized());
    }
    let parts: Vec<&str> = path
        .strip_prefix("/v1/")
        .ok_or_else(unrecognized)?
        .split('/')
        .collect();
    match parts[..] {
        ["billing", "meters"] => list(store, Kind::Meter, &parse_list(Some(Kind::Meter), query)?),
        ["billing", "meters", id] if !id.is_empty() => retrieve(store, Kind::Meter, id),
        ["subscription_items"] => {
            let items = list_items(store, &parse_list(None, query)?)?;
            Ok(serde_json::to_vec(&items).expect("JSON"))
        }
        [collection] => {
            let kind = Kind::from_collection(collection).ok_or_else(unrecognized)?;
            list(store, kind, &parse_list(Some(kind), query)?)
        }
        [collection, id] if !id.is_empty() => {
            let kind = Kind::from_collection(collection).ok_or_else(unrecognized)?;
            retrieve(store, kind, id)
        }
        _ => Err(unrecognized()),
    }
}

fn retrieve(store: &Store, kind: Kind, id: &str) -> Result<Vec<u8>, ApiError> {
    let col = store.col(kind);
    match col.ids.get(id).and_then(|p| col.index.get_key_value(p)) {
        Some((pos, entry)) if entry.live == Live::Yes => {
            let mut out = Vec::new();
            store.write(&mut out, kind, pos, entry, EMBEDDED_ITEMS);
            Ok(out)
        }
        Some((_, entry)) if entry.live == Live::Deleted => {
            Ok(serde_json::to_vec(&deleted_customer(id)).expect("JSON"))
        }
        _ => Err(ApiError::missing(
            StatusCode::NOT_FOUND,
            kind.noun(),
            id,
            "id",
        )),
    }
}

enum StatusFilter {
    /// Not canceled, not incomplete_expired.
    Default,
    All,
    /// canceled or incomplete_expired.
    Ended,
    One(String),
}

#[derive(Default)]
struct ListQuery {
    limit: usize,
    starting_after: Option<String>,
    ending_before: Option<String>,
    /// Inclusive bounds on `created`.
    created_min: Option<i64>,
    created_max: Option<i64>,
    email: Option<String>,
    active: Option<bool>,
    product: Option<String>,
    status: Option<StatusFilter>,
    customer: Option<String>,
    price: Option<String>,
    types: Vec<String>,
    subscription: Option<String>,
    meter_status: Option<String>,
}

fn parse_int(value: &str, param: &str) -> Result<i64, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid(format!("Invalid integer: {value}"), param))
}

/// `types[0]` and `types[]` alike name the array `types[]`.
fn normalize_key(key: &str) -> String {
    if let Some(open) = key.find('[') {
        let inner = &key[open + 1..key.len().saturating_sub(1)];
        if key.ends_with(']') && inner.chars().all(|c| c.is_ascii_digit()) {
            return format!("{}[]", &key[..open]);
        }
    }
    key.to_string()
}

/// The parameters of a list of `kind` (`None`: subscription items).
fn parse_list(kind: Option<Kind>, query: &str) -> Result<ListQuery, ApiError> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::invalid(format!("Invalid query string: {e}"), "query"))?;
    let mut q = ListQuery {
        limit: 10,
        ..ListQuery::default()
    };
    let mut saw_type = false;
    for (key, value) in params {
        let key = normalize_key(&key);
        let lower =
            |q: &mut ListQuery, v: i64| q.created_min = Some(q.created_min.map_or(v, |m| m.max(v)));
        let upper =
            |q: &mut ListQuery, v: i64| q.created_max = Some(q.created_max.map_or(v, |m| m.min(v)));
        match (kind, key.as_str()) {
            (_, "limit") => {
                let n = parse_int(&value, "limit")?;
                if n < 1 {
                    return Err(ApiError::invalid(
                        "This value must be greater than or equal to 1.",
                        "limit",
                    ));
                }
                if n > 100 {
                    return Err(ApiError::invalid(
                        "This value must be less than or equal to 100.",
                        "limit",
                    ));
                }
                q.limit = n as usize;
            }
            (_, "starting_after") => q.starting_after = Some(value),
            (_, "ending_before") => q.ending_before = Some(value),
            (_, "expand[]") => {}
            (Some(_), "created") => {
                let v = parse_int(&value, "created")?;
                lower(&mut q, v);
                upper(&mut q, v);
            }
            (Some(_), "created[gte]") => lower(&mut q, parse_int(&value, &key)?),
            (Some(_), "created[gt]") => lower(&mut q, parse_int(&value, &key)?.saturating_add(1)),
            (Some(_), "created[lte]") => upper(&mut q, parse_int(&value, &key)?),
            (Some(_), "created[lt]") => upper(&mut q, parse_int(&value, &key)?.saturating_sub(1)),
            (Some(Kind::Customer), "email") => q.email = Some(value),
            (Some(Kind::Product | Kind::Price), "active") => {
                q.active = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid(
                            format!("Invalid boolean: {value}"),
                            "active",
                        ))
                    }
                })
            }
            (Some(Kind::Price), "product") => q.product = Some(value),
            (Some(Kind::Subscription), "status") => {
                q.status = Some(match value.as_str() {
                    "all" => StatusFilter::All,
                    "ended" => StatusFilter::Ended,
                    s if STATUSES.contains(&s) => StatusFilter::One(value),
                    _ => {
                        return Err(ApiError::invalid(
                            format!(
                                "Invalid status: must be one of all, ended, {}",
                                STATUSES.join(", ")
                            ),
                            "status",
                        ))
                    }
                })
            }
            (Some(Kind::Meter), "status") => match value.as_str() {
                "active" | "inactive" => q.meter_status = Some(value),
                _ => {
                    return Err(ApiError::invalid(
                        "Invalid status: must be one of active, inactive",
                        "status",
                    ))
                }
            },
            (Some(Kind::Subscription), "customer") => q.customer = Some(value),
            (Some(Kind::Subscription), "price") => q.price = Some(value),
            (Some(Kind::Event), "type" | "types[]") => {
                let is_type = key == "type";
                if (is_type && !q.types.is_empty()) || (!is_type && saw_type) {
                    return Err(ApiError::invalid(
                        "You may only specify one of these parameters: type, types.",
                        "types",
                    ));
                }
                saw_type |= is_type;
                q.types.push(value);
            }
            (None, "subscription") => q.subscription = Some(value),
            _ => {
                return Err(ApiError::invalid(
                    format!("Received unknown parameter: {key}"),
                    &key,
                ))
            }
        }
    }
    if q.starting_after.is_some() && q.ending_before.is_some() {
        return Err(ApiError::invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            "ending_before",
        ));
    }
    if kind.is_none() && q.subscription.is_none() {
        return Err(ApiError::invalid(
            "Missing required param: subscription.",
            "subscription",
        ));
    }
    if kind == Some(Kind::Subscription) && q.status.is_none() {
        q.status = Some(StatusFilter::Default);
    }
    Ok(q)
}

/// The part of list order a request may answer from.
struct Window {
    start: Bound<Pos>,
    end: Bound<Pos>,
}

impl Window {
    fn narrow_start(&mut self, b: Bound<Pos>) {
        let (Bound::Included(new) | Bound::Excluded(new)) = b else {
            return;
        };
        let replace = match self.start {
            Bound::Unbounded => true,
            Bound::Included(old) => new >= old,
            Bound::Excluded(old) => new > old,
        };
        if replace {
            self.start = b;
        }
    }

    fn narrow_end(&mut self, b: Bound<Pos>) {
        let (Bound::Included(new) | Bound::Excluded(new)) = b else {
            return;
        };
        let replace = match self.end {
            Bound::Unbounded => true,
            Bound::Included(old) => new <= old,
            Bound::Excluded(old) => new < old,
        };
        if replace {
            self.end = b;
        }
    }

    fn is_empty(&self) -> bool {
        match (self.start, self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => {
                s >= e
            }
            _ => false,
        }
    }

    fn contains(&self, p: &Pos) -> bool {
        let after_start = match self.start {
            Bound::Unbounded => true,
            Bound::Included(s) => *p >= s,
            Bound::Excluded(s) => *p > s,
        };
        let before_end = match self.end {
            Bound::Unbounded => true,
            Bound::Included(e) => *p <= e,
            Bound::Excluded(e) => *p < e,
        };
        after_start && before_end
    }
}

/// Up to `limit` entries matching `keep` from `it`, and whether more matched.
fn take_page<'a>(
    it: impl Iterator<Item = (&'a Pos, &'a Entry)>,
    keep: impl Fn(&Entry) -> bool,
    limit: usize,
) -> (Vec<(&'a Pos, &'a Entry)>, bool) {
    let mut page: Vec<_> = it.filter(|(_, e)| keep(e)).take(limit + 1).collect();
    let has_more = page.len() > limit;
    page.truncate(limit);
    (page, has_more)
}

fn list(store: &Store, kind: Kind, q: &ListQuery) -> Result<Vec<u8>, ApiError> {
    let col = store.col(kind);
    let cursor = |id: &str, param: &str| {
        col.ids
            .get(id)
            .copied()
            .ok_or_else(|| ApiError::missing(StatusCode::BAD_REQUEST, kind.noun(), id, param))
    };
    let mut window = Window {
        start: Bound::Unbounded,
        end: Bound::Unbounded,
    };
    if let Some(max) = q.created_max {
        window.narrow_start(Bound::Included(Pos {
            created: max,
            seq: u64::MAX,
        }));
    }
    if let Some(min) = q.created_min {
        window.narrow_end(Bound::Included(Pos {
            created: min,
            seq: 0,
        }));
    }
    if let Some(id) = &q.starting_after {
        window.narrow_start(Bound::Excluded(cursor(id, "starting_after")?));
    }
    if let Some(id) = &q.ending_before {
        window.narrow_end(Bound::Excluded(cursor(id, "ending_before")?));
    }
    let gen = store.gen.as_deref();
    let keep = |e: &Entry| e.live == Live::Yes && matches(e, q, gen);
    let backwards = q.ending_before.is_some();
    let (mut page, has_more) = if window.is_empty() {
        (Vec::new(), false)
    } else if let Some(customer) = &q.customer {
        let positions = col.by_customer.get(customer.as_str());
        let subset = positions
            .into_iter()
            .flatten()
            .filter(|p| window.contains(p))
            .filter_map(|p| col.index.get_key_value(p));
        if backwards {
            let all: Vec<_> = subset.collect();
            take_page(all.into_iter().rev(), keep, q.limit)
        } else {
            take_page(subset, keep, q.limit)
        }
    } else {
        let range = col.index.range((window.start, window.end));
        if backwards {
            take_page(range.rev(), keep, q.limit)
        } else {
            take_page(range, keep, q.limit)
        }
    };
    if backwards {
        page.reverse();
    }
    // Written straight into the body: generated objects are templates with holes.
    let mut out = Vec::with_capacity(1024 + page.len() * 3072);
    out.extend_from_slice(b"{\"object\":\"list\",\"url\":\"/v1/");
    out.extend_from_slice(kind.collection().as_bytes());
    out.extend_from_slice(b"\",\"has_more\":");
    out.extend_from_slice(if has_more { b"true" } else { b"false" });
    out.extend_from_slice(b",\"data\":[");
    for (i, (pos, e)) in page.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        store.write(&mut out, kind, pos, e, EMBEDDED_ITEMS);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

fn matches(e: &Entry, q: &ListQuery, gen: Option<&Generated>) -> bool {
    let field = |name: &str| e.value().and_then(|v| v[name].as_str());
    if let Some(email) = &q.email {
        let actual = match e.obj {
            Obj::GenCustomer(n) => {
                Some(format!("billing@{}.test", Populate::company_id(n as usize)))
            }
            _ => field("email").map(str::to_string),
        };
        if actual.as_deref() != Some(email.as_str()) {
            return false;
        }
    }
    if let Some(active) = q.active {
        if e.value().and_then(|v| v["active"].as_bool()) != Some(active) {
            return false;
        }
    }
    if let Some(product) = &q.product {
        let v = e.value().map(|v| &v["product"]);
        let actual = v.and_then(|p| p.as_str().or_else(|| p["id"].as_str()));
        if actual != Some(product.as_str()) {
            return false;
        }
    }
    if let Some(status) = &q.status {
        let actual = e.status().unwrap_or("");
        let ok = match status {
            StatusFilter::All => true,
            StatusFilter::Default => !matches!(actual, "canceled" | "incomplete_expired"),
            StatusFilter::Ended => matches!(actual, "canceled" | "incomplete_expired"),
            StatusFilter::One(s) => actual == s,
        };
        if !ok {
            return false;
        }
    }
    if let Some(price) = &q.price {
        let ok = match &e.obj {
            Obj::GenSub { n, .. } => gen.is_some_and(|g| {
                Populate::price_id((*n as usize - 1) % g.subs.len() + 1) == *price
            }),
            Obj::Sub(s) => s.items.iter().any(|i| i["price"]["id"] == price.as_str()),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    if let Some(status) = &q.meter_status {
        if field("status") != Some(status.as_str()) {
            return false;
        }
    }
    if !q.types.is_empty() {
        let actual = field("type").unwrap_or("");
        let ok = q.types.iter().any(|t| match t.strip_suffix('*') {
            Some(prefix) => actual.starts_with(prefix),
            None => actual == t,
        });
        if !ok {
            return false;
        }
    }
    true
}

fn list_items(store: &Store, q: &ListQuery) -> Result<Value, ApiError> {
    let sub_id = q.subscription.as_deref().unwrap_or_default();
    let col = store.col(Kind::Subscription);
    let (pos, entry) = col
        .ids
        .get(sub_id)
        .and_then(|p| col.index.get_key_value(p))
        .filter(|(_, e)| e.live == Live::Yes)
        .ok_or_else(|| {
            ApiError::missing(
                StatusCode::NOT_FOUND,
                "subscription",
                sub_id,
                "subscription",
            )
        })?;
    let mut items = store.items(entry, pos);
    let find = |id: &str, param: &str| {
        items.iter().position(|i| i["id"] == id).ok_or_else(|| {
            ApiError::missing(StatusCode::BAD_REQUEST, "subscription item", id, param)
        })
    };
    let mut start = 0;
    let mut end = items.len();
    if let Some(id) = &q.starting_after {
        start = find(id, "starting_after")? + 1;
    }
    if let Some(id) = &q.ending_before {
        end = find(id, "ending_before")?;
    }
    let (from, to, has_more) = if q.ending_before.is_some() {
        let from = end.saturating_sub(q.limit).max(start);
        (from, end, from > start)
    } else {
        let to = (start + q.limit).min(end);
        (start, to, to < end)
    };
    let data: Vec<Value> = items.drain(from..to.max(from)).collect();
    Ok(json!({
        "object": "list",
        "url": "/v1/subscription_items",
        "has_more": has_more,
        "data": data,
    }))
}
