//! All SQL, per aggregate, and the pool it runs on. Nothing above `store/` writes SQL:
//! handlers, services and jobs call functions here named for what they answer.
//!
//! Functions that write take a connection or transaction (`&mut PgConnection`), so the
//! caller owns the transaction boundary and ends it with `changes::Publisher::commit`.
//! Errors are `store::Error`: data terms (not found, conflict, invalid), never HTTP.
//! `store/` imports only `engine`, `config`, `ids` and `metrics` from the crate.

pub mod api_keys;
pub mod breaker;
pub mod catalog;
pub mod companies;
pub mod console;
pub mod credit_bundles;
pub mod credit_plan_grants;
pub mod credit_types;
pub mod credits;
pub mod db;
pub mod environments;
pub mod error;
pub mod events;
pub mod insights;
pub mod jobs;
pub mod keys;
pub mod locks;
pub mod meter_events;
pub mod meters;
pub mod notify;
pub mod overrides;
pub mod plans;
pub mod reconcile;
pub mod rows;
pub mod seed;
pub mod snapshot;
pub mod stripe;
pub mod stripe_inbox;
mod usage;
pub mod users;
pub mod values;
pub mod webhooks;

pub use error::{Error, Result};

/// The connection store functions run on: a pooled one (`&mut conn` from `pool.acquire()`)
/// or a transaction (`&mut tx`). Code above `store/` names it through this alias.
pub type Conn = sqlx::PgConnection;

/// A transaction on the pool, for a caller that writes through several store functions.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Begins a transaction.
pub async fn begin(pool: &sqlx::PgPool) -> Result<Tx> {
    Ok(pool.begin().await?)
}

/// Lets the transaction commit without waiting for its WAL flush. Only for transactions
/// that a crash may lose safely, because what they record stays durable elsewhere (an
/// applied inbox event is pending again and simply applied again).
pub async fn relax_commit(conn: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(conn)
        .await?;
    Ok(())
}
