//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated from the handlers'
//! `#[utoipa::path]` attributes and the views' `ToSchema` derives. `tests/openapi.rs` fails
//! when a route of `api::routes()` is missing from it (or documented but not served).

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use super::{
    checks, companies, credits, events, feature_usage, features, flags, health, insights, meters,
    overrides, plan_entitlements, plans, stripe, users, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "entitled",
        description = "Self-hosted entitlements: Stripe in, feature checks out. Wire-compatible \
                       with the subset of the Schematic API it implements.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        health::health,
        health::ready,
        health::metrics,
        openapi_json,
        companies::list,
        companies::upsert,
        companies::lookup,
        companies::get,
        companies::delete,
        companies::upsert_trait,
        events::list,
        events::create,
        events::get,
        events::create_batch,
        events::capture,
        feature_usage::list,
        users::list,
        users::upsert,
        users::lookup,
        users::get,
        users::delete,
        features::list,
        features::create,
        features::get,
        features::update,
        features::delete,
        flags::list,
        flags::create,
        flags::get,
        flags::update,
        flags::delete,
        flags::put_rules,
        checks::check_all,
        checks::check_bulk,
        checks::check_one,
        plans::list,
        plans::create,
        plans::get,
        plans::update,
        plans::delete,
        plan_entitlements::list,
        plan_entitlements::create,
        plan_entitlements::get,
        plan_entitlements::update,
        plan_entitlements::delete,
        overrides::list,
        overrides::create,
        overrides::get,
        overrides::update,
        overrides::delete,
        stripe::webhook_default,
        stripe::webhook,
        stripe::list_events,
        stripe::retry_event,
        stripe::start_reconcile,
        stripe::list_reconcile_runs,
        stripe::get_reconcile_run,
        meters::list_meters,
        meters::list_meter_events,
        meters::get_meter_event,
        meters::retry_meter_event,
        webhooks::list,
        webhooks::count,
        webhooks::create,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::test,
        webhooks::rotate_secret,
        webhooks::list_events,
        webhooks::count_events,
        webhooks::get_event,
        credits::types::list_credits,
        credits::types::create_credit,
        credits::types::get_credit,
        credits::types::update_credit,
        credits::types::delete_credit,
        credits::bundles::list_bundles,
        credits::bundles::create_bundle,
        credits::bundles::get_bundle,
        credits::bundles::update_bundle,
        credits::bundles::delete_bundle,
        credits::plan_grants::list_plan_grants,
        credits::plan_grants::create_plan_grant,
        credits::plan_grants::get_plan_grant,
        credits::plan_grants::update_plan_grant,
        credits::plan_grants::delete_plan_grant,
        credits::grants::grant_to_company,
        credits::grants::list_company_grants,
        credits::grants::zero_out,
        credits::grants::balance,
        credits::grants::ledger,
        insights::summary,
        insights::top_features,
        insights::plan_growth,
        crate::api::mcp::handle,
    ),
    modifiers(&SecuritySchemes),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "operations", description = "Health, readiness, metrics and this document: no key needed"),
        (name = "companies"), (name = "users"), (name = "features"), (name = "flags"),
        (name = "checks", description = "Answered from memory, never from Postgres"),
        (name = "plans"), (name = "plan-entitlements"), (name = "company-overrides"),
        (name = "events"), (name = "credits"), (name = "stripe", description = "Webhooks (signed, no API key) and the inbox"), (name = "insights"),
        (name = "billing", description = "Usage billed through Stripe meters"),
        (name = "webhooks", description = "Outbound webhooks: endpoints, and the messages sent to them"),
        (name = "mcp", description = "Model Context Protocol over streamable HTTP"),
    )
)]
pub struct ApiDoc;

/// The API key, in Schematic's header or as a bearer token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Schematic-Api-Key",
                "A secret from `entitled api-key create`; it selects the environment.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same secret as `Authorization: Bearer <secret>`."))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi().to_json().unwrap_or_else(|e| {
            format!(r#"{{"error": "cannot render the OpenAPI document: {e}"}}"#)
        })
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value)))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// `{"error": "<message naming the problem>"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    pub error: String,
}

/// The success envelope: `{"data": …, "params": {…}}` (documentation type).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Enveloped<T> {
    pub data: T,
    /// The query parameters used, echoed.
    #[schema(value_type = Object)]
    pub params: Value,
}

/// `{"deleted": true}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Deleted {
    pub deleted: bool,
}

/// The error answers any authenticated route may give.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// Malformed input; the message names the field or parameter.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No API key, or an unknown one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A readonly key tried to write.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The object (or one it references) does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Conflicts with an existing record.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than `server.body_limit_bytes`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// Postgres is unreachable; try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `track` or `identify` (documentation type).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum EventType {
    Track,
    Identify,
}

/// `plan` (a base plan) or `add_on` (documentation type).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum PlanType {
    Plan,
    AddOn,
}

/// `boolean`, `event` (usage counted from track events) or `trait` (documentation type).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum FeatureType {
    Boolean,
    Event,
    Trait,
}

/// What an entitlement grants (documentation type).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ValueType {
    Boolean,
    Numeric,
    Unlimited,
    Trait,
    Credit,
}

/// How a plan entitlement is priced; `pay_in_advance` makes the allocation the subscribed
/// quantity (documentation type).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum PriceBehavior {
    PayInAdvance,
    PayAsYouGo,
    Overage,
    CreditBurndown,
    Tier,
}

/// `limit` and `offset` of every list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// At most this many rows (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Skip this many rows (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// Identifying keys, `keys[<key>]=<value>` (or one JSON-encoded `keys={"k":"v"}`).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct KeysParams {
    #[param(style = DeepObject, explode)]
    pub keys: HashMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_both_key_schemes() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["api_key"]["name"], "X-Schematic-Api-Key");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        // No key for the operations routes.
        assert_eq!(
            doc["paths"]["/health"]["get"]["security"],
            serde_json::json!([{}])
        );
    }
}
