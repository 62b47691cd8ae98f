//! A batch applies its customers and subscriptions set-wise (a few statements for all of
//! them) and lands exactly where applying its events one at a time lands: companies created,
//! renamed, linked by metadata or left alone, customers sharing a metadata key, a deleted
//! customer's memberships ended, a subscription of a customer nobody has heard of, and an
//! older event of a customer the batch also holds a newer one of.

mod common;

use entitled::api::AppState;
use entitled::stripe::{inbox, worker};
use serde_json::{json, Value};

use common::stripe::{self as s, Item};

const PRO: &str = "prod_sets_pro";

async fn app() -> (AppState, common::TestDb) {
    let db = common::fresh_database().await;
    let config = common::test_config(&db.url, &s::config("stripe_refetch_on_webhook = false"));
    let (state, _listener) = entitled::app::build_state(config).await.unwrap();
    sqlx::query(
        "INSERT INTO plans (id, key, name, plan_type, billing_product_id)
         VALUES ('plan_sets_pro', 'sets-pro', 'Pro', 'plan', $1)",
    )
    .bind(PRO)
    .execute(&state.pool)
    .await
    .unwrap();
    // A company the application created, which a customer's metadata will name.
    let env_id = state.cache.default_env().unwrap().environment.id.clone();
    let mut conn = state.pool.acquire().await.unwrap();
    let keys = [("company_id".to_string(), "acme".to_string())];
    let upsert = entitled::store::keys::Upsert {
        keys: &keys,
        name: Some("Acme (app)"),
        traits: None,
        update_only: false,
    };
    entitled::store::keys::upsert(
        &mut conn,
        entitled::store::keys::Entity::Company,
        &env_id,
        &upsert,
    )
    .await
    .unwrap();
    (state, db)
}

fn customer(kind: &str, n: u32, id: &str, name: &str, metadata: Value) -> Value {
    s::event(
        kind,
        &format!("evt_sets_{n}"),
        1_790_000_000 + i64::from(n),
        s::customer(id, name, metadata),
    )
}

fn subscription(kind: &str, n: u32, id: &str, customer: &str, quantity: i64) -> Value {
    let item = format!("si_{id}");
    let items = [Item {
        id: &item,
        price: "price_sets_pro",
        product: PRO,
        quantity,
    }];
    s::event(
        kind,
        &format!("evt_sets_{n}"),
        1_790_000_000 + i64::from(n),
        s::subscription(id, customer, "active", &items),
    )
}

/// What was there before the batch.
fn before() -> Vec<Value> {
    vec![
        customer("customer.created", 1, "cus_c", "Cee", json!({})),
        customer("customer.created", 2, "cus_d", "Dee", json!({})),
        customer("customer.created", 3, "cus_g", "Gee", json!({})),
        subscription("customer.subscription.created", 4, "sub_g", "cus_g", 1),
        customer("customer.created", 5, "cus_i", "Eye", json!({})),
        subscription("customer.subscription.created", 6, "sub_i", "cus_i", 1),
    ]
}

/// The batch.
fn batch() -> Vec<Value> {
    let acme = json!({"company_id": "acme"});
    let shared = json!({"company_id": "shared"});
    vec![
        // Linked to the application's company by metadata.
        customer("customer.created", 10, "cus_a", "Acme Corp", acme),
        // New, then renamed within the batch: the older event is skipped.
        customer("customer.created", 11, "cus_b", "Bee", json!({})),
        customer("customer.updated", 12, "cus_b", "Bee Two", json!({})),
        // Renamed; unchanged.
        customer("customer.updated", 13, "cus_c", "Cee Renamed", json!({})),
        customer("customer.updated", 14, "cus_d", "Dee", json!({})),
        // Two new customers naming one company.
        customer("customer.created", 15, "cus_e", "Eee", shared.clone()),
        customer("customer.created", 16, "cus_f", "Eff", shared),
        // Deleted: its company stays, its membership ends.
        customer("customer.deleted", 17, "cus_g", "Gee", json!({})),
        // A subscription of a customer created in this batch, of one nobody knows, and a
        // changed quantity.
        subscription("customer.subscription.created", 18, "sub_b", "cus_b", 2),
        subscription("customer.subscription.created", 19, "sub_h", "cus_h", 1),
        subscription("customer.subscription.updated", 20, "sub_i", "cus_i", 3),
    ]
}

/// Each event in its own transaction, through the one-event apply.
async fn apply_one_by_one(state: &AppState, events: &[Value]) {
    let env_id = state.cache.default_env().unwrap().environment.id.clone();
    for event in events {
        assert!(s::store(state, event).await);
        let mut tx = state.pool.begin().await.unwrap();
        let claimed = inbox::claim_due(&mut tx, &env_id, event["id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        worker::process(&state.sync(), tx, claimed).await.unwrap();
    }
}

/// Everything the events decide, with companies named by their sorted keys (ids differ
/// between databases).
async fn outcome(state: &AppState) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "WITH k AS (
             SELECT company_id, string_agg(key || '=' || value, ',' ORDER BY key, value) AS keys
             FROM company_keys GROUP BY company_id
         )
         SELECT 'company ' || k.keys || ' name=' || c.name FROM companies c JOIN k ON k.company_id = c.id
         UNION ALL
         SELECT 'customer ' || sc.id || ' of ' || k.keys || ' name=' || coalesce(sc.name, '')
                || ' email=' || coalesce(sc.email, '') || ' deleted=' || (sc.deleted_at IS NOT NULL)
         FROM stripe_customers sc JOIN k ON k.company_id = sc.company_id
         UNION ALL
         SELECT 'subscription ' || ss.id || ' of ' || k.keys || ' ' || ss.status || ' items='
                || (SELECT string_agg(i.id || 'x' || i.quantity, ',' ORDER BY i.id)
                    FROM stripe_subscription_items i WHERE i.subscription_id = ss.id)
         FROM stripe_subscriptions ss JOIN k ON k.company_id = ss.company_id
         UNION ALL
         SELECT 'plan ' || p.key || ' of ' || k.keys || ' x' || cp.quantity
                || ' ended=' || (cp.ended_at IS NOT NULL)
         FROM company_plans cp JOIN plans p ON p.id = cp.plan_id JOIN k ON k.company_id = cp.company_id
         UNION ALL
         SELECT 'event ' || id || ' ' || status || coalesce(' ' || error, '') FROM stripe_events
         ORDER BY 1",
    )
    .fetch_all(&state.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(r,)| r).collect()
}

#[tokio::test]
async fn a_batch_set_wise_lands_where_one_event_at_a_time_does() {
    // One at a time.
    let (one, _db1) = app().await;
    apply_one_by_one(&one, &before()).await;
    apply_one_by_one(&one, &batch()).await;
    let want = outcome(&one).await;

    // The same events, the batch's in one batch.
    let (set, _db2) = app().await;
    apply_one_by_one(&set, &before()).await;
    for event in batch() {
        assert!(s::store(&set, &event).await);
    }
    let metrics = &entitled::metrics::STRIPE_BATCHES;
    let (set_wise, fallbacks) = (metrics.get("set_wise"), metrics.get("fallback"));
    let done = worker::process_batch(&set.sync(), 500).await.unwrap();
    assert_eq!((done.processed, done.deferred), (batch().len(), 0));
    assert_eq!(metrics.get("set_wise"), set_wise + 1);
    assert_eq!(metrics.get("fallback"), fallbacks, "no fallback");
    let got = outcome(&set).await;

    // The older of cus_b's two events is skipped by the batch; one at a time it applied
    // before the newer one arrived and was overwritten. Everything else is alike.
    let older = |status: &str| format!("event evt_sets_11 {status}");
    assert!(want.contains(&older("applied")), "{want:#?}");
    assert!(got.contains(&older("skipped")), "{got:#?}");
    let want: Vec<String> = want
        .into_iter()
        .filter(|l| *l != older("applied"))
        .collect();
    let got: Vec<String> = got.into_iter().filter(|l| *l != older("skipped")).collect();
    // Spot checks of the expected state, then all of it alike.
    for line in [
        "company company_id=acme,stripe_customer_id=cus_a name=Acme Corp",
        "company stripe_customer_id=cus_b name=Bee Two",
        "company stripe_customer_id=cus_c name=Cee Renamed",
        "company stripe_customer_id=cus_h name=",
        "plan sets-pro of stripe_customer_id=cus_b x2 ended=false",
        "plan sets-pro of stripe_customer_id=cus_g x1 ended=true",
        "plan sets-pro of stripe_customer_id=cus_i x3 ended=false",
        "subscription sub_h of stripe_customer_id=cus_h active items=si_sub_hx1",
        "customer cus_g of stripe_customer_id=cus_g name=Gee email=billing@gee.test deleted=true",
    ] {
        assert!(got.iter().any(|l| l == line), "{line} not in {got:#?}");
    }
    assert_eq!(got, want);
}
