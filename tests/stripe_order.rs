//! Order independence, as a property: for a subscription's lifecycle (created → trialing →
//! active → past_due → canceled, with item changes), any order of any of its events, each
//! possibly delivered (or re-applied) twice, leaves the memberships of the newest event.
//! Refetch is off, so the event payloads are all there is. Applies through the inbox and the
//! worker's code directly, in the generated order.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use entitled::api::AppState;
use entitled::stripe::{inbox, worker};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use common::stripe::{self as s, Item};

const PRO: &str = "prod_order_pro";
const SEATS: &str = "prod_order_seats";

/// (type, created, status, pro quantity, seats quantity or 0 for no seats item)
const LIFECYCLE: &[(&str, i64, &str, i64, i64)] = &[
    ("customer.subscription.created", 100, "trialing", 1, 0),
    (
        "customer.subscription.trial_will_end",
        150,
        "trialing",
        1,
        0,
    ),
    ("customer.subscription.updated", 200, "active", 1, 3),
    ("customer.subscription.updated", 300, "active", 1, 5),
    ("customer.subscription.updated", 400, "past_due", 1, 5),
    ("customer.subscription.updated", 450, "active", 2, 0),
    ("customer.subscription.paused", 470, "paused", 2, 0),
    ("customer.subscription.resumed", 480, "active", 2, 4),
    ("customer.subscription.deleted", 500, "canceled", 2, 4),
];

fn lifecycle_event(case: usize, i: usize) -> Value {
    let (kind, created, status, pro_q, seats_q) = LIFECYCLE[i];
    let pro_item = format!("si_{case}_pro");
    let seats_item = format!("si_{case}_seats");
    let mut items = vec![Item {
        id: &pro_item,
        price: "price_order_pro",
        product: PRO,
        quantity: pro_q,
    }];
    if seats_q > 0 {
        items.push(Item {
            id: &seats_item,
            price: "price_order_seats",
            product: SEATS,
            quantity: seats_q,
        });
    }
    let sub = s::subscription(
        &format!("sub_order_{case}"),
        &format!("cus_order_{case}"),
        status,
        &items,
    );
    s::event(kind, &format!("evt_order_{case}_{i}"), created, sub)
}

/// The memberships the newest delivered event should leave: (plan key, is_base, quantity).
fn expected(newest: usize) -> (String, Vec<(String, bool, i64)>) {
    let (_, _, status, pro_q, seats_q) = LIFECYCLE[newest];
    let mut out = Vec::new();
    if matches!(status, "trialing" | "active" | "past_due") {
        out.push(("order-pro".to_string(), true, pro_q));
        if seats_q > 0 {
            out.push(("order-seats".to_string(), false, seats_q));
        }
    }
    (status.to_string(), out)
}

async fn deliver(state: &AppState, event: &Value, reapply: bool) {
    let inserted = s::store(state, event).await;
    // A first delivery is applied; a redelivery is acknowledged only, or, like
    // POST /stripe/events/{id}/retry, applied again.
    if inserted || reapply {
        let env_id = state.cache.default_env().unwrap().environment.id.clone();
        let mut tx = state.pool.begin().await.unwrap();
        let claimed = inbox::claim(&mut tx, &env_id, event["id"].as_str().unwrap())
            .await
            .unwrap();
        let status = worker::process(&state.sync(), tx, claimed).await.unwrap();
        assert!(status == "applied" || status == "skipped", "{status}");
    }
}

async fn memberships(state: &AppState, case: usize) -> (String, Vec<(String, bool, i64)>) {
    let status: String =
        sqlx::query_scalar("SELECT status FROM stripe_subscriptions WHERE id = $1")
            .bind(format!("sub_order_{case}"))
            .fetch_one(&state.pool)
            .await
            .unwrap();
    let rows: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT p.key, cp.is_base, cp.quantity FROM company_plans cp
         JOIN plans p ON p.id = cp.plan_id
         JOIN company_keys k ON k.company_id = cp.company_id
         WHERE k.key = 'stripe_customer_id' AND k.value = $1 AND cp.ended_at IS NULL
         ORDER BY p.key",
    )
    .bind(format!("cus_order_{case}"))
    .fetch_all(&state.pool)
    .await
    .unwrap();
    (status, rows)
}

/// The state of an app (payloads applied as sent, no server) on a fresh database.
async fn fresh_state() -> (entitled::api::AppState, common::TestDb) {
    let db = common::fresh_database().await;
    let config = common::test_config(&db.url, &s::config("stripe_refetch_on_webhook = false"));
    let (state, _listener) = entitled::app::build_state(config).await.unwrap();
    (state, db)
}

/// A fresh app (payloads applied as sent) with the lifecycle's two products linked to plans.
async fn order_app() -> (entitled::api::AppState, common::TestDb) {
    let (state, db) = fresh_state().await;
    sqlx::query(
        "INSERT INTO plans (id, key, name, plan_type, billing_product_id) VALUES
         ('plan_order_pro', 'order-pro', 'Pro', 'plan', $1),
         ('plan_order_seats', 'order-seats', 'Seats', 'add_on', $2)",
    )
    .bind(PRO)
    .bind(SEATS)
    .execute(&state.pool)
    .await
    .unwrap();
    (state, db)
}

/// 64 cases, no failure persistence.
fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Whether case `case` ended with the memberships of the newest of `deliveries`; the failure
/// starts with `context`.
async fn newest_wins(
    state: &AppState,
    case: usize,
    deliveries: &[(usize, bool)],
    context: &str,
) -> Result<(), TestCaseError> {
    let newest = deliveries.iter().map(|(i, _)| *i).max().unwrap();
    let got = memberships(state, case).await;
    if got != expected(newest) {
        return Err(TestCaseError::fail(format!(
            "{context}deliveries {deliveries:?}: newest is {:?}, got {got:?}, expected {:?}",
            LIFECYCLE[newest],
            expected(newest)
        )));
    }
    Ok(())
}

#[test]
fn any_order_with_duplicates_converges_to_the_newest_event() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (state, db) = rt.block_on(order_app());
    let cases = AtomicUsize::new(0);
    let mut runner = runner();
    // A delivery sequence: which lifecycle event, and whether a repeat is re-applied.
    let deliveries = prop::collection::vec((0..LIFECYCLE.len(), any::<bool>()), 1..20);
    let result = runner.run(&deliveries, |deliveries| {
        let case = cases.fetch_add(1, Ordering::SeqCst);
        rt.block_on(async {
            for (i, reapply) in &deliveries {
                deliver(&state, &lifecycle_event(case, *i), *reapply).await;
            }
            newest_wins(&state, case, &deliveries, "").await
        })
    });
    drop(state);
    drop(db);
    result.unwrap();
}

/// Applies the inbox `size` events at a time until nothing is due.
async fn drain_in_batches(state: &AppState, size: usize) {
    loop {
        let batch = worker::process_batch(&state.sync(), size).await.unwrap();
        assert_eq!(batch.deferred, 0, "no other worker runs here");
        if batch.processed == 0 {
            return;
        }
    }
}

/// The same property through set-wise batches of several sizes: the deliveries are stored
/// in the generated order, applied `size` at a time (interleaved with storing), and the
/// repeats marked for re-applying are made due again and applied once more.
#[test]
fn any_order_with_duplicates_converges_in_batches_of_any_size() {
    const SIZES: [usize; 5] = [1, 2, 3, 7, 500];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (state, db) = rt.block_on(order_app());
    // Case numbers of their own: the subscriptions are not the other property's.
    let cases = AtomicUsize::new(10_000);
    let mut runner = runner();
    // Deliveries, whether a repeat is re-applied, and after how many deliveries the worker
    // runs (0: only at the end).
    let deliveries = (
        prop::collection::vec((0..LIFECYCLE.len(), any::<bool>()), 1..20),
        0..6usize,
    );
    let result = runner.run(&deliveries, |(deliveries, every)| {
        let case = cases.fetch_add(1, Ordering::SeqCst);
        let size = SIZES[case % SIZES.len()];
        rt.block_on(async {
            for (n, (i, _)) in deliveries.iter().enumerate() {
                s::store(&state, &lifecycle_event(case, *i)).await;
                if every > 0 && (n + 1) % every == 0 {
                    drain_in_batches(&state, size).await;
                }
            }
            drain_in_batches(&state, size).await;
            let again: Vec<String> = deliveries
                .iter()
                .filter(|(_, reapply)| *reapply)
                .map(|(i, _)| format!("evt_order_{case}_{i}"))
                .collect();
            sqlx::query(
                "UPDATE stripe_events SET status = 'pending', applied_at = NULL WHERE id = ANY($1)",
            )
            .bind(&again)
            .execute(&state.pool)
            .await
            .unwrap();
            drain_in_batches(&state, size).await;
            let statuses: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT status FROM stripe_events WHERE id LIKE $1 ORDER BY status",
            )
            .bind(format!("evt_order_{case}_%"))
            .fetch_all(&state.pool)
            .await
            .unwrap();
            if statuses.iter().any(|s| s != "applied" && s != "skipped") {
                return Err(TestCaseError::fail(format!(
                    "batch size {size}, deliveries {deliveries:?}: statuses {statuses:?}"
                )));
            }
            let context = format!("batch size {size}, worker every {every}, ");
            newest_wins(&state, case, &deliveries, &context).await
        })
    });
    drop(state);
    drop(db);
    result.unwrap();
}

/// A batch whose set-wise apply fails falls back to one event per transaction: the bad
/// event is `failed` with its own error, the rest of the batch applies.
#[tokio::test]
async fn one_bad_event_fails_alone_and_the_rest_of_its_batch_applies() {
    let (state, db) = fresh_state().await;
    let item = |c: usize| format!("si_bad_{c}");
    let mut events = Vec::new();
    for c in 0..5 {
        let id = item(c);
        let items = [Item {
            id: &id,
            price: "price_order_pro",
            product: PRO,
            quantity: 1,
        }];
        // Customer 2's subscription has a status Stripe never sends.
        let status = if c == 2 { "bogus" } else { "active" };
        let sub = s::subscription(
            &format!("sub_bad_{c}"),
            &format!("cus_bad_{c}"),
            status,
            &items,
        );
        events.push(s::event(
            "customer.subscription.created",
            &format!("evt_bad_{c}"),
            s::now(),
            sub,
        ));
    }
    for event in &events {
        s::store(&state, event).await;
    }
    let fallbacks = entitled::metrics::STRIPE_BATCHES.get("fallback");
    let batch = entitled::stripe::worker::process_batch(&state.sync(), 100)
        .await
        .unwrap();
    assert_eq!(batch.processed, 5);
    assert_eq!(
        entitled::metrics::STRIPE_BATCHES.get("fallback"),
        fallbacks + 1
    );
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, error FROM stripe_events ORDER BY id")
            .fetch_all(&state.pool)
            .await
            .unwrap();
    for (id, status, error) in &rows {
        if id == "evt_bad_2" {
            assert_eq!(status, "failed");
            assert!(
                error.as_deref().unwrap().contains("unknown status"),
                "{error:?}"
            );
        } else {
            assert_eq!(status, "applied", "{id}: {error:?}");
        }
    }
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_subscriptions")
        .fetch_one(&state.pool)
        .await
        .unwrap();
    assert_eq!(subscriptions, 4);
    drop(state);
    drop(db);
}
