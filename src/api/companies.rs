//! `/companies`, `/company-traits`.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Auth;
use super::envelope;
use super::extract::{Json, Page, Path, Query};
use super::openapi::{Deleted, Enveloped, Errors};
use super::resource::{self, Edit, Resource};
use super::views::{self, EntitlementView, KeyView, TraitView};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::outbound::Event;
pub use crate::store::companies::CompanyFilter;
use crate::store::companies::{self as store, UpsertCompany};
use crate::store::keys::{self, Entity, Found};
use crate::store::Conn;

/// `CompanyPlanWithBillingSubView`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanRef {
    pub id: String,
    pub name: String,
    pub description: String,
    pub billing_product_id: Option<String>,
    pub added_on: DateTime<Utc>,
    pub included_credit_grants: Vec<Value>,
    /// `manual` (set through the API) or `stripe`.
    pub source: String,
    pub quantity: i64,
}

/// `CompanyEventPeriodMetricsResponseData`: one usage counter's current window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricView {
    pub account_id: String,
    pub company_id: String,
    pub environment_id: String,
    pub event_subtype: String,
    pub period: &'static str,
    pub month_reset: &'static str,
    pub value: i64,
    pub captured_at_min: DateTime<Utc>,
    pub captured_at_max: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The company's counters whose window is current.
fn metrics(auth: &Auth, company_id: &str) -> Vec<MetricView> {
    let Some(company) = auth.env.company(company_id) else {
        return Vec::new();
    };
    let now = Utc::now();
    let ctx = &company.context;
    let mut out: Vec<MetricView> = ctx
        .usage
        .iter()
        .filter_map(|c| {
            let win =
                crate::engine::period::window(c.period, c.month_reset, ctx.billing_anchor, now);
            (win.start == c.window_start).then(|| MetricView {
                account_id: String::new(),
                company_id: company_id.to_string(),
                environment_id: auth.env_id().to_string(),
                event_subtype: c.event.to_string(),
                period: c.period.as_str(),
                month_reset: c.month_reset.as_str(),
                value: c.count,
                captured_at_min: c.window_start,
                captured_at_max: now,
                valid_until: win.end,
                created_at: c.window_start,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.event_subtype, a.period, a.month_reset).cmp(&(
            &b.event_subtype,
            b.period,
            b.month_reset,
        ))
    });
    out
}

/// Remaining credits per credit type, as checks see them now.
fn credit_balances(auth: &Auth, company_id: &str) -> std::collections::BTreeMap<String, f64> {
    let Some(company) = auth.env.company(company_id) else {
        return Default::default();
    };
    let now = Utc::now();
    let ctx = &company.context;
    ctx.credit_grants
        .iter()
        .map(|g| g.credit_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|credit| {
            let remaining = ctx.credit_balance(&credit, now).remaining;
            (credit, remaining)
        })
        .collect()
}

/// `GenericPreviewObject`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// `CompanyDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompanyView {
    pub id: String,
    pub environment_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub keys: Vec<KeyView>,
    pub traits: Map<String, Value>,
    pub entity_traits: Vec<TraitView>,
    pub plan: Option<PlanRef>,
    pub add_ons: Vec<PlanRef>,
    pub plans: Vec<Preview>,
    pub entitlements: Vec<EntitlementView>,
    /// Per feature: access, allocation and usage, as `GET /feature-usage` reports it.
    pub usage: Vec<super::feature_usage::FeatureUsageView>,
    pub user_count: i64,
    /// Usage counters of the current windows (`CompanyEventPeriodMetricsResponseData`).
    pub metrics: Vec<MetricView>,
    /// Credits remaining now, by credit type id.
    pub billing_credit_balances: std::collections::BTreeMap<String, f64>,
    pub rules: Vec<Value>,
    pub billing_subscriptions: Vec<Value>,
    pub custom_plan_billings: Vec<Value>,
    pub payment_methods: Vec<Value>,
}

/// Full views of `ids`, in that order (ids not found are skipped).
pub async fn details(
    conn: &mut Conn,
    state: &AppState,
    auth: &Auth,
    ids: &[String],
) -> AppResult<Vec<CompanyView>> {
    let env_id = auth.env_id();
    let store::DetailsRows {
        found: Found { rows, keys },
        plans,
        user_counts,
    } = store::details_rows(conn, env_id, ids).await?;

    let mut by_id: HashMap<String, CompanyView> = rows
        .into_iter()
        .map(|r| {
            let view = CompanyView {
                entity_traits: views::trait_views(
                    "company",
                    &r.id,
                    env_id,
                    &r.traits.0,
                    r.updated_at,
                ),
                id: r.id.clone(),
                environment_id: env_id.to_string(),
                name: r.name,
                created_at: r.created_at,
                updated_at: r.updated_at,
                last_seen_at: None,
                keys: Vec::new(),
                traits: r.traits.0,
                plan: None,
                add_ons: Vec::new(),
                plans: Vec::new(),
                entitlements: entitlements(state, auth, &r.id),
                usage: super::feature_usage::usage_of(state, auth, &r.id),
                user_count: user_counts.get(&r.id).copied().unwrap_or(0),
                metrics: metrics(auth, &r.id),
                billing_credit_balances: credit_balances(auth, &r.id),
                rules: Vec::new(),
                billing_subscriptions: Vec::new(),
                custom_plan_billings: Vec::new(),
                payment_methods: Vec::new(),
            };
            (r.id, view)
        })
        .collect();
    for (company_id, key, value, created_at) in keys {
        if let Some(v) = by_id.get_mut(&company_id) {
            v.keys.push(KeyView::new(
                "company",
                &company_id,
                env_id,
                key,
                value,
                created_at,
            ));
        }
    }
    for p in plans {
        if let Some(v) = by_id.get_mut(&p.company_id) {
            v.plans.push(Preview {
                id: p.plan_id.clone(),
                name: p.name.clone(),
                description: p.description.clone(),
            });
            let plan = PlanRef {
                id: p.plan_id,
                name: p.name,
                description: p.description,
                billing_product_id: p.billing_product_id,
                added_on: p.started_at,
                included_credit_grants: Vec::new(),
                source: p.source,
                quantity: p.quantity,
            };
            if p.is_base {
                v.plan = Some(plan);
            } else {
                v.add_ons.push(plan);
            }
        }
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// Every feature the company has an entitlement for, evaluated now from the snapshot.
fn entitlements(state: &AppState, auth: &Auth, company_id: &str) -> Vec<EntitlementView> {
    let Some(company) = auth.env.company(company_id) else {
        return Vec::new();
    };
    let catalog = state.cache.catalog();
    let now = Utc::now();
    let mut out: Vec<EntitlementView> = catalog
        .flags_by_key
        .values()
        .filter(|f| f.feature.is_some())
        .filter_map(|flag| {
            let outcome = auth.env.check_resolved(
                &catalog,
                flag,
                Some((company_id.to_string(), company.clone())),
                None,
                now,
            );
            outcome
                .evaluation
                .entitlement
                .as_ref()
                .map(EntitlementView::from)
        })
        .collect();
    out.sort_by(|a, b| a.feature_key.cmp(&b.feature_key));
    out
}

// Its writes send their messages themselves ([`CompanyWatch`]): which ones depends on what
// changed (plans, traits).
resource::resource!(Companies: CompanyView, "company", "companies", None,
    |conn, state, auth, id| {
        Ok(details(conn, state, auth, &[id.to_string()]).await?.pop())
    }
);

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Only these company ids.
    ids: Option<Vec<String>>,
    /// Only companies currently on one of these plans.
    plan_ids: Option<Vec<String>>,
    plan_id: Option<String>,
    /// Matches the name or any key value.
    q: Option<String>,
    /// Only companies without any plan.
    without_plan: Option<bool>,
}

#[utoipa::path(get, path = "/companies", tag = "companies",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Companies, newest first", body = Enveloped<Vec<CompanyView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let plan_ids = {
        let mut p = query.get_all("plan_ids");
        p.extend(query.get("plan_id").map(str::to_string));
        p
    };
    let filter = CompanyFilter {
        ids: query.get_all("ids"),
        plan_ids,
        q: query.get("q").map(str::to_string),
        without_plan: query.bool("without_plan")?.unwrap_or(false),
    };
    let data = list_companies(&state, &auth, &filter, page).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

/// Companies of the caller's environment, newest first, as full views.
pub async fn list_companies(
    state: &AppState,
    auth: &Auth,
    filter: &CompanyFilter,
    page: Page,
) -> AppResult<Vec<CompanyView>> {
    let mut conn = state.pool.acquire().await?;
    let ids = store::list_ids(&mut conn, auth.env_id(), filter, page.limit, page.offset).await?;
    details(&mut conn, state, auth, &ids).await
}

#[utoipa::path(get, path = "/companies/{id}", tag = "companies",
    params(("id" = String, Path, description = "A company id, `comp_…`")),
    responses((status = 200, description = "The company", body = Enveloped<CompanyView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, company_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Companies>(&state, &auth, &id).await
}

#[utoipa::path(get, path = "/companies/lookup", tag = "companies",
    params(super::openapi::KeysParams),
    responses((status = 200, description = "The company these keys identify", body = Enveloped<CompanyView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn lookup(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    resource::lookup::<Companies>(&state, &auth, &query, Entity::Company).await
}

/// `UpsertCompanyRequestBody`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = UpsertCompanyRequestBody)]
#[schema(example = json!({"keys": {"id": "acme"}, "name": "Acme", "traits": {"seats_used": 4}}))]
pub struct UpsertBody {
    /// Identifying keys, e.g. `{"id": "acme"}`; a company matching any of them is updated.
    #[schema(value_type = HashMap<String, String>)]
    pub keys: Map<String, Value>,
    pub name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub traits: Option<Map<String, Value>>,
    /// The company's base plan (`plan_…`); `""` leaves it.
    pub base_plan_id: Option<String>,
    /// Replaces the company's add-ons.
    pub add_on_ids: Option<Vec<String>>,
    /// Only update: a company the keys do not match is not created (404).
    #[serde(default)]
    pub update_only: Option<bool>,
}

#[utoipa::path(post, path = "/companies", tag = "companies", request_body = UpsertBody,
    responses((status = 200, description = "The company, created or updated", body = Enveloped<CompanyView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn upsert(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<UpsertBody>,
) -> AppResult<Response> {
    Ok(envelope::ok_empty(
        upsert_company(&state, &auth, body).await?,
    ))
}

/// The outbound webhook messages of a company write: the view before it (when a webhook
/// wants one), and after it, compared to decide between created, updated (only when the view
/// changed) and plan_changed (base plan or add-ons differ).
pub struct CompanyWatch {
    before: Option<Value>,
    wanted: bool,
}

impl CompanyWatch {
    /// Before the write: reads the company the keys name, if a webhook wants its events.
    pub async fn start(
        state: &AppState,
        auth: &Auth,
        conn: &mut Conn,
        keys: &[(String, String)],
    ) -> AppResult<CompanyWatch> {
        let wanted = ["company.created", "company.updated", "company.plan_changed"]
            .iter()
            .any(|t| state.wants(auth, t));
        if !wanted {
            return Ok(CompanyWatch {
                before: None,
                wanted,
            });
        }
        // Errors propagate: a failed statement aborts the transaction the write runs in.
        let before = match keys::find(conn, Entity::Company, auth.env_id(), keys).await? {
            Some(id) => details(conn, state, auth, &[id]).await?.pop(),
            None => None,
        };
        Ok(CompanyWatch {
            before: before.map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
            wanted,
        })
    }

    /// After the write, in its transaction: the messages it makes.
    pub async fn finish(
        self,
        state: &AppState,
        auth: &Auth,
        conn: &mut Conn,
        id: &str,
        created: bool,
    ) -> AppResult<Option<Change>> {
        if !self.wanted {
            return Ok(None);
        }
        let Some(after) = details(conn, state, auth, &[id.to_string()]).await?.pop() else {
            return Ok(None);
        };
        let after = serde_json::to_value(after).unwrap_or(Value::Null);
        let before = if created { None } else { self.before };
        let mut events = Vec::new();
        match &before {
            None => events.push(Event::new("company.created", &after)),
            Some(b) if comparable(b) != comparable(&after) => {
                events.push(Event::new("company.updated", &after).with_previous(b));
            }
            Some(_) => {}
        }
        let plans = |v: Option<&Value>| {
            v.map(|v| (v["plan"]["id"].clone(), plan_ids(&v["add_ons"])))
                .unwrap_or((Value::Null, Vec::new()))
        };
        let (old_plan, old_add_ons) = plans(before.as_ref());
        let (new_plan, new_add_ons) = plans(Some(&after));
        if (old_plan, old_add_ons) != (new_plan, new_add_ons) {
            let data = serde_json::json!({
                "company": after,
                "previous_plan": before.as_ref().map(|b| b["plan"].clone()).unwrap_or(Value::Null),
                "plan": after["plan"],
                "previous_add_ons": before.as_ref().map(|b| b["add_ons"].clone()).unwrap_or(Value::Array(vec![])),
                "add_ons": after["add_ons"],
                "source": "manual",
            });
            events.push(Event::new("company.plan_changed", data));
        }
        events.retain(|e| state.wants(auth, e.request_type));
        state.emit(conn, auth, &events).await
    }
}

/// A company view without what changes on its own (timestamps, usage, metrics).
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in [
            "updated_at",
            "last_seen_at",
            "usage",
            "metrics",
            "billing_credit_balances",
        ] {
            o.remove(k);
        }
    }
    v
}

fn plan_ids(add_ons: &Value) -> Vec<Value> {
    let mut ids: Vec<Value> = add_ons
        .as_array()
        .map(|a| a.iter().map(|p| p["id"].clone()).collect())
        .unwrap_or_default();
    ids.sort_by_key(|v| v.to_string());
    ids
}

/// Creates or updates the company `body.keys` identify; the REST and MCP upserts.
pub async fn upsert_company(
    state: &AppState,
    auth: &Auth,
    body: UpsertBody,
) -> AppResult<CompanyView> {
    auth.require_write()?;
    let req = UpsertCompany {
        keys: views::key_pairs("keys", &body.keys)?,
        name: body.name,
        traits: body.traits,
        base_plan_id: body.base_plan_id.filter(|s| !s.is_empty()),
        add_on_ids: body.add_on_ids,
        update_only: body.update_only.unwrap_or(false),
    };
    let mut edit = Edit::<Companies>::begin(state, auth).await?;
    let watched = CompanyWatch::start(state, auth, &mut edit.tx, &req.keys).await?;
    let (id, created) = store::upsert(&mut edit.tx, auth.env_id(), &req).await?;
    let mut changes = vec![Change::company(auth.env_id(), &id)];
    changes.extend(
        watched
            .finish(state, auth, &mut edit.tx, &id, created)
            .await?,
    );
    edit.commit(Some(&id), changes).await?;
    tracing::info!(company_id = %id, created, "company upserted");
    resource::one::<Companies>(state, auth, &id).await
}

#[utoipa::path(delete, path = "/companies/{id}", tag = "companies",
    params(("id" = String, Path, description = "A company id, `comp_…`")),
    responses((status = 200, description = "Deleted", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, company_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Companies>::begin(&state, &auth).await?;
    let before = if state.wants(&auth, "company.deleted") {
        Companies::find_in(&mut edit.tx, &state, &auth, &id).await?
    } else {
        None
    };
    if !store::delete(&mut edit.tx, auth.env_id(), &id).await? {
        return Err(AppError::not_found("company", &id));
    }
    let mut changes = vec![Change::company(auth.env_id(), &id)];
    if let Some(view) = before {
        changes.extend(
            state
                .emit(&mut edit.tx, &auth, &[Event::new("company.deleted", view)])
                .await?,
        );
    }
    edit.commit(None, changes).await?;
    tracing::info!("company deleted");
    Ok(envelope::deleted())
}

/// `UpsertTraitRequestBody`: set or increment one company trait.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpsertTraitRequestBody)]
#[schema(example = json!({"keys": {"id": "acme"}, "trait": "projects_count", "incr": 1}))]
pub struct TraitBody {
    #[schema(value_type = HashMap<String, String>)]
    keys: Map<String, Value>,
    #[serde(rename = "trait")]
    name: String,
    /// A string, number or boolean.
    #[schema(value_type = Option<String>)]
    set: Option<Value>,
    incr: Option<f64>,
    update_only: Option<bool>,
}

#[utoipa::path(post, path = "/company-traits", tag = "companies", request_body = TraitBody,
    responses((status = 200, description = "The company with the trait set", body = Enveloped<CompanyView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn upsert_trait(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<TraitBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    if body.name.is_empty() {
        return Err(AppError::bad_request("trait: must not be empty"));
    }
    if let Some(Value::Object(_) | Value::Array(_)) = &body.set {
        return Err(AppError::bad_request(
            "set: must be a string, number or boolean",
        ));
    }
    if let Some(v) = &body.set {
        let one: Map<String, Value> = [(body.name.clone(), v.clone())].into_iter().collect();
        keys::validate_traits(&one)
            .map_err(|_| AppError::bad_request("set: a number is out of range (at most ±1e300)"))?;
    }
    if body.incr.is_some_and(|i| !i.is_finite() || i.abs() > 1e300) {
        return Err(AppError::bad_request("incr: must be a finite number"));
    }
    let req = UpsertCompany {
        keys: views::key_pairs("keys", &body.keys)?,
        update_only: body.update_only.unwrap_or(false),
        ..Default::default()
    };
    let mut tx = state.pool.begin().await?;
    let watched = CompanyWatch::start(&state, &auth, &mut tx, &req.keys).await?;
    let (id, created) = store::upsert(&mut tx, auth.env_id(), &req).await?;
    store::update_trait(&mut tx, &id, &body.name, body.set.as_ref(), body.incr).await?;
    let mut changes = vec![Change::company(auth.env_id(), &id)];
    changes.extend(watched.finish(&state, &auth, &mut tx, &id, created).await?);
    state.commit(tx, &changes).await?;
    crate::metrics::WRITES.inc("company_traits");
    resource::show::<Companies>(&state, &auth, &id).await
}
