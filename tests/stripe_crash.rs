//! No acknowledged event is lost: the real binary is SIGKILLed in the middle of a burst of
//! signed deliveries from many concurrent senders; after a restart, every event that got a
//! 2xx is applied and its effect is there.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use common::process;
use common::stripe::{self as s, Item, SECRET};

const EVENTS: usize = 600;
const SENDERS: usize = 24;
const KILL_AFTER_ACKS: usize = 120;

/// `entitled` on `db_url` with our webhook secret and refetch off, logging errors only.
fn entitled(db_url: &str) -> Command {
    let mut cmd = process::entitled(db_url);
    cmd.env("ENTITLED_LOG__LEVEL", "error")
        .env(
            "ENTITLED_ENVIRONMENTS__0__STRIPE_WEBHOOK_SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env(
            "ENTITLED_ENVIRONMENTS__0__STRIPE_REFETCH_ON_WEBHOOK",
            "false",
        );
    cmd
}

/// Event `i`: a customer, or a subscription of a customer (so applying creates companies and
/// memberships), each with its own id.
fn event(i: usize) -> serde_json::Value {
    if i.is_multiple_of(2) {
        let c = s::customer(&format!("cus_crash_{i}"), &format!("Crash {i}"), json!({}));
        s::event("customer.created", &format!("evt_crash_{i}"), s::now(), c)
    } else {
        let item = Item {
            id: &format!("si_crash_{i}"),
            price: "price_crash",
            product: "prod_crash",
            quantity: 2,
        };
        let sub = s::subscription(
            &format!("sub_crash_{i}"),
            &format!("cus_crash_{i}"),
            "active",
            &[item],
        );
        s::event(
            "customer.subscription.created",
            &format!("evt_crash_{i}"),
            s::now(),
            sub,
        )
    }
}

#[tokio::test]
async fn sigkill_mid_burst_loses_no_acknowledged_event() {
    let db = common::fresh_database().await;
    let mut migrate = entitled(&db.url);
    migrate.arg("migrate");
    process::run_ok(migrate).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO plans (id, key, name, plan_type, billing_product_id)
         VALUES ('plan_crash', 'crash', 'Crash', 'plan', 'prod_crash')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let mut server = process::serve(entitled(&db.url)).await;
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (client, acked, base) = (client.clone(), acked.clone(), server.base.clone());
        senders.push(tokio::spawn(async move {
            for i in (sender..EVENTS).step_by(SENDERS) {
                let body = serde_json::to_vec(&event(i)).unwrap();
                let sent = client
                    .post(format!("{base}/webhooks/stripe"))
                    .header("Stripe-Signature", s::sign(&body, SECRET))
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(i),
                    Ok(r) => panic!("event {i}: {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    common::eventually(Duration::from_secs(30), || async {
        (acked.lock().unwrap().len() >= KILL_AFTER_ACKS).then_some(())
    })
    .await;
    server.kill().await;
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() < EVENTS,
        "all {EVENTS} acknowledged before the SIGKILL: the kill was not mid-burst"
    );
    let ids: Vec<String> = acked.iter().map(|i| format!("evt_crash_{i}")).collect();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored as usize,
        acked.len(),
        "every acknowledged event is stored"
    );
    let pending_at_kill: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    eprintln!(
        "{} of {EVENTS} acknowledged before SIGKILL; {pending_at_kill} left pending",
        acked.len()
    );

    // Restart: the worker drains what the dead process left.
    let started = Instant::now();
    let _server = process::serve(entitled(&db.url)).await;
    common::eventually(Duration::from_secs(60), || async {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE id = ANY($1) AND status = 'applied'",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await
        .unwrap();
        (applied as usize == acked.len()).then_some(())
    })
    .await;
    eprintln!("all applied {:?} after restart", started.elapsed());
    // Their effects: a company per customer, a Crash membership per subscription.
    let customers: Vec<String> = acked.iter().map(|i| format!("cus_crash_{i}")).collect();
    let companies: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT company_id) FROM company_keys
         WHERE key = 'stripe_customer_id' AND value = ANY($1)",
    )
    .bind(&customers)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(companies as usize, acked.len());
    let subscribed = acked.iter().filter(|i| *i % 2 == 1).count();
    let memberships: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM company_plans cp JOIN company_keys k ON k.company_id = cp.company_id
         WHERE k.key = 'stripe_customer_id' AND k.value = ANY($1)
           AND cp.plan_id = 'plan_crash' AND cp.ended_at IS NULL AND cp.quantity = 2",
    )
    .bind(&customers)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(memberships as usize, subscribed);
    pool.close().await;
}
