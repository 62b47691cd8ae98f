//! SQL per aggregate. Functions that write take a connection or transaction; callers own
//! the transaction boundary.

pub mod api_keys;
pub mod catalog;
pub mod companies;
pub mod credits;
pub mod events;
pub mod insights;
pub mod keys;
pub mod overrides;
pub mod plans;
pub mod reconcile;
pub mod stripe;
pub mod users;
pub mod values;
