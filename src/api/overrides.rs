//! `/company-overrides`: a company's own entitlement for one feature, optionally expiring.
//! Overrides belong to the company's environment; every write invalidates that company.
//!
//! An override stops applying at its `expiration_date`; the `expire_overrides` job (or the
//! next create for the same company and feature) marks it with `expired_at`. Expired
//! overrides stay readable by id and drop out of `without_expired=true` lists. They are
//! history: to extend one, update it before it lapses (send a later `expiration_date`), or
//! create a new one afterwards.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::companies;
use super::emit;
use super::envelope;
use super::extract::{Json, Path, Query};
use super::openapi::{Deleted, Enveloped, Errors};
use super::plan_entitlements::FeatureView;
use super::resource::{self, Edit, Resource};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::store::overrides::{self as store, NewOverride, OverrideFilter};
use crate::store::plans::feature_type;
use crate::store::values::{EntitlementValues, ValueInput};
use crate::store::Conn;

/// `CompanyOverrideNoteResponseData`. entitled keeps one note per override.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NoteView {
    pub id: String,
    pub note: String,
    pub external_user_id: String,
    pub external_user_name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `CompanyOverrideResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OverrideView {
    pub id: String,
    pub environment_id: String,
    pub company_id: String,
    pub feature_id: String,
    /// Checks name this id as the matching rule.
    pub rule_id: String,
    #[serde(flatten)]
    pub values: EntitlementValues,
    /// The SDK's name for `credit_consumption_rate`.
    pub consumption_rate: Option<f64>,
    pub expiration_date: Option<DateTime<Utc>>,
    /// When the override was marked expired; `null` while live.
    pub expired_at: Option<DateTime<Utc>>,
    pub note: String,
    pub notes: Vec<NoteView>,
    /// `CompanyDetailResponseData`, as `GET /companies/{id}` returns it.
    pub company: Option<serde_json::Value>,
    pub feature: FeatureView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Overrides with their company and feature, newest first.
async fn fetch(
    conn: &mut Conn,
    state: &AppState,
    auth: &Auth,
    filter: &OverrideFilter,
    now: DateTime<Utc>,
) -> AppResult<Vec<OverrideView>> {
    let env_id = auth.env_id();
    let rows = store::list(conn, env_id, filter, now).await?;

    let mut company_ids: Vec<String> = rows.iter().map(|r| r.company_id.clone()).collect();
    company_ids.sort();
    company_ids.dedup();
    // Serialised once per company: several overrides may share one.
    let mut companies: HashMap<String, serde_json::Value> = HashMap::new();
    for c in companies::details(conn, state, auth, &company_ids).await? {
        let id = c.id.clone();
        let json = serde_json::to_value(c).map_err(anyhow::Error::from)?;
        companies.insert(id, json);
    }

    Ok(rows
        .into_iter()
        .map(|r| {
            let notes = if r.note.is_empty() {
                Vec::new()
            } else {
                vec![NoteView {
                    id: r.id.clone(),
                    note: r.note.clone(),
                    external_user_id: String::new(),
                    external_user_name: String::new(),
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                }]
            };
            OverrideView {
                environment_id: env_id.to_string(),
                rule_id: r.id.clone(),
                consumption_rate: r.values.credit_consumption_rate,
                notes,
                company: companies.get(&r.company_id).cloned(),
                feature: FeatureView::joined(r.feature_id.clone(), r.feature),
                id: r.id,
                company_id: r.company_id,
                feature_id: r.feature_id,
                values: r.values,
                expiration_date: r.expiration_date,
                expired_at: r.expired_at,
                note: r.note,
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        })
        .collect())
}

resource::resource!(Overrides: OverrideView, "company override", "company_overrides", Some(&emit::OVERRIDE),
    |conn, state, auth, id| {
        let filter = OverrideFilter {
            ids: vec![id.to_string()],
            ..Default::default()
        };
        Ok(fetch(conn, state, auth, &filter, Utc::now()).await?.pop())
    }
);

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    ids: Option<Vec<String>>,
    company_id: Option<String>,
    company_ids: Option<Vec<String>>,
    feature_id: Option<String>,
    feature_ids: Option<Vec<String>>,
    /// Leave out overrides past their expiration date.
    without_expired: Option<bool>,
    /// Matches the feature's name or key, or the note.
    q: Option<String>,
}

#[utoipa::path(get, path = "/company-overrides", tag = "company-overrides",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Company overrides, newest first", body = Enveloped<Vec<OverrideView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let filter = OverrideFilter {
        ids: query.get_all("ids"),
        company_ids: query.get_one_and_all("company_id", "company_ids"),
        feature_ids: query.get_one_and_all("feature_id", "feature_ids"),
        without_expired: query.bool("without_expired")?.unwrap_or(false),
        q: query.non_empty("q"),
        limit: Some(page.limit),
        offset: page.offset,
    };
    let mut conn = state.pool.acquire().await?;
    let data = fetch(&mut conn, &state, &auth, &filter, Utc::now()).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/company-overrides/{id}", tag = "company-overrides",
    params(("id" = String, Path, description = "A company override id, `cmov_…`")),
    responses((status = 200, description = "The company override", body = Enveloped<OverrideView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, override_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Overrides>(&state, &auth, &id).await
}

/// Declares a create or update body of an override or a plan entitlement: its own fields,
/// then the value fields, spelled out (not flattened, so a wrong type names its field), then
/// the fields after the `;`.
macro_rules! value_body {
    ($(#[$m:meta])* pub struct $name:ident {
        $($(#[$fm:meta])* $fv:vis $f:ident: $t:ty,)*
        ;
        $($(#[$am:meta])* $av:vis $a:ident: $at:ty,)*
    }) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* $fv $f: $t,)*
            #[schema(value_type = Option<crate::api::openapi::ValueType>)]
            pub value_type: Option<String>,
            pub value_bool: Option<bool>,
            pub value_numeric: Option<i64>,
            pub value_trait_id: Option<String>,
            pub value_credit_id: Option<String>,
            pub credit_consumption_rate: Option<f64>,
            #[schema(value_type = Option<crate::engine::MetricPeriod>)]
            pub metric_period: Option<String>,
            #[schema(value_type = Option<crate::engine::MonthReset>)]
            pub metric_period_month_reset: Option<String>,
            $($(#[$am])* $av $a: $at,)*
        }
    };
}
pub(crate) use value_body;

value_body! {
    /// The body of a create.
    #[derive(Default, Deserialize, utoipa::ToSchema)]
    #[schema(as = CreateCompanyOverrideRequestBody)]
    pub struct CreateBody {
        pub company_id: String,
        pub feature_id: String,
        ;
        /// RFC 3339; must be in the future.
        pub expiration_date: Option<DateTime<Utc>>,
        pub note: Option<String>,
    }
}

/// The value fields of a create or update body (of an override or a plan entitlement), as
/// the store resolves them.
macro_rules! value_input {
    ($body:expr) => {
        ValueInput {
            value_type: $body.value_type,
            value_bool: $body.value_bool,
            value_numeric: $body.value_numeric,
            value_trait_id: $body.value_trait_id,
            value_credit_id: $body.value_credit_id,
            credit_consumption_rate: $body.credit_consumption_rate,
            metric_period: $body.metric_period,
            metric_period_month_reset: $body.metric_period_month_reset,
        }
    };
}
pub(crate) use value_input;

fn future(expiration_date: DateTime<Utc>, now: DateTime<Utc>) -> AppResult<DateTime<Utc>> {
    if expiration_date <= now {
        return Err(AppError::bad_request(format!(
            "expiration_date: {} is not in the future",
            expiration_date.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(expiration_date)
}

fn valid_note(note: String) -> AppResult<String> {
    if note.chars().count() > 10_000 {
        return Err(AppError::bad_request(
            "note: must be at most 10000 characters",
        ));
    }
    Ok(note)
}

#[utoipa::path(post, path = "/company-overrides", tag = "company-overrides", request_body = CreateBody,
    responses((status = 200, description = "The company override, created", body = Enveloped<OverrideView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Overrides>::begin(&state, &auth).await?;
    let written = create_in(&mut edit.tx, &state, &auth, body, edit.watch).await?;
    let (id, company_id) = (written.id.clone(), written.company_id.clone());
    edit.finish(written).await?;
    tracing::info!(override_id = %id, company_id = ?company_id, "company override created");
    resource::show::<Overrides>(&state, &auth, &id).await
}

/// Creates an override in `tx` with the API's validation; the caller commits. `views`: build
/// the views before and after (for a message or an audit entry).
pub async fn create_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    body: CreateBody,
    views: bool,
) -> AppResult<emit::Written> {
    let now = Utc::now();
    let input = value_input!(body);
    let expiration_date = body.expiration_date.map(|d| future(d, now)).transpose()?;
    let note = valid_note(body.note.unwrap_or_default())?;
    let env_id = auth.env_id();
    store::require_company(tx, env_id, "company_id", &body.company_id).await?;
    let feature_type = feature_type(tx, "feature_id", &body.feature_id).await?;
    let values = input.resolve(None, feature_type)?;
    store::retire_lapsed(tx, &body.company_id, &body.feature_id, now).await?;
    let id = store::insert(
        tx,
        env_id,
        &NewOverride {
            company_id: body.company_id.clone(),
            feature_id: body.feature_id.clone(),
            values,
            expiration_date,
            note,
        },
    )
    .await?;
    let after = emit::view(views, Overrides::find_in(tx, state, auth, &id)).await?;
    Ok(emit::Written {
        id,
        company_id: Some(body.company_id.clone()),
        before: None,
        after,
        changes: vec![Change::company(env_id, &body.company_id)],
    })
}

value_body! {
    /// Absent or `null` fields keep their value (so `expiration_date: null` does not clear it:
    /// send a later date to extend); `note: ""` clears the note.
    #[derive(Default, Deserialize, utoipa::ToSchema)]
    #[schema(as = UpdateCompanyOverrideRequestBody)]
    pub struct UpdateBody {
        ;
        pub expiration_date: Option<DateTime<Utc>>,
        pub note: Option<String>,
    }
}

#[utoipa::path(put, path = "/company-overrides/{id}", tag = "company-overrides", request_body = UpdateBody,
    params(("id" = String, Path, description = "A company override id, `cmov_…`")),
    responses((status = 200, description = "The company override, updated", body = Enveloped<OverrideView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, override_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<UpdateBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Overrides>::begin(&state, &auth).await?;
    let written = update_in(&mut edit.tx, &state, &auth, &id, body, edit.watch).await?;
    let company_id = written.company_id.clone();
    edit.finish(written).await?;
    tracing::info!(company_id = ?company_id, "company override updated");
    resource::show::<Overrides>(&state, &auth, &id).await
}

/// Updates override `id` in `tx` with the API's validation; the caller commits.
pub async fn update_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    id: &str,
    body: UpdateBody,
    views: bool,
) -> AppResult<emit::Written> {
    let now = Utc::now();
    let input = value_input!(body);
    let expiration_date = body.expiration_date.map(|d| future(d, now)).transpose()?;
    let note = body.note.map(valid_note).transpose()?;
    let env_id = auth.env_id();
    let before = emit::view(views, Overrides::find_in(tx, state, auth, id)).await?;
    let current = store::get_for_update(tx, env_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("company override", id))?;
    if current.has_expired(now) {
        return Err(AppError::Conflict(format!(
            "company override {id:?} has expired and can no longer change; create a new one"
        )));
    }
    let feature_type = feature_type(tx, "feature_id", &current.feature_id).await?;
    let values = input.resolve(Some(&current.values), feature_type)?;
    store::update(
        tx,
        id,
        &values,
        expiration_date.or(current.expiration_date),
        note.as_deref().unwrap_or(&current.note),
    )
    .await?;
    let after = emit::view(views, Overrides::find_in(tx, state, auth, id)).await?;
    Ok(emit::Written {
        id: id.to_string(),
        company_id: Some(current.company_id.clone()),
        before,
        after,
        changes: vec![Change::company(env_id, &current.company_id)],
    })
}

#[utoipa::path(delete, path = "/company-overrides/{id}", tag = "company-overrides",
    params(("id" = String, Path, description = "A company override id, `cmov_…`")),
    responses((status = 200, description = "Deleted", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, override_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Overrides>::begin(&state, &auth).await?;
    let written = delete_in(&mut edit.tx, &state, &auth, &id, edit.watch).await?;
    let company_id = written.company_id.clone();
    edit.finish(written).await?;
    tracing::info!(company_id = ?company_id, "company override deleted");
    Ok(envelope::deleted())
}

/// Deletes override `id` in `tx`; the caller commits.
pub async fn delete_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    id: &str,
    views: bool,
) -> AppResult<emit::Written> {
    let env_id = auth.env_id();
    let before = emit::view(views, Overrides::find_in(tx, state, auth, id)).await?;
    let company_id = store::delete(tx, env_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("company override", id))?;
    Ok(emit::Written {
        id: id.to_string(),
        company_id: Some(company_id.clone()),
        before,
        after: None,
        changes: vec![Change::company(env_id, &company_id)],
    })
}
