//! `retry_inbox`: applies the Stripe inbox's due events: failed ones whose backoff has
//! passed, and pending ones no worker picked up (stored by a replica that then stopped).
//! Workers apply new events as they arrive; this is the periodic sweep behind them.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{JobContext, Summary};
use crate::stripe::worker;

pub async fn run_once(ctx: &JobContext, _now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let processed = worker::drain(&ctx.sync()).await?;
    Ok(json!({ "processed": processed }))
}
