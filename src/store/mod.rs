//! SQL per aggregate. Functions that write take a connection or transaction; callers own
//! the transaction boundary.

pub mod api_keys;
pub mod companies;
pub mod values;
