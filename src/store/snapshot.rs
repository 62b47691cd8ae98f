//! Reading the snapshot's pieces from Postgres: what checks need about the catalog, API
//! keys, companies and users, assembled into the shapes `cache` indexes.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::values::EntitlementValues;
use crate::engine::{self, Candidate, Source};

/// An API key as the auth extractor needs it.
#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub id: String,
    pub environment_id: String,
    pub readonly: bool,
}

/// Plans, features, flags and entitlements: shared by every environment.
#[derive(Debug, Default)]
pub struct Catalog {
    pub flags_by_key: HashMap<String, Arc<engine::Flag>>,
    /// The same flags ordered by key: the order of an all-flags answer.
    pub flags_sorted: Vec<Arc<engine::Flag>>,
    pub plans: HashMap<String, PlanInfo>,
    pub plan_ids_by_key: HashMap<String, String>,
    /// `feature_id` → `plan_id` → the entitlement as a candidate (two `&str` lookups: a check
    /// allocates no key).
    pub entitlements: HashMap<String, HashMap<String, PlanEntitlementInfo>>,
    /// Whether any credit type exists (when none does, nothing burns credits).
    pub credit_types_exist: bool,
    /// Whether any plan entitlement is metered (`pay_as_you_go` / `overage`): when none is,
    /// ingestion bills nothing and reads nothing for it.
    pub metered_exist: bool,
}

#[derive(Debug, Clone)]
pub struct PlanInfo {
    pub id: String,
    pub key: String,
    pub name: String,
    pub is_add_on: bool,
}

#[derive(Debug, Clone)]
pub struct PlanEntitlementInfo {
    pub candidate: Candidate,
    pub pay_in_advance: bool,
}

/// A company's plan membership.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub plan_id: String,
    pub is_base: bool,
    pub quantity: i64,
}

/// Everything a check needs about one company.
#[derive(Debug, Clone, PartialEq)]
pub struct CompanyState {
    pub keys: Vec<(String, String)>,
    /// The evaluation context, without the fallback plan (resolved at check time).
    pub context: engine::CompanyContext,
    pub memberships: Vec<Membership>,
    /// Live overrides by feature id.
    pub overrides: HashMap<String, Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserState {
    pub keys: Vec<(String, String)>,
    pub context: engine::UserContext,
}

pub async fn api_keys(pool: &PgPool) -> Result<HashMap<[u8; 32], ApiKeyInfo>, sqlx::Error> {
    let rows: Vec<(String, String, Vec<u8>, bool)> =
        sqlx::query_as("SELECT id, environment_id, key_hash, readonly FROM api_keys")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, environment_id, hash, readonly)| {
            let hash: [u8; 32] = hash.try_into().ok()?;
            Some((
                hash,
                ApiKeyInfo {
                    id,
                    environment_id,
                    readonly,
                },
            ))
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct FeatureRow {
    id: String,
    key: String,
    name: String,
    feature_type: String,
    event_subtype: Option<String>,
    trait_id: Option<String>,
}

impl FeatureRow {
    fn into_engine(self) -> Option<engine::Feature> {
        Some(engine::Feature {
            feature_type: engine::FeatureType::parse(&self.feature_type)?,
            id: self.id,
            key: self.key,
            name: self.name,
            event_subtype: self.event_subtype,
            trait_id: self.trait_id,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: String,
    flag_id: String,
    name: String,
    rule_type: String,
    priority: i32,
    value: bool,
    conditions: sqlx::types::Json<Vec<engine::Condition>>,
    condition_groups: sqlx::types::Json<Vec<Vec<engine::Condition>>>,
}

#[derive(sqlx::FromRow)]
struct EntitlementRow {
    id: String,
    plan_id: String,
    feature_id: String,
    plan_name: String,
    feature_key: String,
    price_behavior: Option<String>,
    soft_limit: Option<i64>,
    #[sqlx(flatten)]
    values: EntitlementValues,
}

pub async fn catalog(pool: &PgPool) -> Result<Catalog, sqlx::Error> {
    let features: Vec<FeatureRow> =
        sqlx::query_as("SELECT id, key, name, feature_type, event_subtype, trait_id FROM features")
            .fetch_all(pool)
            .await?;
    let features: HashMap<String, engine::Feature> = features
        .into_iter()
        .filter_map(FeatureRow::into_engine)
        .map(|f| (f.id.clone(), f))
        .collect();

    let rules: Vec<RuleRow> = sqlx::query_as(
        "SELECT id, flag_id, name, rule_type, priority, value, conditions, condition_groups
         FROM flag_rules ORDER BY flag_id, priority, created_at, id",
    )
    .fetch_all(pool)
    .await?;
    let mut rules_by_flag: HashMap<String, Vec<engine::Rule>> = HashMap::new();
    for r in rules {
        rules_by_flag
            .entry(r.flag_id)
            .or_default()
            .push(engine::Rule {
                id: r.id,
                name: r.name,
                kind: if r.rule_type == "global_override" {
                    engine::RuleKind::GlobalOverride
                } else {
                    engine::RuleKind::Standard
                },
                priority: r.priority,
                value: r.value,
                conditions: r.conditions.0,
                condition_groups: r.condition_groups.0,
            });
    }

    let flags: Vec<(String, String, bool, Option<String>)> =
        sqlx::query_as("SELECT id, key, default_value, feature_id FROM flags")
            .fetch_all(pool)
            .await?;
    let flags_by_key: HashMap<String, Arc<engine::Flag>> = flags
        .into_iter()
        .map(|(id, key, default_value, feature_id)| {
            let flag = engine::Flag {
                rules: rules_by_flag.remove(&id).unwrap_or_default(),
                feature: feature_id.and_then(|f| features.get(&f).cloned()),
                id,
                key: key.clone(),
                default_value,
            };
            (key, Arc::new(flag))
        })
        .collect();

    let plans: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT id, key, name, plan_type FROM plans")
            .fetch_all(pool)
            .await?;
    let plan_ids_by_key = plans
        .iter()
        .map(|(id, key, _, _)| (key.clone(), id.clone()))
        .collect();
    let plans = plans
        .into_iter()
        .map(|(id, key, name, plan_type)| {
            (
                id.clone(),
                PlanInfo {
                    id,
                    key,
                    name,
                    is_add_on: plan_type == "add_on",
                },
            )
        })
        .collect();

    let ents: Vec<EntitlementRow> = sqlx::query_as(
        "SELECT e.id, e.plan_id, e.feature_id, p.name AS plan_name, f.key AS feature_key,
                e.price_behavior, e.soft_limit, e.value_type, e.value_bool, e.value_numeric,
                e.value_trait_id,
                e.value_credit_id, e.credit_consumption_rate, e.metric_period,
                e.metric_period_month_reset
         FROM plan_entitlements e
         JOIN plans p ON p.id = e.plan_id
         JOIN features f ON f.id = e.feature_id",
    )
    .fetch_all(pool)
    .await?;
    let mut entitlements: HashMap<String, HashMap<String, PlanEntitlementInfo>> = HashMap::new();
    for e in ents {
        let mut candidate = e.values.candidate(
            Source::Plan {
                entitlement_id: e.id,
            },
            format!("{}: {}", e.plan_name, e.feature_key),
            None,
        );
        if super::plans::is_metered_behavior(e.price_behavior.as_deref()) {
            candidate.metered = Some(engine::Metered {
                soft_limit: e.soft_limit,
            });
        }
        let info = PlanEntitlementInfo {
            candidate,
            pay_in_advance: e.price_behavior.as_deref() == Some("pay_in_advance"),
        };
        entitlements
            .entry(e.feature_id)
            .or_default()
            .insert(e.plan_id, info);
    }

    let credit_types_exist: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credit_types)")
        .fetch_one(pool)
        .await?;
    let metered_exist = entitlements
        .values()
        .flat_map(|by_plan| by_plan.values())
        .any(|e| e.candidate.metered.is_some());
    let mut flags_sorted: Vec<_> = flags_by_key.values().cloned().collect();
    flags_sorted.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Catalog {
        metered_exist,
        flags_by_key,
        flags_sorted,
        plans,
        plan_ids_by_key,
        entitlements,
        credit_types_exist,
    })
}

#[derive(sqlx::FromRow)]
struct CompanyRow {
    id: String,
    traits: sqlx::types::Json<serde_json::Map<String, serde_json::Value>>,
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    company_id: String,
    plan_id: String,
    is_base: bool,
    quantity: i64,
    period_start: Option<DateTime<Utc>>,
}

/// A `usage_counters` row.
#[derive(sqlx::FromRow)]
pub(super) struct CounterRow {
    company_id: String,
    event_name: String,
    period: String,
    month_reset: String,
    window_start: DateTime<Utc>,
    count: i64,
    version: i64,
}

impl CounterRow {
    /// The company and its counter; `None` for a period or month reset this build does not
    /// know.
    pub(super) fn into_engine(self) -> Option<(String, engine::UsageCounter)> {
        let period = engine::MetricPeriod::parse(&self.period)?;
        let month_reset = engine::MonthReset::parse(&self.month_reset)?;
        let counter = engine::UsageCounter {
            event: self.event_name,
            period,
            month_reset,
            window_start: self.window_start,
            count: self.count,
            version: self.version,
        };
        Some((self.company_id, counter))
    }
}

/// Counters of windows that may still be current (the longest window is a month).
const COUNTER_SELECT: &str = "SELECT u.company_id, u.event_name, u.period, u.month_reset,
        u.window_start, u.count, u.version
     FROM usage_counters u
     WHERE (u.period = 'all_time' OR u.window_start > now() - interval '40 days')";

#[derive(sqlx::FromRow)]
struct GrantRow {
    company_id: String,
    credit_id: String,
    granted_micros: i64,
    used_micros: i64,
    zeroed_micros: i64,
    expires_at: Option<DateTime<Utc>>,
}

impl GrantRow {
    fn into_engine(self) -> engine::CreditGrant {
        use super::credits::from_micros;
        engine::CreditGrant {
            credit_id: self.credit_id,
            granted: from_micros(self.granted_micros),
            used: from_micros(self.used_micros),
            zeroed: from_micros(self.zeroed_micros),
            expires_at: self.expires_at,
        }
    }
}

/// Grants with something left; expired ones stay until zeroed (checks skip them by time).
const GRANT_SELECT: &str = "SELECT g.company_id, g.credit_id, g.granted_micros, g.used_micros,
        g.zeroed_micros, g.expires_at
     FROM credit_grants g
     WHERE g.granted_micros > g.used_micros + g.zeroed_micros";

pub async fn credit_grants(
    pool: &PgPool,
    company_id: &str,
) -> Result<Vec<engine::CreditGrant>, sqlx::Error> {
    let rows: Vec<GrantRow> = sqlx::query_as(&format!(
        "{GRANT_SELECT} AND g.company_id = $1 ORDER BY g.created_at"
    ))
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(GrantRow::into_engine).collect())
}

#[derive(sqlx::FromRow)]
struct OverrideRow {
    id: String,
    company_id: String,
    feature_id: String,
    feature_key: String,
    expiration_date: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    values: EntitlementValues,
}

const OVERRIDE_SELECT: &str = "SELECT o.id, o.company_id, o.feature_id, f.key AS feature_key,
        o.expiration_date, o.value_type, o.value_bool, o.value_numeric, o.value_trait_id,
        o.value_credit_id, o.credit_consumption_rate, o.metric_period, o.metric_period_month_reset
     FROM company_overrides o JOIN features f ON f.id = o.feature_id
     WHERE o.expired_at IS NULL";

/// Builds company states from rows already filtered to the wanted companies.
fn assemble_companies(
    companies: Vec<CompanyRow>,
    keys: Vec<(String, String, String)>,
    memberships: Vec<MembershipRow>,
    overrides: Vec<OverrideRow>,
    counters: Vec<CounterRow>,
    grants: Vec<GrantRow>,
) -> HashMap<String, CompanyState> {
    let mut out: HashMap<String, CompanyState> = companies
        .into_iter()
        .map(|c| {
            let state = CompanyState {
                keys: Vec::new(),
                context: engine::CompanyContext {
                    id: c.id.clone(),
                    traits: c.traits.0,
                    ..Default::default()
                },
                memberships: Vec::new(),
                overrides: HashMap::new(),
            };
            (c.id, state)
        })
        .collect();
    for (company_id, key, value) in keys {
        if let Some(c) = out.get_mut(&company_id) {
            c.keys.push((key, value));
        }
    }
    for m in memberships {
        if let Some(c) = out.get_mut(&m.company_id) {
            if m.is_base {
                c.context.base_plan_id = Some(m.plan_id.clone());
                c.context.billing_anchor = m.period_start;
                c.context.plan_ids.insert(0, m.plan_id.clone());
            } else {
                c.context.plan_ids.push(m.plan_id.clone());
            }
            c.memberships.push(Membership {
                plan_id: m.plan_id,
                is_base: m.is_base,
                quantity: m.quantity,
            });
        }
    }
    for g in grants {
        if let Some(c) = out.get_mut(&g.company_id) {
            c.context.credit_grants.push(g.into_engine());
        }
    }
    for r in counters {
        let Some((company_id, counter)) = r.into_engine() else {
            continue;
        };
        if let Some(c) = out.get_mut(&company_id) {
            engine::merge_usage(&mut c.context.usage, std::slice::from_ref(&counter));
        }
    }
    for o in overrides {
        if let Some(c) = out.get_mut(&o.company_id) {
            let candidate = o.values.candidate(
                Source::Override {
                    override_id: o.id.clone(),
                },
                o.feature_key.clone(),
                o.expiration_date,
            );
            c.overrides.insert(o.feature_id, candidate);
        }
    }
    out
}

pub async fn company(
    pool: &PgPool,
    environment_id: &str,
    id: &str,
) -> Result<Option<CompanyState>, sqlx::Error> {
    Ok(companies(pool, environment_id, &[id.to_string()])
        .await?
        .remove(id))
}

/// Several companies in six queries, whatever their number (a reconcile page, a batch of
/// notifications). Companies that do not exist are absent from the map.
pub async fn companies(
    pool: &PgPool,
    environment_id: &str,
    ids: &[String],
) -> Result<HashMap<String, CompanyState>, sqlx::Error> {
    let rows: Vec<CompanyRow> = sqlx::query_as(
        "SELECT id, traits FROM companies WHERE environment_id = $1 AND id = ANY($2)",
    )
    .bind(environment_id)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let keys = sqlx::query_as(
        "SELECT company_id, key, value FROM company_keys WHERE company_id = ANY($1)
         ORDER BY created_at, key",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let memberships = sqlx::query_as(
        "SELECT company_id, plan_id, is_base, quantity, period_start FROM company_plans
         WHERE company_id = ANY($1) AND ended_at IS NULL ORDER BY started_at",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let overrides = sqlx::query_as(&format!("{OVERRIDE_SELECT} AND o.company_id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    let counters = sqlx::query_as(&format!("{COUNTER_SELECT} AND u.company_id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    let grants = sqlx::query_as(&format!(
        "{GRANT_SELECT} AND g.company_id = ANY($1) ORDER BY g.created_at"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(assemble_companies(
        rows,
        keys,
        memberships,
        overrides,
        counters,
        grants,
    ))
}

#[allow(clippy::type_complexity)]
pub async fn environment(
    pool: &PgPool,
    environment_id: &str,
) -> Result<(HashMap<String, CompanyState>, HashMap<String, UserState>), sqlx::Error> {
    let rows: Vec<CompanyRow> =
        sqlx::query_as("SELECT id, traits FROM companies WHERE environment_id = $1")
            .bind(environment_id)
            .fetch_all(pool)
            .await?;
    let keys = sqlx::query_as(
        "SELECT company_id, key, value FROM company_keys WHERE environment_id = $1 ORDER BY created_at, key",
    )
    .bind(environment_id)
    .fetch_all(pool)
    .await?;
    let memberships = sqlx::query_as(
        "SELECT company_id, plan_id, is_base, quantity, period_start FROM company_plans
         WHERE environment_id = $1 AND ended_at IS NULL ORDER BY started_at",
    )
    .bind(environment_id)
    .fetch_all(pool)
    .await?;
    let overrides = sqlx::query_as(&format!("{OVERRIDE_SELECT} AND o.environment_id = $1"))
        .bind(environment_id)
        .fetch_all(pool)
        .await?;
    let counters = sqlx::query_as(&format!(
        "{COUNTER_SELECT} AND u.company_id IN (SELECT id FROM companies WHERE environment_id = $1)"
    ))
    .bind(environment_id)
    .fetch_all(pool)
    .await?;
    let grants = sqlx::query_as(&format!(
        "{GRANT_SELECT} AND g.environment_id = $1 ORDER BY g.created_at"
    ))
    .bind(environment_id)
    .fetch_all(pool)
    .await?;
    let companies = assemble_companies(rows, keys, memberships, overrides, counters, grants);

    let users: Vec<(String, sqlx::types::Json<engine::Traits>)> =
        sqlx::query_as("SELECT id, traits FROM users WHERE environment_id = $1")
            .bind(environment_id)
            .fetch_all(pool)
            .await?;
    let user_keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT user_id, key, value FROM user_keys WHERE environment_id = $1 ORDER BY created_at, key",
    )
    .bind(environment_id)
    .fetch_all(pool)
    .await?;
    Ok((companies, assemble_users(users, user_keys)))
}

fn assemble_users(
    users: Vec<(String, sqlx::types::Json<engine::Traits>)>,
    keys: Vec<(String, String, String)>,
) -> HashMap<String, UserState> {
    let mut out: HashMap<String, UserState> = users
        .into_iter()
        .map(|(id, traits)| {
            (
                id.clone(),
                UserState {
                    keys: Vec::new(),
                    context: engine::UserContext {
                        id,
                        traits: traits.0,
                    },
                },
            )
        })
        .collect();
    for (user_id, key, value) in keys {
        if let Some(u) = out.get_mut(&user_id) {
            u.keys.push((key, value));
        }
    }
    out
}

pub async fn user(
    pool: &PgPool,
    environment_id: &str,
    id: &str,
) -> Result<Option<UserState>, sqlx::Error> {
    let users: Vec<(String, sqlx::types::Json<engine::Traits>)> =
        sqlx::query_as("SELECT id, traits FROM users WHERE environment_id = $1 AND id = $2")
            .bind(environment_id)
            .bind(id)
            .fetch_all(pool)
            .await?;
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT user_id, key, value FROM user_keys WHERE user_id = $1 ORDER BY created_at, key",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(assemble_users(users, keys).remove(id))
}

/// Candidates are built the same way for plans and overrides.
impl EntitlementValues {
    pub fn candidate(
        &self,
        source: Source,
        label: String,
        expires_at: Option<DateTime<Utc>>,
    ) -> Candidate {
        Candidate {
            source,
            label,
            value: self.to_engine(),
            metric_period: self
                .metric_period
                .as_deref()
                .and_then(engine::MetricPeriod::parse),
            month_reset: self
                .metric_period_month_reset
                .as_deref()
                .and_then(engine::MonthReset::parse)
                .unwrap_or_default(),
            pay_in_advance_quantity: None,
            metered: None,
            expires_at,
        }
    }
}
