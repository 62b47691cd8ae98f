//! `/console/companies/{id}`: everything about one company (keys, traits, plans, every
//! feature's answer as the check endpoint gives it, usage, overrides, credits, events) and
//! the override writes: create, edit, delete. Writes go through the API's own write
//! functions (same validation and messages; nothing half-saved) and are audited in their
//! transaction.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::Value;

use super::error::{ConsoleError, ConsoleResult};
use super::session::{Console, Form, Posted};
use super::{
    audit_and_commit, commit_or_refused, param, query_pairs, shown, when, Layout, OVERRIDE_CREATE,
    OVERRIDE_DELETE, OVERRIDE_UPDATE,
};
use crate::api::checks::company_answers;
use crate::api::overrides::{self, CreateBody, UpdateBody};
use crate::api::{companies, AppState};
use crate::engine::MetricPeriod;
use crate::store;
use crate::store::credits::from_micros;
use crate::store::events::EventFilter;
use crate::store::overrides::OverrideFilter;

pub struct Answer {
    pub flag: String,
    pub value: bool,
    pub reason: String,
    pub rule_type: &'static str,
    pub usage: String,
    pub reset: String,
}

pub struct PlanLine {
    pub key: String,
    pub name: String,
    pub is_base: bool,
    pub source: String,
    pub period: String,
    pub trial_end: String,
    pub status: String,
    pub subscription: Option<String>,
}

pub struct OverrideLine {
    pub id: String,
    pub feature: String,
    pub value: String,
    pub raw_value: String,
    pub expires: String,
    pub expires_date: String,
    pub note: String,
    pub author: String,
}

/// The override form as sent, to show it again with its errors.
#[derive(Default)]
pub struct OverrideForm {
    pub feature_id: String,
    pub value_type: String,
    pub value: String,
    pub metric_period: String,
    pub rate: String,
    pub expires: String,
    pub expires_date: String,
    pub note: String,
}

#[derive(Template)]
#[template(path = "console/company.html")]
struct Page {
    layout: Layout,
    id: String,
    title: String,
    created: String,
    last_seen: String,
    keys: Vec<(String, String)>,
    traits: Vec<(String, String)>,
    plans: Vec<PlanLine>,
    fallback: String,
    stripe_customers: Vec<String>,
    answers: Vec<Answer>,
    overrides: Vec<OverrideLine>,
    /// `(id, "name (key)")` of every feature with a flag.
    features: Vec<(String, String)>,
    value_types: &'static [&'static str],
    metric_periods: &'static [&'static str],
    expiry_choices: &'static [(&'static str, &'static str)],
    form: OverrideForm,
    /// Messages by form field (`form` for the form as a whole).
    errors: HashMap<&'static str, String>,
    /// `(credit, remaining, granted, used)`.
    credits: Vec<(String, String, String, String)>,
    /// `(when, credit, kind, amount, reason)`.
    ledger: Vec<(String, String, String, String, String)>,
    /// `(when, type, name, quantity)`.
    events: Vec<(String, String, String, i64)>,
}

pub(super) const VALUE_TYPES: &[&str] = &["boolean", "numeric", "unlimited", "trait", "credit"];
pub(super) const METRIC_PERIODS: &[&str] =
    &["all_time", "current_day", "current_week", "current_month"];
const EXPIRY_CHOICES: &[(&str, &str)] = &[
    ("7", "7 days"),
    ("30", "30 days"),
    ("90", "90 days"),
    ("date", "On a date"),
    ("never", "Never"),
];

fn value_text(v: &store::values::EntitlementValues) -> (String, String) {
    let raw = match v.value_type.as_str() {
        "boolean" => v.value_bool.map(|b| b.to_string()).unwrap_or_default(),
        "numeric" => v.value_numeric.map(|n| n.to_string()).unwrap_or_default(),
        "trait" => v.value_trait_id.clone().unwrap_or_default(),
        "credit" => v.value_credit_id.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let shown = match (&v.value_type[..], &v.metric_period) {
        ("unlimited", _) => "unlimited".to_string(),
        (_, Some(p)) => format!("{raw} per {p}"),
        _ => raw.clone(),
    };
    (shown, raw)
}

/// Renders the company page; `form` and `errors` after a refused override.
async fn render_page(
    state: &AppState,
    console: &Console,
    id: &str,
    notice: Option<&str>,
    form: OverrideForm,
    errors: HashMap<&'static str, String>,
) -> ConsoleResult<String> {
    let auth = console.auth();
    let env_id = console.env_id();
    let mut conn = state.pool.acquire().await?;
    let view = companies::details(&mut conn, state, &auth, &[id.to_string()])
        .await?
        .pop()
        .ok_or_else(|| ConsoleError::NotFound(format!("company {id:?} not found")))?;
    let plans = store::console::company_plans(&mut conn, env_id, id).await?;
    let customers = store::console::stripe_customers_of(&mut conn, env_id, id).await?;
    let now = Utc::now();
    let override_rows = store::overrides::list(
        &mut conn,
        env_id,
        &OverrideFilter {
            company_ids: vec![id.to_string()],
            without_expired: true,
            ..Default::default()
        },
        now,
    )
    .await?;
    let override_ids: Vec<String> = override_rows.iter().map(|o| o.id.clone()).collect();
    let authors: HashMap<String, String> = store::console::note_authors(&mut conn, &override_ids)
        .await?
        .into_iter()
        .collect();
    let balances = store::credits::balance_of_company(&mut conn, id, now).await?;
    let ledger = store::credits::ledger_of_company(&mut conn, env_id, id, None, 20, 0).await?;
    let events = store::events::list(
        &mut conn,
        env_id,
        &EventFilter {
            company_id: Some(id.to_string()),
            ..Default::default()
        },
        20,
        0,
    )
    .await?;
    drop(conn);

    let catalog = state.cache.catalog();
    let credit_names: HashMap<&str, &str> = balances
        .iter()
        .map(|b| (b.credit_id.as_str(), b.credit_name.as_str()))
        .collect();
    let mut features: Vec<(String, String)> = catalog
        .flags_sorted
        .iter()
        .filter_map(|f| f.feature.as_ref())
        .map(|f| (f.id.clone(), format!("{} ({})", f.name, f.key)))
        .collect();
    features.sort_by(|a, b| a.1.cmp(&b.1));
    features.dedup_by(|a, b| a.0 == b.0);

    let answers = company_answers(state, &auth, id)
        .into_iter()
        .map(|(flag, e)| {
            let report = e.entitlement.as_ref();
            let usage = match report {
                Some(r) => match (r.usage, r.allocation) {
                    (Some(u), Some(a)) => format!("{u} / {a}"),
                    (Some(u), None) => format!("{u} / unlimited"),
                    (None, Some(a)) => format!("— / {a}"),
                    (None, None) => "—".into(),
                },
                None => "—".into(),
            };
            let reset = report
                .map(|r| {
                    let period = r.metric_period.map_or("", MetricPeriod::as_str);
                    match r.metric_reset_at {
                        Some(at) => format!("{} ({period})", when(Some(at))),
                        None if !period.is_empty() => period.to_string(),
                        None => "—".into(),
                    }
                })
                .unwrap_or_else(|| "—".into());
            Answer {
                flag: flag.key.clone(),
                value: e.value,
                reason: e.reason.clone(),
                rule_type: e.rule_type.as_str(),
                usage,
                reset,
            }
        })
        .collect();

    let title = if view.name.is_empty() {
        view.id.clone()
    } else {
        view.name.clone()
    };
    let page = Page {
        layout: Layout::new(state, console).with_notice(notice),
        id: view.id.clone(),
        title,
        created: when(Some(view.created_at)),
        last_seen: when(view.last_seen_at),
        keys: view
            .keys
            .iter()
            .map(|k| (k.key.clone(), k.value.clone()))
            .collect(),
        traits: view
            .traits
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        plans: plans
            .into_iter()
            .map(|p| PlanLine {
                key: p.plan_key,
                name: p.plan_name,
                is_base: p.is_base,
                source: if p.source == "stripe" {
                    "Stripe".into()
                } else {
                    "manual".into()
                },
                period: match (p.period_start, p.period_end) {
                    (None, None) => "—".into(),
                    (s, e) => format!("{} → {}", when(s), when(e)),
                },
                trial_end: when(p.trial_end),
                status: match p.ended_at {
                    Some(e) => format!("ended {}", when(Some(e))),
                    None => p.subscription_status.unwrap_or_else(|| "active".into()),
                },
                subscription: p.stripe_subscription_id,
            })
            .collect(),
        fallback: console.env.config.fallback_plan.clone(),
        stripe_customers: customers,
        answers,
        overrides: override_rows
            .into_iter()
            .map(|o| {
                let (value, raw_value) = value_text(&o.values);
                OverrideLine {
                    author: authors.get(&o.id).cloned().unwrap_or_default(),
                    feature: format!("{} ({})", o.feature.name, o.feature.key),
                    value,
                    raw_value,
                    expires: o
                        .expiration_date
                        .map_or_else(|| "never".into(), |d| when(Some(d))),
                    expires_date: o
                        .expiration_date
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .unwrap_or_default(),
                    note: o.note,
                    id: o.id,
                }
            })
            .collect(),
        features,
        value_types: VALUE_TYPES,
        metric_periods: METRIC_PERIODS,
        expiry_choices: EXPIRY_CHOICES,
        form: OverrideForm {
            expires: if form.expires.is_empty() {
                "30".into()
            } else {
                form.expires.clone()
            },
            value_type: if form.value_type.is_empty() {
                "boolean".into()
            } else {
                form.value_type.clone()
            },
            ..form
        },
        errors,
        credits: balances
            .iter()
            .map(|b| {
                (
                    format!("{} ({})", b.credit_name, b.credit_key),
                    from_micros(b.remaining_micros).to_string(),
                    from_micros(b.granted_micros).to_string(),
                    from_micros(b.used_micros).to_string(),
                )
            })
            .collect(),
        ledger: ledger
            .into_iter()
            .map(|l| {
                (
                    when(Some(l.created_at)),
                    credit_names
                        .get(l.credit_id.as_str())
                        .map_or_else(|| l.credit_id.clone(), |n| n.to_string()),
                    l.event_type,
                    from_micros(l.amount_micros).to_string(),
                    l.reason,
                )
            })
            .collect(),
        events: events
            .into_iter()
            .map(|e| {
                (
                    when(Some(e.created_at)),
                    e.event_type,
                    e.event_name.unwrap_or_default(),
                    e.quantity,
                )
            })
            .collect(),
    };
    Ok(page.render()?)
}

#[tracing::instrument(skip_all, fields(console_user, company_id = %id))]
pub async fn page(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    uri: Uri,
) -> ConsoleResult<Response> {
    let pairs = query_pairs(&uri);
    let html = render_page(
        &state,
        &console,
        &id,
        param(&pairs, "done"),
        OverrideForm::default(),
        HashMap::new(),
    )
    .await?;
    Ok(axum::response::Html(html).into_response())
}

/// The form field an API message concerns (messages start with the field's name).
fn field_of(message: &str) -> &'static str {
    let head = message.split(':').next().unwrap_or("");
    match head.trim() {
        "value_bool" | "value_numeric" | "value_trait_id" | "value_credit_id" | "value" => "value",
        "credit_consumption_rate" => "value",
        "value_type" => "value_type",
        "metric_period" | "metric_period_month_reset" => "metric_period",
        "expiration_date" | "expires" => "expires",
        "note" => "note",
        "feature_id" => "feature_id",
        _ => "form",
    }
}

/// When the override expires, from the preset or the date (end of that day, UTC).
fn expiry(choice: &str, date: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
    match choice {
        "7" | "30" | "90" => Ok(Some(now + Duration::days(choice.parse().unwrap_or(30)))),
        "never" => Ok(None),
        "date" | "" => {
            let d = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
                .map_err(|_| "expires: choose a date (YYYY-MM-DD)".to_string())?;
            Ok(d.and_hms_opt(23, 59, 59).map(|t| t.and_utc()))
        }
        other => Err(format!(
            "expires: {other:?} is not one of 7, 30, 90, date, never"
        )),
    }
}

/// The value fields of the API's bodies from the console's one `value` input.
#[derive(Debug)]
pub(super) struct ValueFields {
    pub value_bool: Option<bool>,
    pub value_numeric: Option<i64>,
    pub value_trait_id: Option<String>,
    pub value_credit_id: Option<String>,
    pub credit_consumption_rate: Option<f64>,
}

pub(super) fn value_fields(
    value_type: &str,
    value: &str,
    rate: &str,
) -> Result<ValueFields, String> {
    let value = value.trim();
    let mut f = ValueFields {
        value_bool: None,
        value_numeric: None,
        value_trait_id: None,
        value_credit_id: None,
        credit_consumption_rate: None,
    };
    match value_type {
        "boolean" => {
            f.value_bool = Some(match value {
                "" | "true" | "on" | "yes" => true,
                "false" | "off" | "no" => false,
                other => return Err(format!("value: {other:?} is not true or false")),
            })
        }
        "numeric" => {
            f.value_numeric = Some(
                value
                    .parse()
                    .map_err(|_| format!("value: {value:?} is not a whole number"))?,
            )
        }
        "trait" => f.value_trait_id = Some(value.to_string()),
        "credit" => {
            f.value_credit_id = Some(value.to_string());
            if !rate.trim().is_empty() {
                f.credit_consumption_rate =
                    Some(rate.trim().parse().map_err(|_| {
                        format!("credit_consumption_rate: {rate:?} is not a number")
                    })?);
            }
        }
        _ => {}
    }
    Ok(f)
}

fn form_of(form: &Form) -> OverrideForm {
    let get = |k: &str| form.get(k).unwrap_or("").to_string();
    OverrideForm {
        feature_id: get("feature_id"),
        value_type: get("value_type"),
        value: get("value"),
        metric_period: get("metric_period"),
        rate: get("credit_consumption_rate"),
        expires: get("expires"),
        expires_date: get("expires_date"),
        note: get("note"),
    }
}

/// The company page again with the form as sent and `message` next to its field.
async fn refused(
    state: &AppState,
    console: &Console,
    company_id: &str,
    form: OverrideForm,
    status: StatusCode,
    message: String,
) -> ConsoleResult<Response> {
    let mut errors = HashMap::new();
    errors.insert(field_of(&message), message);
    let html = render_page(state, console, company_id, None, form, errors).await?;
    Ok((status, axum::response::Html(html)).into_response())
}

#[tracing::instrument(skip_all, fields(console_user, company_id = %company_id))]
pub async fn create_override(
    State(state): State<AppState>,
    Path(company_id): Path<String>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let Posted { console, form } = posted;
    console.require_admin()?;
    let sent = form_of(&form);
    let now = Utc::now();
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let body = (|| {
        let note = sent.note.trim();
        if note.is_empty() {
            return Err(bad("note: a note is required (why, and who asked)".into()));
        }
        let expiration_date = expiry(&sent.expires, &sent.expires_date, now).map_err(bad)?;
        let v = value_fields(&sent.value_type, &sent.value, &sent.rate).map_err(bad)?;
        Ok(CreateBody {
            company_id: company_id.clone(),
            feature_id: sent.feature_id.clone(),
            value_type: Some(sent.value_type.clone()).filter(|s| !s.is_empty()),
            value_bool: v.value_bool,
            value_numeric: v.value_numeric,
            value_trait_id: v.value_trait_id,
            value_credit_id: v.value_credit_id,
            credit_consumption_rate: v.credit_consumption_rate,
            metric_period: Some(sent.metric_period.clone()).filter(|s| !s.is_empty()),
            metric_period_month_reset: None,
            expiration_date,
            note: Some(note.to_string()),
        })
    })();
    let body = match body {
        Ok(b) => b,
        Err((status, m)) => return refused(&state, &console, &company_id, sent, status, m).await,
    };
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let written = match overrides::create_in(&mut tx, &state, &auth, body, true).await {
        Ok(w) => w,
        Err(e) => {
            drop(tx);
            let (status, m) = shown(e)?;
            return refused(&state, &console, &company_id, sent, status, m).await;
        }
    };
    store::console::set_note_author(&mut tx, &written.id, &console.email).await?;
    audit_and_commit(&state, &console, tx, OVERRIDE_CREATE, written).await?;
    Ok(Redirect::to(&format!(
        "/console/companies/{company_id}?done=override-created"
    ))
    .into_response())
}

#[tracing::instrument(skip_all, fields(console_user, override_id = %override_id))]
pub async fn update_override(
    State(state): State<AppState>,
    Path((company_id, override_id)): Path<(String, String)>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let Posted { console, form } = posted;
    console.require_admin()?;
    let auth = console.auth();
    let mut conn = state.pool.acquire().await?;
    let current = store::overrides::get_for_update(&mut conn, console.env_id(), &override_id)
        .await?
        .filter(|o| o.company_id == company_id)
        .ok_or_else(|| ConsoleError::NotFound(format!("override {override_id:?} not found")))?;
    drop(conn);
    let sent = OverrideForm {
        value: form.get("value").unwrap_or("").to_string(),
        expires_date: form.get("expires_date").unwrap_or("").to_string(),
        note: form.get("note").unwrap_or("").to_string(),
        ..Default::default()
    };
    let parsed = (|| {
        let v = value_fields(&current.values.value_type, &sent.value, "")?;
        let expiration_date = if sent.expires_date.trim().is_empty() {
            None
        } else {
            expiry("date", &sent.expires_date, Utc::now())?
        };
        if sent.note.trim().is_empty() {
            return Err("note: a note is required (why, and who asked)".to_string());
        }
        Ok(UpdateBody {
            value_bool: v.value_bool,
            value_numeric: v.value_numeric,
            value_trait_id: v.value_trait_id,
            value_credit_id: v.value_credit_id,
            expiration_date,
            note: Some(sent.note.trim().to_string()),
            ..Default::default()
        })
    })();
    let body = match parsed {
        Ok(b) => b,
        Err(m) => {
            return refused(
                &state,
                &console,
                &company_id,
                sent,
                StatusCode::BAD_REQUEST,
                m,
            )
            .await
        }
    };
    let mut tx = state.begin().await?;
    let done = overrides::update_in(&mut tx, &state, &auth, &override_id, body, true).await;
    if let Err((status, m)) = commit_or_refused(&state, &console, tx, OVERRIDE_UPDATE, done).await?
    {
        return refused(&state, &console, &company_id, sent, status, m).await;
    }
    Ok(Redirect::to(&format!(
        "/console/companies/{company_id}?done=override-updated"
    ))
    .into_response())
}

#[tracing::instrument(skip_all, fields(console_user, override_id = %override_id))]
pub async fn delete_override(
    State(state): State<AppState>,
    Path((company_id, override_id)): Path<(String, String)>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let console = posted.console;
    console.require_admin()?;
    let auth = console.auth();
    let mut tx = state.begin().await?;
    let written = overrides::delete_in(&mut tx, &state, &auth, &override_id, true).await?;
    if written.company_id.as_deref() != Some(company_id.as_str()) {
        return Err(ConsoleError::NotFound(format!(
            "override {override_id:?} is not one of company {company_id:?}"
        )));
    }
    audit_and_commit(&state, &console, tx, OVERRIDE_DELETE, written).await?;
    Ok(Redirect::to(&format!(
        "/console/companies/{company_id}?done=override-deleted"
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages_land_next_to_their_field() {
        assert_eq!(
            field_of("expiration_date: 2020-01-01 is not in the future"),
            "expires"
        );
        assert_eq!(field_of("value_numeric: must be at least 0"), "value");
        assert_eq!(
            field_of("feature_id: feature \"x\" not found"),
            "feature_id"
        );
        assert_eq!(field_of("something else entirely"), "form");
    }

    #[test]
    fn expiry_presets_and_dates() {
        let now = Utc::now();
        assert_eq!(
            expiry("30", "", now).unwrap(),
            Some(now + Duration::days(30))
        );
        assert_eq!(expiry("never", "", now).unwrap(), None);
        let d = expiry("date", "2031-02-03", now).unwrap().unwrap();
        assert_eq!(
            d.format("%Y-%m-%d %H:%M:%S").to_string(),
            "2031-02-03 23:59:59"
        );
        assert!(expiry("date", "soon", now)
            .unwrap_err()
            .starts_with("expires:"));
        assert!(expiry("45", "", now).unwrap_err().starts_with("expires:"));
    }

    #[test]
    fn console_values_become_api_fields() {
        assert_eq!(
            value_fields("boolean", "false", "").unwrap().value_bool,
            Some(false)
        );
        assert_eq!(
            value_fields("numeric", "12", "").unwrap().value_numeric,
            Some(12)
        );
        assert!(value_fields("numeric", "12.5", "")
            .unwrap_err()
            .starts_with("value:"));
        assert!(value_fields("boolean", "maybe", "")
            .unwrap_err()
            .starts_with("value:"));
    }
}
