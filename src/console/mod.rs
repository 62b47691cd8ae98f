//! The admin console at `/console`: server-rendered pages (askama templates compiled into
//! the binary) for the people who sell and support the product. One module per page; the
//! session, CSRF and role checks are extractors (`session.rs`), so a handler cannot forget
//! them. Writes reuse the API's write functions (same validation, same messages) and are
//! audited in the write's own transaction. No SQL here: it lives in `store::console`.

pub mod audit;
pub mod catalog;
pub mod companies;
pub mod company;
pub mod error;
pub mod insights;
pub mod login;
pub mod session;
pub mod stripe;

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::error::{AppError, AppResult};
use crate::api::{emit, AppState};
use error::ConsoleResult;
use session::Console;

const CSS: &str = include_str!("../../templates/console/console.css");

/// The console's routes (none when `console.enabled = false`). Does no I/O.
pub fn router(state: AppState) -> Router {
    if !state.config.console.enabled {
        return Router::new();
    }
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/companies") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/companies") }),
        )
        .route("/console/assets/console.css", get(css))
        .route("/console/login", get(login::page).post(login::submit))
        .route("/console/logout", post(login::logout))
        .route(
            "/console/password",
            get(login::password_page).post(login::password_submit),
        )
        .route("/console/environment", post(login::switch_environment))
        .route("/console/companies", get(companies::page))
        .route("/console/companies/{id}", get(company::page))
        .route(
            "/console/companies/{id}/overrides",
            post(company::create_override),
        )
        .route(
            "/console/companies/{id}/overrides/{override_id}",
            post(company::update_override),
        )
        .route(
            "/console/companies/{id}/overrides/{override_id}/delete",
            post(company::delete_override),
        )
        .route("/console/stripe", get(stripe::page))
        .route("/console/stripe/events/{id}", get(stripe::event_page))
        .route("/console/stripe/events/{id}/retry", post(stripe::retry))
        .route("/console/stripe/reconcile", post(stripe::reconcile_now))
        .route("/console/audit", get(audit::page))
        .route("/console/plans", get(catalog::plans_page))
        .route(
            "/console/plans/{id}/entitlements",
            post(catalog::create_entitlement),
        )
        .route(
            "/console/plans/entitlements/{id}/delete",
            post(catalog::delete_entitlement),
        )
        .route(
            "/console/features",
            get(catalog::features_page).post(catalog::create_feature),
        )
        .route("/console/features/{id}", post(catalog::update_feature))
        .route(
            "/console/flags/{id}/rules",
            get(catalog::rules_page).post(catalog::put_rules),
        )
        .route("/console/insights", get(insights::page))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn css() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// The metrics label of a console route (a fixed set, so labels stay bounded).
fn page_label(path: &str) -> &'static str {
    match path {
        "/console" | "/console/" => "root",
        "/console/assets/console.css" => "assets",
        "/console/login" | "/console/logout" => "login",
        "/console/password" => "password",
        "/console/environment" => "environment",
        "/console/companies" => "companies",
        "/console/companies/{id}" => "company",
        p if p.starts_with("/console/companies/{id}/overrides") => "overrides",
        p if p.starts_with("/console/stripe") => "stripe",
        "/console/audit" => "audit",
        p if p.starts_with("/console/plans") => "plans",
        "/console/features" | "/console/features/{id}" | "/console/flags/{id}/rules" => "features",
        "/console/insights" => "insights",
        _ => "other",
    }
}

/// Counts every console request by page and status class, and logs it.
async fn observe(req: Request, next: Next) -> Response {
    let page = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |m| page_label(m.as_str()));
    let method = req.method().clone();
    let started = Instant::now();
    let mut response = next.run(req).await;
    // No script, no framing, nothing cached: pages carry customer data and forms.
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'",
        ),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ] {
        headers.insert(name, axum::http::HeaderValue::from_static(value));
    }
    let status = response.status();
    let class = match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    crate::metrics::CONSOLE_REQUESTS.inc([page, class]);
    tracing::debug!(%method, page, status = status.as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "console request");
    response
}

/// What every signed-in page's layout shows: who, the environment switcher, a notice.
pub struct Layout {
    pub email: String,
    pub role: String,
    pub csrf: String,
    pub is_admin: bool,
    pub env_key: String,
    /// `(key, name)` of every environment.
    pub environments: Vec<(String, String)>,
    pub flash: String,
}

impl Layout {
    pub fn new(state: &AppState, c: &Console) -> Layout {
        Layout {
            email: c.email.clone(),
            role: c.role.clone(),
            csrf: c.csrf.clone(),
            is_admin: c.is_admin(),
            env_key: c.env.environment.key.clone(),
            environments: state
                .cache
                .environments()
                .map(|e| (e.environment.key.clone(), e.environment.name.clone()))
                .collect(),
            flash: String::new(),
        }
    }

    /// A notice from a redirect after a write (`?done=…`); only known ones are shown.
    pub fn with_notice(mut self, done: Option<&str>) -> Layout {
        self.flash = match done {
            Some("override-created") => "Override created.",
            Some("override-updated") => "Override updated.",
            Some("override-deleted") => "Override deleted.",
            Some("event-retried") => "Event applied again.",
            Some("reconcile-started") => "Reconcile started.",
            Some("environment") => "Environment switched.",
            _ => "",
        }
        .to_string();
        self
    }
}

/// A console write as the audit log names it, with the lifecycle messages the API sends for
/// it (`None`: the write queued its own) and the table `entitled_writes_total` counts it
/// against.
#[derive(Debug, Clone, Copy)]
pub struct Action {
    pub name: &'static str,
    pub kinds: Option<&'static emit::Kinds>,
    pub table: &'static str,
}

impl Action {
    const fn new(name: &'static str, kinds: &'static emit::Kinds, table: &'static str) -> Self {
        Action {
            name,
            kinds: Some(kinds),
            table,
        }
    }
}

pub const FEATURE_CREATE: Action = Action::new("feature.create", &emit::FEATURE, "features");
pub const FEATURE_UPDATE: Action = Action::new("feature.update", &emit::FEATURE, "features");
pub const ENTITLEMENT_CREATE: Action = Action::new(
    "plan_entitlement.create",
    &emit::PLAN_ENTITLEMENT,
    "plan_entitlements",
);
pub const ENTITLEMENT_DELETE: Action = Action::new(
    "plan_entitlement.delete",
    &emit::PLAN_ENTITLEMENT,
    "plan_entitlements",
);
pub const RULES_REPLACE: Action = Action {
    name: "flag_rules.replace",
    kinds: None,
    table: "flags",
};
pub const OVERRIDE_CREATE: Action =
    Action::new("override.create", &emit::OVERRIDE, "company_overrides");
pub const OVERRIDE_UPDATE: Action =
    Action::new("override.update", &emit::OVERRIDE, "company_overrides");
pub const OVERRIDE_DELETE: Action =
    Action::new("override.delete", &emit::OVERRIDE, "company_overrides");

/// Audits a write made through the API's functions in its transaction, then commits it as
/// the API would (messages, snapshot changes).
pub async fn audit_and_commit(
    state: &AppState,
    console: &Console,
    mut tx: crate::store::Tx,
    action: Action,
    written: emit::Written,
) -> ConsoleResult<()> {
    let auth = console.auth();
    crate::store::console::audit(
        &mut tx,
        &crate::store::console::NewAudit {
            actor_id: &console.user_id,
            actor_email: &console.email,
            environment_id: Some(console.env_id()),
            company_id: written.company_id.as_deref(),
            action: action.name,
            target: &written.id,
            before: written.before.as_ref(),
            after: written.after.as_ref(),
        },
    )
    .await?;
    match action.kinds {
        // A lifecycle message (`<object>.created`, …) when wanted, then commit.
        Some(kinds) => emit::finish(state, &auth, tx, kinds, written).await?,
        // The write queued its own messages: commit with its changes.
        None => state.commit(tx, &written.changes).await?,
    }
    crate::metrics::WRITES.inc(action.table);
    tracing::info!(user = %console.email, action = action.name, "console write");
    Ok(())
}

/// Audits and commits a write that succeeded ([`audit_and_commit`]). A write refused for
/// what the user sent is rolled back and answered as its status and message, for the form
/// to show; a server error stays an error.
pub async fn commit_or_refused(
    state: &AppState,
    console: &Console,
    tx: crate::store::Tx,
    action: Action,
    result: AppResult<emit::Written>,
) -> ConsoleResult<Result<(), (axum::http::StatusCode, String)>> {
    match result {
        Ok(written) => audit_and_commit(state, console, tx, action, written)
            .await
            .map(Ok),
        Err(e) => {
            drop(tx);
            shown(e).map(Err)
        }
    }
}

/// An API error a form can show (4xx, with its status), or the error itself (5xx).
pub fn shown(e: AppError) -> Result<(axum::http::StatusCode, String), error::ConsoleError> {
    let status = e.status();
    if status.is_server_error() {
        return Err(e.into());
    }
    Ok((status, e.to_string()))
}

/// Renders a template into an HTML response.
pub fn render(t: &impl askama::Template) -> ConsoleResult<Response> {
    Ok(axum::response::Html(t.render()?).into_response())
}

/// `2026-12-06 14:03 UTC`, or an em dash.
pub fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "—".to_string(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// `?a=b` query parameters as pairs (repeated names kept).
pub fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}
