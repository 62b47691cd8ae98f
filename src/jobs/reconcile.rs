//! `reconcile`: a full Stripe reconciliation of every environment that has a Stripe API key,
//! one after the other (`stripe/reconcile.rs` does the work). An environment whose run is
//! still going (a long run, or one started through the API) is skipped this tick.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{JobContext, Summary};
use crate::stripe::reconcile::{self, StartError, Trigger};

pub async fn run_once(ctx: &JobContext, _now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let sync = ctx.sync();
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    let mut ids: Vec<&String> = sync.environments.keys().collect();
    ids.sort();
    for env_id in ids {
        let key = sync.environments[env_id].key.clone();
        match reconcile::start(&sync, env_id, Trigger::Schedule).await {
            Ok(started) => {
                let run = started.run(&sync, &reconcile::Quiet, &ctx.shutdown).await?;
                if run.status != "succeeded" {
                    failed.push(format!("{key}: run {} {}", run.id, run.status));
                }
                runs.push(json!({"environment": key, "run_id": run.id, "status": run.status}));
            }
            Err(StartError::Disabled(_)) => {}
            Err(e @ StartError::AlreadyRunning { .. }) => {
                runs.push(json!({"environment": key, "skipped": e.to_string()}));
            }
            Err(e) => return Err(e.into()),
        }
        if ctx.shutdown.is_cancelled() {
            break;
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("reconcile failed: {}", failed.join("; "));
    }
    Ok(json!({ "runs": runs }))
}
