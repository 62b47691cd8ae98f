//! The HTTP API: routes, one file per resource.

pub mod answer;
pub mod auth;
mod breaker;
pub mod checks;
pub mod companies;
pub mod credits;
pub mod datastream;
pub mod emit;
pub mod envelope;
pub mod error;
pub mod events;
pub mod extract;
pub mod feature_usage;
pub mod features;
pub mod flags;
pub mod front;
pub mod health;
pub mod insights;
pub mod mcp;
pub mod meters;
pub mod openapi;
pub mod overrides;
pub mod plan_entitlements;
pub mod plans;
pub mod resource;
pub mod state;
pub mod stripe;
pub mod users;
pub mod views;
pub mod webhooks;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;

use crate::api::error::AppError;
pub use state::AppState;

/// One route: the router and the OpenAPI document are both checked against this table.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    router: MethodRouter<AppState>,
    /// Whether the route needs Postgres (then it answers 503 at once while the database
    /// breaker is open); false for the checks, served from the snapshot, and operations.
    pub needs_db: bool,
}

impl Route {
    /// A route answered without Postgres: the database breaker leaves it alone.
    fn without_db(mut self) -> Route {
        self.needs_db = false;
        self
    }
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    Route {
        method,
        path,
        router: axum::routing::on(filter, handler),
        needs_db: true,
    }
}

/// The five routes of a resource of the usual shape: list and create on `path`; get, update
/// and delete on `path/{id}`. `crud!("/plans", plans)` routes `plans::list` …;
/// `crud!(path, module::{list, create, get, update, delete})` names the handlers.
macro_rules! crud {
    ($path:literal, $($m:ident)::+ :: {
        $list:ident, $create:ident, $get:ident, $update:ident, $delete:ident $(,)?
    }) => {
        [
            route(Method::GET, $path, $($m)::+::$list),
            route(Method::POST, $path, $($m)::+::$create),
            route(Method::GET, concat!($path, "/{id}"), $($m)::+::$get),
            route(Method::PUT, concat!($path, "/{id}"), $($m)::+::$update),
            route(Method::DELETE, concat!($path, "/{id}"), $($m)::+::$delete),
        ]
    };
    ($path:literal, $($m:ident)::+) => {
        crud!($path, $($m)::+::{list, create, get, update, delete})
    };
}

/// Every route the daemon serves. Adding one here without an `#[utoipa::path]` in
/// `openapi::ApiDoc` fails `tests/openapi.rs`.
pub fn routes() -> Vec<Route> {
    use Method as M;
    let mut table = vec![
        route(M::GET, "/health", health::health).without_db(),
        route(M::GET, "/ready", health::ready).without_db(),
        route(M::GET, "/metrics", health::metrics).without_db(),
        route(M::GET, "/openapi.json", openapi::openapi_json).without_db(),
        route(M::GET, "/companies", companies::list),
        route(M::POST, "/companies", companies::upsert),
        route(M::GET, "/companies/lookup", companies::lookup),
        route(M::GET, "/companies/{id}", companies::get),
        route(M::DELETE, "/companies/{id}", companies::delete),
        route(M::POST, "/company-traits", companies::upsert_trait),
        route(M::GET, "/events", events::list),
        route(M::POST, "/events", events::create),
        route(M::GET, "/events/{id}", events::get),
        route(M::POST, "/event-batch", events::create_batch),
        route(M::GET, "/feature-usage", feature_usage::list),
        route(M::POST, "/batch", events::capture),
        route(M::POST, "/webhooks/stripe", stripe::webhook_default),
        route(
            M::POST,
            "/webhooks/stripe/{environment_key}",
            stripe::webhook,
        ),
        route(M::GET, "/webhooks/count", webhooks::count),
        route(M::POST, "/webhooks/{id}/test", webhooks::test),
        route(
            M::POST,
            "/webhooks/{id}/rotate-secret",
            webhooks::rotate_secret,
        ),
        route(M::GET, "/webhook-events", webhooks::list_events),
        route(M::GET, "/webhook-events/count", webhooks::count_events),
        route(M::GET, "/webhook-events/{id}", webhooks::get_event),
        route(M::GET, "/stripe/events", stripe::list_events),
        route(M::POST, "/stripe/events/{id}/retry", stripe::retry_event),
        route(M::POST, "/stripe/reconcile", stripe::start_reconcile),
        route(
            M::GET,
            "/stripe/reconcile-runs",
            stripe::list_reconcile_runs,
        ),
        route(
            M::GET,
            "/stripe/reconcile-runs/{id}",
            stripe::get_reconcile_run,
        ),
        route(M::GET, "/billing/meters", meters::list_meters),
        route(M::GET, "/stripe/meter-events", meters::list_meter_events),
        route(M::GET, "/stripe/meter-events/{id}", meters::get_meter_event),
        route(
            M::POST,
            "/stripe/meter-events/{id}/retry",
            meters::retry_meter_event,
        ),
        route(
            M::POST,
            "/billing/credits/grants/company",
            credits::grants::grant_to_company,
        ),
        route(
            M::GET,
            "/billing/credits/grants/company/list",
            credits::grants::list_company_grants,
        ),
        route(
            M::PUT,
            "/billing/credits/grants/{id}/zero-out",
            credits::grants::zero_out,
        ),
        route(M::GET, "/billing/credits/balance", credits::grants::balance),
        route(M::GET, "/billing/credits/ledger", credits::grants::ledger),
        route(M::GET, "/users", users::list),
        route(M::POST, "/users", users::upsert),
        route(M::GET, "/users/lookup", users::lookup),
        route(M::GET, "/users/{id}", users::get),
        route(M::DELETE, "/users/{id}", users::delete),
        route(M::POST, checks::ALL_PATH, checks::check_all).without_db(),
        route(M::POST, "/flags/check-bulk", checks::check_bulk).without_db(),
        route(M::PUT, "/flags/{id}/rules", flags::put_rules),
        route(M::POST, checks::ONE_PATH, checks::check_one).without_db(),
        route(M::GET, "/insights/summary", insights::summary),
        route(M::GET, "/insights/top-features", insights::top_features),
        route(M::GET, "/insights/plan-growth", insights::plan_growth),
        // Its check tool answers from the snapshot; the others fail on their own.
        route(M::POST, "/mcp", crate::api::mcp::handle).without_db(),
    ];
    let resources = [
        crud!("/webhooks", webhooks),
        crud!(
            "/billing/credits",
            credits::types::{
                list_credits,
                create_credit,
                get_credit,
                update_credit,
                delete_credit,
            }
        ),
        crud!(
            "/billing/credits/bundles",
            credits::bundles::{
                list_bundles,
                create_bundle,
                get_bundle,
                update_bundle,
                delete_bundle,
            }
        ),
        crud!(
            "/billing/credits/plan-grants",
            credits::plan_grants::{
                list_plan_grants,
                create_plan_grant,
                get_plan_grant,
                update_plan_grant,
                delete_plan_grant,
            }
        ),
        crud!("/features", features),
        crud!("/flags", flags),
        crud!("/plans", plans),
        crud!("/plan-entitlements", plan_entitlements),
        crud!("/company-overrides", overrides),
    ];
    table.extend(resources.into_iter().flatten());
    table
}

/// All routes. Does no I/O.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let table = routes();
    let latency = &crate::metrics::HTTP_REQUEST_SECONDS;
    latency.init(table.iter().map(|r| (method_label(&r.method), r.path)));
    let mut router = Router::new();
    for r in table {
        // Each route observes into its own latency series, resolved here once.
        let observed = Observed::route(&r.method, r.path);
        let mut method_router = r.router;
        if r.needs_db {
            method_router = method_router.route_layer(middleware::from_fn_with_state(
                state.db.clone(),
                breaker::guard,
            ));
        }
        let method_router =
            method_router.route_layer(middleware::from_fn_with_state(observed, observe));
        // Routes on one path merge into one method router.
        router = router.route(r.path, method_router);
    }
    let unmatched = Observed {
        route: None,
        latency: latency.unmatched(),
    };
    router
        .route("/datastream", axum::routing::get(datastream::upgrade))
        .fallback(not_found.layer(middleware::from_fn_with_state(unmatched, observe)))
        .method_not_allowed_fallback(
            method_not_allowed.layer(middleware::from_fn_with_state(unmatched, observe)),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

async fn method_not_allowed() -> Response {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"error": "method not allowed on this route"})),
    )
        .into_response()
}

/// What a request is recorded under: `'static` references, so handing them to each
/// request copies two pointers and touches no shared reference count.
#[derive(Clone, Copy)]
struct Observed {
    /// The route's path; `None` for the fallbacks (no such route, or no such method on it).
    route: Option<&'static str>,
    latency: &'static crate::metrics::ShardedHistogram,
}

impl Observed {
    /// The series of a route in [`routes`] (created by [`router`]).
    fn route(method: &Method, path: &'static str) -> Observed {
        Observed {
            route: Some(path),
            latency: crate::metrics::HTTP_REQUEST_SECONDS.series(method_label(method), path),
        }
    }

    /// Runs `respond` inside one span per request with the method, the route and (recorded
    /// by the auth extractor) the environment; records its latency in the route's
    /// histogram and its status in a count per status class, and logs it.
    ///
    /// The span is at INFO, so every log line of a request carries them; the check routes,
    /// the hot path, get a DEBUG span (enable with `log.level = "info,entitled::api=debug"`),
    /// since an enabled span costs an allocation per request.
    async fn observe(
        self,
        method: &'static str,
        route: &str,
        respond: impl std::future::Future<Output = Response>,
    ) -> Response {
        let span = if route.ends_with("check") || route.ends_with("check-bulk") {
            tracing::debug_span!("request", method, route, env = tracing::field::Empty)
        } else {
            tracing::info_span!("request", method, route, env = tracing::field::Empty)
        };
        let started = std::time::Instant::now();
        let response = tracing::Instrument::instrument(respond, span.clone()).await;
        let elapsed = started.elapsed();
        self.latency.observe(elapsed.as_secs_f64());
        let status = response.status();
        crate::metrics::HTTP_RESPONSES.inc(match status.as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        });
        let _enter = span.enter();
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_us = elapsed.as_micros() as u64,
                "request"
            );
        }
        response
    }
}

/// The router's middleware around every route: [`Observed::observe`].
async fn observe(State(observed): State<Observed>, req: Request, next: Next) -> Response {
    // Only the fallbacks look the path up (a 405 has one).
    let matched = match observed.route {
        Some(_) => None,
        None => req.extensions().get::<MatchedPath>().cloned(),
    };
    let route = observed
        .route
        .or(matched.as_ref().map(MatchedPath::as_str))
        .unwrap_or("unmatched");
    let method = method_label(req.method());
    observed.observe(method, route, next.run(req)).await
}
