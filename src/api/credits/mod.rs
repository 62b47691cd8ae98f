//! `/billing/credits…`, one module per resource: credit types ([`types`]), bundles
//! ([`bundles`]), plan credit grants ([`plan_grants`]) and company grants with zero-out,
//! balances and the ledger ([`grants`]). The SQL is in `store::credit_types`,
//! `store::credit_bundles`, `store::credit_plan_grants` and `store::credits`.

pub mod bundles;
pub mod grants;
pub mod plan_grants;
pub mod types;

use crate::api::error::{AppError, AppResult};
use crate::store::credits::to_micros;

/// The largest amount one request may grant or configure, in credits.
const MAX_CREDITS: f64 = 1e12;

/// An amount of credits from a request, in micro-credits: positive, finite, at most
/// [`MAX_CREDITS`] and at least one micro-credit; the error names `field`.
fn credits_amount(field: &str, v: f64) -> AppResult<i64> {
    if !(v.is_finite() && v > 0.0 && v <= MAX_CREDITS) {
        return Err(AppError::bad_request(format!(
            "{field}: must be a positive number of credits up to {MAX_CREDITS}"
        )));
    }
    let micros = to_micros(v);
    if micros == 0 {
        return Err(AppError::bad_request(format!(
            "{field}: must be at least 0.000001"
        )));
    }
    Ok(micros)
}
