//! `GET /insights/summary`, `/insights/top-features`, `/insights/plan-growth`: analytics of
//! the caller's environment, computed in SQL. Shapes follow the `schematichq` SDK's models
//! (`InsightsSummaryResponseData`, `TopFeaturesByUsageResponseData`,
//! `PlanGrowthResponseData`) with entitled's own fields added.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Auth;
use super::envelope;
use super::extract::Query;
use super::openapi::{Enveloped, Errors};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::store::insights::{self as store, Granularity, Ranking};

/// The default window: the last 30 days.
pub const DEFAULT_WINDOW_DAYS: i64 = 30;
/// The longest window of daily figures.
pub const MAX_WINDOW_DAYS: i64 = 366;
/// The most months of monthly plan growth.
pub const MAX_MONTHS: i64 = 120;
pub const DEFAULT_TOP_FEATURES: i64 = 10;
pub const MAX_TOP_FEATURES: i64 = 100;

/// A plan and how many of the environment's companies are on it now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanCount {
    pub plan_id: String,
    pub plan_key: String,
    pub plan_name: String,
    /// `plan` or `add_on`.
    pub plan_type: String,
    pub companies: i64,
}

/// Events stored in the last 30 days.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventCounts {
    pub total: i64,
    pub track: i64,
    pub identify: i64,
    /// The summed `quantity` of the track events.
    pub tracked_quantity: i64,
}

/// `InsightsSummaryResponseData`, plus entitled's counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SummaryView {
    pub total_companies: i64,
    pub total_users: i64,
    /// Catalog objects are shared by every environment.
    pub total_features: i64,
    pub total_flags: i64,
    pub total_plans: i64,
    /// Companies on a plan billed through Stripe (one with a `billing_product_id`).
    pub paid_companies: i64,
    pub companies_without_plan: i64,
    /// Credit balances are not summarised by entitled: always 0.
    pub active_credits: f64,
    /// entitled does not price plans: always empty.
    #[schema(value_type = Vec<Object>)]
    pub mrr: Vec<Value>,
    pub plans: Vec<PlanCount>,
    pub events_last_30_days: EventCounts,
    /// Flag checks answered in the last 30 days, by every replica (counted per hour,
    /// flushed every few seconds).
    pub checks_last_30_days: i64,
    /// The start of the 30-day window.
    pub since: DateTime<Utc>,
}

/// The environment's summary: the REST and MCP `get-insights-summary`.
pub async fn summary_of(state: &AppState, auth: &Auth) -> AppResult<SummaryView> {
    let since = Utc::now() - TimeDelta::days(DEFAULT_WINDOW_DAYS);
    let mut conn = state.pool.acquire().await?;
    let s = store::summary(&mut conn, auth.env_id(), since).await?;
    let plans = store::plan_counts(&mut conn, auth.env_id())
        .await?
        .into_iter()
        .map(|p| PlanCount {
            plan_id: p.id,
            plan_key: p.key,
            plan_name: p.name,
            plan_type: p.plan_type,
            companies: p.companies,
        })
        .collect();
    Ok(SummaryView {
        total_companies: s.companies,
        total_users: s.users,
        total_features: s.features,
        total_flags: s.flags,
        total_plans: s.plans,
        paid_companies: s.paid_companies,
        companies_without_plan: s.companies_without_plan,
        active_credits: 0.0,
        mrr: Vec::new(),
        plans,
        events_last_30_days: EventCounts {
            total: s.track_events + s.identify_events,
            track: s.track_events,
            identify: s.identify_events,
            tracked_quantity: s.tracked_quantity,
        },
        checks_last_30_days: s.checks,
        since,
    })
}

#[utoipa::path(get, path = "/insights/summary", tag = "insights",
    responses((status = 200, description = "Counts for the key's environment", body = Enveloped<SummaryView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn summary(State(state): State<AppState>, auth: Auth) -> AppResult<Response> {
    Ok(envelope::ok_empty(summary_of(&state, &auth).await?))
}

/// `[start, end)`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

fn timestamp(name: &str, value: Option<&str>) -> AppResult<Option<DateTime<Utc>>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let t = DateTime::parse_from_rfc3339(v)
        .map_err(|_| {
            AppError::bad_request(format!(
                "{name}: expected an RFC 3339 timestamp such as 2026-01-31T00:00:00Z, got {v:?}"
            ))
        })?
        .with_timezone(&Utc);
    if !(1..=9999).contains(&t.year()) {
        return Err(AppError::bad_request(format!(
            "{name}: must be between the years 0001 and 9999"
        )));
    }
    Ok(Some(t))
}

impl Window {
    /// From optional `start_time` and `end_time`: by default the `DEFAULT_WINDOW_DAYS` up to
    /// `end_time` (itself by default now). At most `max_days` long; the start before the end.
    pub fn parse(
        start_time: Option<&str>,
        end_time: Option<&str>,
        now: DateTime<Utc>,
        max_days: i64,
    ) -> AppResult<Window> {
        let start = timestamp("start_time", start_time)?;
        let end = timestamp("end_time", end_time)?;
        let end = match (start, end) {
            (_, Some(e)) => e,
            // A start long ago: up to now, or the longest window allowed.
            (Some(s), None) => now.min(s + TimeDelta::days(max_days)).max(s),
            (None, None) => now,
        };
        let start = match start {
            Some(s) => s,
            None => end
                .checked_sub_signed(TimeDelta::days(DEFAULT_WINDOW_DAYS))
                .unwrap_or(end),
        };
        if start >= end {
            return Err(AppError::bad_request(format!(
                "start_time: must be before end_time ({} is not before {})",
                start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        if end - start > TimeDelta::days(max_days) {
            return Err(AppError::bad_request(format!(
                "end_time: the window from start_time to end_time is at most {max_days} days"
            )));
        }
        Ok(Window { start, end })
    }

    /// The window of the same length just before this one.
    pub fn prior_start(&self) -> DateTime<Utc> {
        self.start
            .checked_sub_signed(self.end - self.start)
            .unwrap_or(self.start)
    }

    fn params(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "start_time".into(),
            self.start
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .into(),
        );
        m.insert(
            "end_time".into(),
            self.end
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .into(),
        );
        m
    }
}

/// `TopFeatureByUsageResponseData`, plus checks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopFeature {
    pub feature_id: String,
    pub feature_key: String,
    pub feature_name: String,
    /// `boolean`, `event` or `trait`.
    pub feature_type: String,
    pub event_subtype: Option<String>,
    pub plural_name: Option<String>,
    /// The quantity of track events named by the feature's `event_subtype` in the window.
    pub usage: i64,
    /// The same in the window of equal length before.
    pub prior_usage: i64,
    /// `(usage - prior_usage) / prior_usage × 100`; null without prior usage.
    pub change_pct: Option<f64>,
    /// Checks of the feature's flag in the window (hourly buckets).
    pub checks: i64,
    /// Of those, checks that answered true.
    pub allowed_checks: i64,
    pub prior_checks: i64,
}

/// `TopFeaturesByUsageResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopFeaturesView {
    pub features: Vec<TopFeature>,
}

// The arguments of top features, as sent (query parameters or MCP arguments). The field
// docs are the MCP tool's argument descriptions.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
pub struct TopFeaturesArgs {
    /// RFC 3339; default 30 days before `end_time`.
    pub start_time: Option<String>,
    /// RFC 3339; default now. At most 366 days after `start_time`.
    pub end_time: Option<String>,
    /// How many features (1 to 100, default 10).
    pub limit: Option<i64>,
    /// Rank by `usage` (default) or `checks`.
    pub by: Option<String>,
}

/// Features ranked by usage or checks: the REST and MCP `get-top-features`.
pub async fn top_features_of(
    state: &AppState,
    auth: &Auth,
    args: &TopFeaturesArgs,
) -> AppResult<(TopFeaturesView, Value)> {
    let window = Window::parse(
        args.start_time.as_deref(),
        args.end_time.as_deref(),
        Utc::now(),
        MAX_WINDOW_DAYS,
    )?;
    let limit = args.limit.unwrap_or(DEFAULT_TOP_FEATURES);
    if !(1..=MAX_TOP_FEATURES).contains(&limit) {
        return Err(AppError::bad_request(format!(
            "limit: must be between 1 and {MAX_TOP_FEATURES}, got {limit}"
        )));
    }
    let by = match args.by.as_deref().filter(|s| !s.is_empty()) {
        None | Some("usage") => Ranking::Usage,
        Some("checks") => Ranking::Checks,
        Some(other) => {
            return Err(AppError::bad_request(format!(
                "by: must be usage or checks, got {other:?}"
            )))
        }
    };
    let mut conn = state.pool.acquire().await?;
    let rows = store::top_features(
        &mut conn,
        auth.env_id(),
        window.start,
        window.end,
        window.prior_start(),
        by,
        limit,
    )
    .await?;
    let features = rows
        .into_iter()
        .map(|r| TopFeature {
            change_pct: (r.prior_usage != 0).then(|| {
                ((r.usage - r.prior_usage) as f64 / r.prior_usage.abs() as f64 * 1000.0).round()
                    / 10.0
            }),
            feature_id: r.id,
            feature_key: r.key,
            feature_name: r.name,
            feature_type: r.feature_type,
            event_subtype: r.event_subtype,
            plural_name: None,
            usage: r.usage,
            prior_usage: r.prior_usage,
            checks: r.checks,
            allowed_checks: r.allowed_checks,
            prior_checks: r.prior_checks,
        })
        .collect();
    let mut params = window.params();
    params.insert("limit".into(), limit.into());
    params.insert(
        "by".into(),
        match by {
            Ranking::Usage => "usage",
            Ranking::Checks => "checks",
        }
        .into(),
    );
    Ok((TopFeaturesView { features }, Value::Object(params)))
}

/// Query parameters of `GET /insights/top-features`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct TopFeaturesParams {
    /// RFC 3339; default: 30 days before `end_time`.
    start_time: Option<DateTime<Utc>>,
    /// RFC 3339; default: now. The window is at most 366 days.
    end_time: Option<DateTime<Utc>>,
    /// How many features (1 to 100, default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Rank by `usage` (default) or `checks`.
    #[param(pattern = "^(usage|checks)$")]
    by: Option<String>,
}

#[utoipa::path(get, path = "/insights/top-features", tag = "insights",
    params(TopFeaturesParams),
    responses((status = 200, description = "Features by usage and checks in the window", body = Enveloped<TopFeaturesView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn top_features(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let limit = match query.get("limit").filter(|s| !s.is_empty()) {
        Some(v) => Some(v.parse().map_err(|_| {
            AppError::bad_request(format!("limit: expected an integer, got {v:?}"))
        })?),
        None => None,
    };
    let args = TopFeaturesArgs {
        start_time: query.get("start_time").map(str::to_string),
        end_time: query.get("end_time").map(str::to_string),
        limit,
        by: query.get("by").map(str::to_string),
    };
    let (view, params) = top_features_of(&state, &auth, &args).await?;
    Ok(envelope::ok(view, params))
}

/// `PlanGrowthPointResponseData`, plus joins and leaves.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanGrowthPoint {
    /// The start of the UTC day (or month) this point covers.
    pub date: DateTime<Utc>,
    /// The start of the month `date` falls in.
    pub month: DateTime<Utc>,
    pub plan_id: String,
    pub plan_key: String,
    pub plan_name: String,
    pub plan_type: String,
    /// Companies that joined the plan in this bucket (within the window).
    pub joined: i64,
    /// Companies that left the plan in this bucket (within the window).
    pub left: i64,
    /// Companies on the plan at the end of this bucket.
    pub subscribers: i64,
}

/// `PlanGrowthResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanGrowthView {
    pub points: Vec<PlanGrowthPoint>,
}

// The arguments of plan growth, as sent (query parameters or MCP arguments). The field docs
// are the MCP tool's argument descriptions.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
pub struct PlanGrowthArgs {
    /// RFC 3339; default 30 days before `end_time`.
    pub start_time: Option<String>,
    /// RFC 3339; default now.
    pub end_time: Option<String>,
    /// `day` (default) or `month`.
    pub granularity: Option<String>,
    /// Instead of a window: this many calendar months up to now, monthly.
    pub months: Option<i64>,
}

fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// Plans' joins, leaves and subscribers per day or month: the REST and MCP
/// `get-plan-growth`.
pub async fn plan_growth_of(
    state: &AppState,
    auth: &Auth,
    args: &PlanGrowthArgs,
) -> AppResult<(PlanGrowthView, Value)> {
    let now = Utc::now();
    let (window, granularity, months) = match args.months {
        Some(m) => {
            if args.start_time.is_some() || args.end_time.is_some() {
                return Err(AppError::bad_request(
                    "months: send months or start_time and end_time, not both",
                ));
            }
            if !(1..=MAX_MONTHS).contains(&m) {
                return Err(AppError::bad_request(format!(
                    "months: must be between 1 and {MAX_MONTHS}, got {m}"
                )));
            }
            let mut start = month_start(now);
            for _ in 1..m {
                start = month_start(start - TimeDelta::days(1));
            }
            (Window { start, end: now }, Granularity::Month, Some(m))
        }
        None => {
            let granularity = match args.granularity.as_deref().filter(|s| !s.is_empty()) {
                None | Some("day") => Granularity::Day,
                Some("month") => Granularity::Month,
                Some(other) => {
                    return Err(AppError::bad_request(format!(
                        "granularity: must be day or month, got {other:?}"
                    )))
                }
            };
            let max = match granularity {
                Granularity::Day => MAX_WINDOW_DAYS,
                Granularity::Month => MAX_MONTHS * 31,
            };
            let window = Window::parse(
                args.start_time.as_deref(),
                args.end_time.as_deref(),
                now,
                max,
            )?;
            (window, granularity, None)
        }
    };
    let mut conn = state.pool.acquire().await?;
    let rows = store::plan_growth(
        &mut conn,
        auth.env_id(),
        window.start,
        window.end,
        granularity,
    )
    .await?;
    let points = rows
        .into_iter()
        .map(|r| PlanGrowthPoint {
            month: month_start(r.bucket),
            date: r.bucket,
            plan_id: r.plan_id,
            plan_key: r.plan_key,
            plan_name: r.plan_name,
            plan_type: r.plan_type,
            joined: r.joined,
            left: r.left,
            subscribers: r.subscribers,
        })
        .collect();
    let mut params = window.params();
    params.insert("granularity".into(), granularity.as_str().into());
    if let Some(m) = months {
        params.insert("months".into(), json!(m));
    }
    Ok((PlanGrowthView { points }, Value::Object(params)))
}

/// Query parameters of `GET /insights/plan-growth`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PlanGrowthParams {
    /// RFC 3339; default: 30 days before `end_time`.
    start_time: Option<DateTime<Utc>>,
    /// RFC 3339; default: now. At most 366 days of days, or 120 months of months.
    end_time: Option<DateTime<Utc>>,
    /// `day` (default) or `month`.
    #[param(pattern = "^(day|month)$")]
    granularity: Option<String>,
    /// Instead of a window: this many calendar months up to now, monthly (1 to 120).
    #[param(minimum = 1, maximum = 120)]
    months: Option<i64>,
}

#[utoipa::path(get, path = "/insights/plan-growth", tag = "insights",
    params(PlanGrowthParams),
    responses((status = 200, description = "Per plan and day (or month): joins, leaves and subscribers", body = Enveloped<PlanGrowthView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn plan_growth(
    State(state): State<AppState>,
    auth: Auth,
    query: Query,
) -> AppResult<Response> {
    let months = match query.get("months").filter(|s| !s.is_empty()) {
        Some(v) => Some(v.parse().map_err(|_| {
            AppError::bad_request(format!("months: expected an integer, got {v:?}"))
        })?),
        None => None,
    };
    let args = PlanGrowthArgs {
        start_time: query.get("start_time").map(str::to_string),
        end_time: query.get("end_time").map(str::to_string),
        granularity: query.get("granularity").map(str::to_string),
        months,
    };
    let (view, params) = plan_growth_of(&state, &auth, &args).await?;
    Ok(envelope::ok(view, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_default_to_the_last_30_days_and_are_validated() {
        let now = t("2026-03-31T12:00:00Z");
        let w = Window::parse(None, None, now, 366).unwrap();
        assert_eq!((w.start, w.end), (t("2026-03-01T12:00:00Z"), now));
        let w = Window::parse(Some("2026-01-01T00:00:00+01:00"), None, now, 366).unwrap();
        assert_eq!((w.start, w.end), (t("2025-12-31T23:00:00Z"), now));
        let w = Window::parse(None, Some("2026-02-01T00:00:00Z"), now, 366).unwrap();
        assert_eq!(w.start, t("2026-01-02T00:00:00Z"));
        assert_eq!(w.prior_start(), t("2025-12-03T00:00:00Z"));
        let err = |s: Option<&str>, e: Option<&str>| {
            Window::parse(s, e, now, 366).unwrap_err().to_string()
        };
        assert!(err(Some("yesterday"), None).starts_with("start_time: expected an RFC 3339"));
        assert!(err(None, Some("2026-13-01T00:00:00Z")).starts_with("end_time:"));
        assert!(
            err(Some("2026-02-01T00:00:00Z"), Some("2026-01-01T00:00:00Z"))
                .starts_with("start_time: must be before end_time")
        );
        assert!(
            err(Some("2024-01-01T00:00:00Z"), Some("2026-01-01T00:00:00Z"))
                .contains("at most 366 days")
        );
        assert!(err(Some("0000-01-01T00:00:00Z"), None).contains("0001 and 9999"));
        // A start in the future with no end: the start is not before the end.
        assert!(err(Some("2027-01-01T00:00:00Z"), None).starts_with("start_time: must be before"));
    }
}
