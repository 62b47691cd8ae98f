//! `/console/stripe`: the inbox by status (with each event's JSON and a retry) and the
//! reconcile runs with their live counts and "Reconcile now". Retry and reconcile reuse the
//! API's functions.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};

use super::error::{ConsoleError, ConsoleResult};
use super::session::{Console, Posted};
use super::{param, query_pairs, render, when, Layout};
use crate::api::{stripe as api_stripe, AppState};
use crate::store;

pub struct EventLine {
    pub id: String,
    pub kind: String,
    pub object_id: String,
    pub status: String,
    pub attempts: i32,
    pub error: String,
    pub received: String,
}

pub struct RunLine {
    pub id: String,
    pub status: String,
    pub trigger: String,
    pub started: String,
    pub finished: String,
    /// Objects seen, created, updated and deleted, by type (JSON).
    pub counts: String,
    pub requests: i32,
    pub errors: usize,
}

#[derive(Template)]
#[template(path = "console/stripe.html")]
struct Page {
    layout: Layout,
    statuses: &'static [&'static str],
    status: String,
    events: Vec<EventLine>,
    runs: Vec<RunLine>,
    running: bool,
}

#[tracing::instrument(skip_all, fields(console_user))]
pub async fn page(
    State(state): State<AppState>,
    console: Console,
    uri: Uri,
) -> ConsoleResult<Response> {
    let pairs = query_pairs(&uri);
    let status = param(&pairs, "status").unwrap_or("").to_string();
    if !status.is_empty() && !store::stripe_inbox::STATUSES.contains(&status.as_str()) {
        return Err(ConsoleError::BadRequest(format!(
            "status: {status:?} is not one of {}",
            store::stripe_inbox::STATUSES.join(", ")
        )));
    }
    let mut conn = state.pool.acquire().await?;
    let rows = store::stripe_inbox::list(
        &mut conn,
        console.env_id(),
        Some(status.as_str()).filter(|s| !s.is_empty()),
        None,
        100,
        0,
    )
    .await?;
    let runs = store::reconcile::list_runs(&mut conn, console.env_id(), None, 20, 0).await?;
    let running = runs.iter().any(|r| r.status == "running");
    render(&Page {
        layout: Layout::new(&state, &console).with_notice(param(&pairs, "done")),
        statuses: store::stripe_inbox::STATUSES,
        status,
        events: rows
            .into_iter()
            .map(|r| EventLine {
                id: r.id,
                kind: r.kind,
                object_id: r.object_id.unwrap_or_default(),
                status: r.status,
                attempts: r.attempts,
                error: r.error.unwrap_or_default(),
                received: when(Some(r.received_at)),
            })
            .collect(),
        runs: runs
            .into_iter()
            .map(|r| RunLine {
                errors: r.errors.0.as_array().map_or(0, Vec::len),
                id: r.id,
                status: r.status,
                trigger: r.trigger,
                started: when(Some(r.started_at)),
                finished: when(r.finished_at),
                counts: r.counts.0.to_string(),
                requests: r.requests,
            })
            .collect(),
        running,
    })
}

#[derive(Template)]
#[template(path = "console/stripe_event.html")]
struct EventPage {
    layout: Layout,
    id: String,
    kind: String,
    status: String,
    attempts: i32,
    error: String,
    payload: String,
}

pub async fn event_page(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> ConsoleResult<Response> {
    let mut conn = state.pool.acquire().await?;
    let row = store::stripe_inbox::get(&mut conn, console.env_id(), &id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("Stripe event {id:?} not found")))?;
    let payload = store::console::stripe_event_payload(&mut conn, console.env_id(), &id)
        .await?
        .map(|p| serde_json::to_string_pretty(&p).unwrap_or_default())
        .unwrap_or_default();
    render(&EventPage {
        layout: Layout::new(&state, &console),
        id: row.id,
        kind: row.kind,
        status: row.status,
        attempts: row.attempts,
        error: row.error.unwrap_or_default(),
        payload,
    })
}

/// Records a console write that committed on its own (the inbox worker and reconcile own
/// their transactions), right after it.
async fn audit_after(
    state: &AppState,
    console: &Console,
    action: &str,
    target: &str,
    after: Option<serde_json::Value>,
) -> ConsoleResult<()> {
    let mut conn = state.pool.acquire().await?;
    store::console::audit(
        &mut conn,
        &store::console::NewAudit {
            actor_id: &console.user_id,
            actor_email: &console.email,
            environment_id: Some(console.env_id()),
            company_id: None,
            action,
            target,
            before: None,
            after: after.as_ref(),
        },
    )
    .await?;
    tracing::info!(user = %console.email, action, target, "console write");
    Ok(())
}

#[tracing::instrument(skip_all, fields(console_user, event_id = %id))]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let console = posted.console;
    console.require_admin()?;
    let row = api_stripe::retry(&state, &console.auth(), &id).await?;
    let after = serde_json::to_value(&row).ok();
    audit_after(&state, &console, "stripe_event.retry", &id, after).await?;
    Ok(Redirect::to("/console/stripe?done=event-retried").into_response())
}

#[tracing::instrument(skip_all, fields(console_user))]
pub async fn reconcile_now(
    State(state): State<AppState>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let console = posted.console;
    console.require_admin()?;
    let run = api_stripe::reconcile_now(&state, &console.auth()).await?;
    let after = serde_json::to_value(&run).ok();
    audit_after(&state, &console, "reconcile.start", &run.id, after).await?;
    Ok(Redirect::to("/console/stripe?done=reconcile-started").into_response())
}
