//! Which Stripe event types entitled applies, and storing verified events in the inbox
//! (`store::stripe_inbox` holds the SQL: insert, claim, finish, fail, list).

use sqlx::PgConnection;

pub use crate::store::stripe_inbox::{
    backoff_secs, claim, claim_next, fail, finish, get, list, Claimed, EventRow, NewEvent, STATUSES,
};

/// Event types entitled acts on. Everything else is stored as `ignored`.
pub const HANDLED_TYPES: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "product.created",
    "product.updated",
    "product.deleted",
    "price.created",
    "price.updated",
    "price.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "billing.meter.created",
    "billing.meter.updated",
    "billing.meter.deactivated",
    "billing.meter.reactivated",
];

pub fn is_handled(kind: &str) -> bool {
    HANDLED_TYPES.contains(&kind)
}

/// Stores a verified event; `false` when it was already there (a redelivery). Types
/// entitled does not act on are stored as `ignored` right away.
pub async fn insert(conn: &mut PgConnection, e: &NewEvent<'_>) -> Result<bool, sqlx::Error> {
    crate::store::stripe_inbox::insert(conn, e, !is_handled(e.kind)).await
}
