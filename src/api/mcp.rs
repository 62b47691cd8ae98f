//! MCP: `POST /mcp`, the Model Context Protocol over streamable HTTP (stateless: every
//! request stands alone, so any replica can answer it).
//!
//! Authentication is the REST API's: the API key in `X-Schematic-Api-Key` or
//! `Authorization: Bearer` selects the environment; a missing or unknown key gets 401 before
//! MCP is spoken. Readonly keys may call the read-only tools only (the others answer a tool
//! error naming the 403). Every tool calls the same function its REST endpoint does, and
//! answers `{"data": …, "params": {…}}` as structured content (and as text).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use crate::api::auth::{self, Auth};
use crate::api::error::{AppError, AppResult};
use crate::api::extract::Page;
use crate::api::AppState;
use crate::api::{checks, companies, events, insights, users};

/// The MCP server for one request, with the state every tool reads.
#[derive(Clone)]
pub struct EntitledMcp {
    state: AppState,
    tool_router: ToolRouter<EntitledMcp>,
}

/// `POST /mcp`: authenticates, then hands the request to the MCP transport.
#[utoipa::path(post, path = "/mcp", tag = "mcp",
    request_body(content = serde_json::Value, description = "A JSON-RPC message of the Model Context Protocol (streamable HTTP transport)"),
    responses(
        (status = 200, description = "The JSON-RPC response", body = serde_json::Value),
        (status = 202, description = "A notification, accepted"),
        (status = 400, description = "Not a valid MCP message", body = serde_json::Value),
        (status = 401, description = "No API key, or an unknown one", body = crate::api::openapi::ErrorBody),
        (status = 406, description = "The Accept header lacks application/json and text/event-stream"),
        (status = 415, description = "The body is not application/json"),
    ))]
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some(auth) = auth::secret_from(&parts.headers).and_then(|s| state.authenticate(s)) else {
        return AppError::Unauthorized.into_response();
    };
    auth.record_in_span();
    parts.extensions.insert(auth);
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(state.config.server.body_limit_bytes)
        // Every request carries an API key; DNS rebinding cannot borrow one.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(EntitledMcp::new(state.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    match service.oneshot(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}

/// Identifying keys, e.g. `{"id": "acme"}`.
type Keys = BTreeMap<String, String>;

fn key_map(keys: Option<Keys>) -> Vec<(String, String)> {
    keys.unwrap_or_default().into_iter().collect()
}

fn keys_json(keys: Keys) -> Map<String, Value> {
    keys.into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListCompaniesArgs {
    /// At most this many companies (1 to 1000, default 100), newest first.
    pub limit: Option<i64>,
    /// Skip this many.
    pub offset: Option<i64>,
    /// Matches the name or any key value.
    pub q: Option<String>,
    /// Only companies currently on this plan (`plan_…`).
    pub plan_id: Option<String>,
    /// Only these company ids (`comp_…`).
    pub ids: Option<Vec<String>>,
    /// Only companies on no plan.
    pub without_plan: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpsertCompanyArgs {
    /// Identifying keys, e.g. `{"id": "acme"}`; a company matching any of them is updated.
    pub keys: Keys,
    pub name: Option<String>,
    /// Traits to set, e.g. `{"seats_used": 4}`.
    pub traits: Option<Map<String, Value>>,
    /// The base plan (`plan_…`).
    pub base_plan_id: Option<String>,
    /// Replaces the add-ons (`plan_…`).
    pub add_on_ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListUsersArgs {
    /// At most this many users (1 to 1000, default 100), newest first.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// Matches the name or any key value.
    pub q: Option<String>,
    /// Only members of this company (`comp_…`).
    pub company_id: Option<String>,
    pub ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpsertUserArgs {
    /// Identifying keys, e.g. `{"email": "ada@example.com"}`.
    pub keys: Keys,
    pub name: Option<String>,
    pub traits: Option<Map<String, Value>>,
    /// Keys of the user's company (created when none matches).
    pub company: Option<Keys>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TrackUsageEventArgs {
    /// The event name: features whose `event_subtype` it is count it as usage.
    pub event: String,
    /// Keys of the company the usage counts against.
    pub company: Option<Keys>,
    /// Keys of the user (optional).
    pub user: Option<Keys>,
    /// How much usage (default 1).
    pub quantity: Option<i64>,
    /// Company traits to set with the event.
    pub traits: Option<Map<String, Value>>,
    /// A key seen in the last 24 hours makes this a no-op answering the first event.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckFlagArgs {
    /// The flag's key, e.g. `custom-branding`.
    pub flag: String,
    /// Company keys; unknown keys evaluate with no company.
    pub company: Option<Keys>,
    /// User keys.
    pub user: Option<Keys>,
}

/// `{"data": …, "params": {…}}` as structured content, like the REST answer.
fn answer<T: Serialize>(data: AppResult<T>, params: Value) -> Result<CallToolResult, ErrorData> {
    match data {
        Ok(d) => match serde_json::to_value(d) {
            Ok(d) => Ok(CallToolResult::structured(
                json!({"data": d, "params": params}),
            )),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        },
        Err(e) => Ok(tool_error(e)),
    }
}

/// [`answer`] for the functions that return their view with the parameters they used.
fn answer_with_params<T: Serialize>(
    result: AppResult<(T, Value)>,
) -> Result<CallToolResult, ErrorData> {
    match result {
        Ok((view, params)) => answer(Ok(view), params),
        Err(e) => Ok(tool_error(e)),
    }
}

/// A failure the caller should see, with the HTTP status the REST API would answer.
fn tool_error(e: AppError) -> CallToolResult {
    e.log();
    let status = e.status();
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{e} (HTTP {})",
        status.as_u16()
    ))])
}

/// The caller's key, put in the request by [`handle`].
fn auth_of(parts: &Parts) -> Result<Auth, ErrorData> {
    parts
        .extensions
        .get::<Auth>()
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("request not authenticated", None))
}

fn page(limit: Option<i64>, offset: Option<i64>) -> AppResult<Page> {
    Page::new(limit, offset, "")
}

#[tool_router]
impl EntitledMcp {
    pub fn new(state: AppState) -> Self {
        static ROUTER: OnceLock<ToolRouter<EntitledMcp>> = OnceLock::new();
        EntitledMcp {
            state,
            tool_router: ROUTER.get_or_init(Self::tool_router).clone(),
        }
    }

    /// Companies of the key's environment, newest first, with keys, traits, plans,
    /// entitlements and usage.
    #[tool(
        name = "list-companies",
        annotations(
            title = "List companies",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_companies(
        &self,
        Parameters(a): Parameters<ListCompaniesArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        let result = async {
            let page = page(a.limit, a.offset)?;
            let filter = companies::CompanyFilter {
                ids: a.ids.unwrap_or_default(),
                plan_ids: a.plan_id.into_iter().collect(),
                q: a.q,
                without_plan: a.without_plan.unwrap_or(false),
            };
            let data = companies::list_companies(&self.state, &auth, &filter, page).await?;
            Ok((data, json!({"limit": page.limit, "offset": page.offset})))
        }
        .await;
        answer_with_params(result)
    }

    /// Creates or updates the company the keys identify (name, traits, base plan, add-ons).
    #[tool(
        name = "upsert-company",
        annotations(
            title = "Create or update a company",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn upsert_company(
        &self,
        Parameters(a): Parameters<UpsertCompanyArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        let body = companies::UpsertBody {
            keys: keys_json(a.keys),
            name: a.name,
            traits: a.traits,
            base_plan_id: a.base_plan_id,
            add_on_ids: a.add_on_ids,
            update_only: None,
        };
        answer(
            companies::upsert_company(&self.state, &auth, body).await,
            json!({}),
        )
    }

    /// Users of the key's environment, newest first, with keys, traits and companies.
    #[tool(
        name = "list-users",
        annotations(title = "List users", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_users(
        &self,
        Parameters(a): Parameters<ListUsersArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        let result = async {
            let page = page(a.limit, a.offset)?;
            let filter = users::UserFilter {
                ids: a.ids.unwrap_or_default(),
                company_id: a.company_id,
                q: a.q,
            };
            let data = users::list_users(&self.state, &auth, &filter, page).await?;
            Ok((data, json!({"limit": page.limit, "offset": page.offset})))
        }
        .await;
        answer_with_params(result)
    }

    /// Creates or updates the user the keys identify, optionally in a company.
    #[tool(
        name = "upsert-user",
        annotations(
            title = "Create or update a user",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn upsert_user(
        &self,
        Parameters(a): Parameters<UpsertUserArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        let body = users::UpsertBody {
            keys: keys_json(a.keys),
            name: a.name,
            traits: a.traits,
            company: a.company.map(keys_json),
            ..Default::default()
        };
        answer(
            users::upsert_user(&self.state, &auth, body).await,
            json!({}),
        )
    }

    /// Records usage: a track event for a company (and user), counted against every feature
    /// whose event it is.
    #[tool(
        name = "track-usage-event",
        annotations(
            title = "Track a usage event",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn track_usage_event(
        &self,
        Parameters(a): Parameters<TrackUsageEventArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        let mut body = Map::new();
        body.insert("event".into(), Value::String(a.event));
        if let Some(c) = a.company {
            body.insert("company".into(), Value::Object(keys_json(c)));
        }
        if let Some(u) = a.user {
            body.insert("user".into(), Value::Object(keys_json(u)));
        }
        if let Some(q) = a.quantity {
            body.insert("quantity".into(), q.into());
        }
        if let Some(t) = a.traits {
            body.insert("traits".into(), Value::Object(t));
        }
        answer(
            events::track(
                &self.state,
                &auth,
                &parts.headers,
                Value::Object(body),
                a.idempotency_key,
            )
            .await,
            json!({}),
        )
    }

    /// Counts for the key's environment: companies, users, plans with their company counts,
    /// features, and events and checks in the last 30 days.
    #[tool(
        name = "get-insights-summary",
        annotations(
            title = "Insights summary",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_insights_summary(
        &self,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        answer(insights::summary_of(&self.state, &auth).await, json!({}))
    }

    /// Features ranked by usage (tracked quantity) or by checks over a window, with the
    /// window before for comparison.
    #[tool(
        name = "get-top-features",
        annotations(title = "Top features", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_top_features(
        &self,
        Parameters(a): Parameters<insights::TopFeaturesArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        answer_with_params(insights::top_features_of(&self.state, &auth, &a).await)
    }

    /// Companies joining and leaving each plan per day (or month) over a window, and the
    /// plan's subscribers at the end of each.
    #[tool(
        name = "get-plan-growth",
        annotations(title = "Plan growth", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_plan_growth(
        &self,
        Parameters(a): Parameters<insights::PlanGrowthArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        answer_with_params(insights::plan_growth_of(&self.state, &auth, &a).await)
    }

    /// May this company (and user) use this feature now? The flag's value, the rule that
    /// decided it, and the entitlement with its allocation and usage.
    #[tool(
        name = "check-flag",
        annotations(title = "Check a flag", read_only_hint = true, open_world_hint = false)
    )]
    async fn check_flag(
        &self,
        Parameters(a): Parameters<CheckFlagArgs>,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let auth = auth_of(&parts)?;
        let company = key_map(a.company);
        let user = key_map(a.user);
        answer(
            checks::check_flag(&self.state, &auth, &a.flag, &company, &user),
            json!({}),
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for EntitledMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("entitled", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "entitled answers whether a company may use a feature (check-flag), keeps \
                 companies, users and usage (list-/upsert-company, list-/upsert-user, \
                 track-usage-event), and reports analytics (get-insights-summary, \
                 get-top-features, get-plan-growth). Keys identify companies and users, e.g. \
                 {\"id\": \"acme\"}. Everything is scoped to the API key's environment.",
            )
    }
}
