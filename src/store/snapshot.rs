//! Reading the snapshot's pieces from Postgres: what checks need about the catalog, API
//! keys, companies and users, assembled into the shapes `cache` indexes.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Row};
use tokio::sync::Semaphore;

use super::rows::PgQuery;
use super::usage::{self, Totals};
use super::values::EntitlementValues;
use crate::engine::{self, Candidate, Interner, Source};

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
    pub plan_id: Arc<str>,
    pub is_base: bool,
    pub quantity: i64,
}

/// Everything a check needs about one company. Every replica holds one per company, so it
/// is kept small: boxed slices rather than vectors and maps, shared names (see
/// `engine::compact`).
#[derive(Debug, Clone, PartialEq)]
pub struct CompanyState {
    pub keys: Box<[KeyPair]>,
    /// The evaluation context, without the fallback plan (resolved at check time).
    pub context: engine::CompanyContext,
    pub memberships: Box<[Membership]>,
    /// Live overrides, sorted by feature id.
    pub overrides: Box<[(Box<str>, Candidate)]>,
}

impl CompanyState {
    /// The company's live override of a feature.
    pub fn override_for(&self, feature_id: &str) -> Option<&Candidate> {
        self.overrides
            .binary_search_by(|(f, _)| (**f).cmp(feature_id))
            .ok()
            .map(|i| &self.overrides[i].1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserState {
    pub keys: Box<[KeyPair]>,
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

/// A company's or user's identifying key. The name is one allocation shared by every object
/// with a key of that name.
pub type KeyPair = (Arc<str>, Box<str>);

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

/// Which companies (or users) a load reads.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Every one of the environment.
    Environment(&'a str),
    /// These ids of the environment.
    Ids(&'a str, &'a [String]),
}

impl<'a> Scope<'a> {
    /// The filter to append to a query of the objects' own table (`$1` the environment, `$2`
    /// the ids).
    fn objects(self) -> &'static str {
        match self {
            Scope::Environment(_) => "environment_id = $1",
            Scope::Ids(..) => "environment_id = $1 AND id = ANY($2)",
        }
    }

    /// One of two filters of a table that refers to the objects: `$1` is the environment or
    /// the ids.
    fn pick(self, by_environment: &'static str, by_ids: &'static str) -> &'static str {
        match self {
            Scope::Environment(_) => by_environment,
            Scope::Ids(..) => by_ids,
        }
    }

    fn bind_objects<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        match self {
            Scope::Environment(env) => q.bind(env),
            Scope::Ids(env, ids) => q.bind(env).bind(ids),
        }
    }

    fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        match self {
            Scope::Environment(env) => q.bind(env),
            Scope::Ids(_, ids) => q.bind(ids),
        }
    }
}

// The load's readers take columns with `try_get_unchecked`: the queries are the few here,
// their column types fixed by the migrations (a mismatch still fails to decode, by length or
// UTF-8), and checking each column's type on the 7,000,000 rows of a million companies was
// about 7% of the load.

/// Streams the rows of `q`, keeping what `read` makes of each (`None`: skipped), once one of
/// `permits` is free: loads run their queries concurrently, at most as many as the pool can
/// spare.
async fn rows_of<T>(
    pool: &PgPool,
    permits: &Semaphore,
    q: PgQuery<'_>,
    mut read: impl FnMut(&PgRow) -> Result<Option<T>, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    let _permit = permits
        .acquire()
        .await
        .map_err(|_| sqlx::Error::PoolClosed)?;
    let mut out = Vec::new();
    let mut rows = q.fetch(pool);
    while let Some(row) = rows.try_next().await? {
        if let Some(item) = read(&row)? {
            out.push(item);
        }
    }
    Ok(out)
}

/// How many of a load's queries run at once. A whole environment: up to half the pool, so a
/// reload leaves connections to the requests it runs beside. A few objects (the refresh
/// after a write): one, since their queries are quick and writers refresh often.
fn load_permits(pool: &PgPool, scope: Scope<'_>) -> Semaphore {
    match scope {
        Scope::Environment(_) => {
            Semaphore::new((pool.options().get_max_connections() as usize / 2).clamp(1, 6))
        }
        Scope::Ids(..) => Semaphore::new(1),
    }
}

/// Objects read by id, numbered in the order they came: later queries find their slot.
struct Slots(HashMap<Arc<str>, usize>);

impl Slots {
    fn get(&self, id: &str) -> Option<usize> {
        self.0.get(id).copied()
    }
}

/// Reads an object's id and traits (`SELECT id, traits::text`).
fn id_and_traits(
    row: &PgRow,
    interner: &mut Interner,
) -> Result<(Arc<str>, engine::TraitSet), sqlx::Error> {
    let id: &str = row.try_get_unchecked(0)?;
    let traits: &str = row.try_get_unchecked(1)?;
    let traits = engine::TraitSet::from_json(traits, interner)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok((Arc::from(id), traits))
}

/// Reads a key row (`SELECT owner_id, key, value`) of a known owner.
fn key_row(
    row: &PgRow,
    slots: &Slots,
    names: &mut Interner,
) -> Result<Option<(usize, KeyPair)>, sqlx::Error> {
    let Some(slot) = slots.get(row.try_get_unchecked(0)?) else {
        return Ok(None);
    };
    let key: &str = row.try_get_unchecked(1)?;
    let value: &str = row.try_get_unchecked(2)?;
    Ok(Some((slot, (names.intern(key), Box::from(value)))))
}

/// The objects of `scope` in `table` (`companies` or `users`), made from their ids and
/// traits, and their slots.
async fn objects<T>(
    pool: &PgPool,
    permits: &Semaphore,
    table: &str,
    scope: Scope<'_>,
    mut make: impl FnMut(Arc<str>, engine::TraitSet) -> T,
) -> Result<(Slots, Vec<T>), sqlx::Error> {
    let sql = format!(
        "SELECT id, traits::text FROM {table} WHERE {}",
        scope.objects()
    );
    let q = scope.bind_objects(sqlx::query(&sql));
    let mut names = Interner::default();
    let mut slots = HashMap::new();
    let objects = rows_of(pool, permits, q, |row| {
        let (id, traits) = id_and_traits(row, &mut names)?;
        slots.insert(id.clone(), slots.len());
        Ok(Some(make(id, traits)))
    })
    .await?;
    Ok((Slots(slots), objects))
}

/// A company while its rows arrive.
struct CompanyParts {
    context: engine::CompanyContext,
    keys: Vec<KeyPair>,
    memberships: Vec<Membership>,
    overrides: Vec<(Box<str>, Candidate)>,
}

impl CompanyParts {
    fn new(id: Arc<str>, traits: engine::TraitSet) -> Self {
        CompanyParts {
            context: engine::CompanyContext {
                id,
                traits,
                ..Default::default()
            },
            keys: Vec::new(),
            memberships: Vec::new(),
            overrides: Vec::new(),
        }
    }

    fn finish(self) -> CompanyState {
        let mut overrides = self.overrides;
        overrides.sort_by(|a, b| a.0.cmp(&b.0));
        let mut context = self.context;
        context.plan_ids.shrink_to_fit();
        context.usage.shrink_to_fit();
        context.credit_grants.shrink_to_fit();
        CompanyState {
            keys: self.keys.into_boxed_slice(),
            context,
            memberships: self.memberships.into_boxed_slice(),
            overrides: overrides.into_boxed_slice(),
        }
    }
}

/// A `company_plans` row of a known company.
struct MembershipRow {
    slot: usize,
    membership: Membership,
    period_start: Option<DateTime<Utc>>,
}

/// The companies of `scope`: the companies first, then their keys, memberships, grants,
/// counters and overrides concurrently, each query streamed and read in place. Names that
/// repeat (plan ids, trait, key and event names) are shared.
async fn load_companies(
    pool: &PgPool,
    permits: &Semaphore,
    scope: Scope<'_>,
) -> Result<Vec<CompanyState>, sqlx::Error> {
    let (slots, mut companies) =
        objects(pool, permits, "companies", scope, CompanyParts::new).await?;
    if companies.is_empty() {
        return Ok(Vec::new());
    }
    let slots = &slots;

    let keys_sql = format!(
        "SELECT company_id, key, value FROM company_keys WHERE {} ORDER BY created_at, key",
        scope.pick("environment_id = $1", "company_id = ANY($1)")
    );
    let mut key_names = Interner::default();
    let keys = rows_of(pool, permits, scope.bind(sqlx::query(&keys_sql)), |row| {
        key_row(row, slots, &mut key_names)
    });

    let plans_sql = format!(
        "SELECT company_id, plan_id, is_base, quantity, period_start FROM company_plans
         WHERE {} AND ended_at IS NULL ORDER BY started_at",
        scope.pick("environment_id = $1", "company_id = ANY($1)")
    );
    let mut plan_ids = Interner::default();
    let memberships = rows_of(pool, permits, scope.bind(sqlx::query(&plans_sql)), |row| {
        let Some(slot) = slots.get(row.try_get_unchecked(0)?) else {
            return Ok(None);
        };
        let membership = Membership {
            plan_id: plan_ids.intern(row.try_get_unchecked(1)?),
            is_base: row.try_get_unchecked(2)?,
            quantity: row.try_get_unchecked(3)?,
        };
        Ok(Some(MembershipRow {
            slot,
            membership,
            period_start: row.try_get_unchecked(4)?,
        }))
    });

    let grants_sql = format!(
        "{GRANT_SELECT} AND {} ORDER BY g.created_at",
        scope.pick("g.environment_id = $1", "g.company_id = ANY($1)")
    );
    let grants = rows_of(pool, permits, scope.bind(sqlx::query(&grants_sql)), |row| {
        let g = GrantRow::from_row(row)?;
        Ok(slots.get(&g.company_id).map(|slot| (slot, g.into_engine())))
    });

    let counters_sql = format!(
        "SELECT {} FROM usage_totals WHERE {}",
        usage::COLUMNS,
        scope.pick("environment_id = $1", "company_id = ANY($1)")
    );
    let mut events = Interner::default();
    let counters = rows_of(
        pool,
        permits,
        scope.bind(sqlx::query(&counters_sql)),
        |row| {
            let Some(slot) = slots.get(row.try_get_unchecked(0)?) else {
                return Ok(None);
            };
            Ok(Some((
                slot,
                events.intern(row.try_get_unchecked(1)?),
                Totals::read(row)?,
            )))
        },
    );

    let overrides_sql = format!(
        "{OVERRIDE_SELECT} AND {}",
        scope.pick("o.environment_id = $1", "o.company_id = ANY($1)")
    );
    let overrides = rows_of(
        pool,
        permits,
        scope.bind(sqlx::query(&overrides_sql)),
        |row| {
            let o = OverrideRow::from_row(row)?;
            let Some(slot) = slots.get(&o.company_id) else {
                return Ok(None);
            };
            let candidate = o.values.candidate(
                Source::Override { override_id: o.id },
                o.feature_key,
                o.expiration_date,
            );
            Ok(Some((slot, o.feature_id.into_boxed_str(), candidate)))
        },
    );

    let (keys, memberships, grants, counters, overrides) =
        tokio::try_join!(keys, memberships, grants, counters, overrides)?;
    for (slot, pair) in keys {
        companies[slot].keys.push(pair);
    }
    for m in memberships {
        let c = &mut companies[m.slot];
        let plan_id = m.membership.plan_id.clone();
        if m.membership.is_base {
            c.context.base_plan_id = Some(plan_id.clone());
            c.context.billing_anchor = m.period_start;
            c.context.plan_ids.insert(0, plan_id);
        } else {
            c.context.plan_ids.push(plan_id);
        }
        c.memberships.push(m.membership);
    }
    for (slot, grant) in grants {
        companies[slot].context.credit_grants.push(grant);
    }
    let now = Utc::now();
    for (slot, event, totals) in counters {
        companies[slot]
            .context
            .usage
            .extend(totals.counters(&event, now));
    }
    for (slot, feature_id, candidate) in overrides {
        companies[slot].overrides.push((feature_id, candidate));
    }
    Ok(companies.into_iter().map(CompanyParts::finish).collect())
}

pub async fn company(
    pool: &PgPool,
    environment_id: &str,
    id: &str,
) -> Result<Option<CompanyState>, sqlx::Error> {
    let ids = [id.to_string()];
    Ok(companies(pool, environment_id, &ids).await?.pop())
}

/// Several companies in six queries, whatever their number (a reconcile page, a batch of
/// notifications). Companies that do not exist are absent.
pub async fn companies(
    pool: &PgPool,
    environment_id: &str,
    ids: &[String],
) -> Result<Vec<CompanyState>, sqlx::Error> {
    let scope = Scope::Ids(environment_id, ids);
    load_companies(pool, &load_permits(pool, scope), scope).await
}

/// Every company and user of an environment.
pub async fn environment(
    pool: &PgPool,
    environment_id: &str,
) -> Result<(Vec<CompanyState>, Vec<UserState>), sqlx::Error> {
    let scope = Scope::Environment(environment_id);
    let permits = load_permits(pool, scope);
    tokio::try_join!(
        load_companies(pool, &permits, scope),
        load_users(pool, &permits, scope)
    )
}

async fn load_users(
    pool: &PgPool,
    permits: &Semaphore,
    scope: Scope<'_>,
) -> Result<Vec<UserState>, sqlx::Error> {
    let make = |id, traits| UserState {
        keys: Box::default(),
        context: engine::UserContext { id, traits },
    };
    let (slots, mut users) = objects(pool, permits, "users", scope, make).await?;
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT user_id, key, value FROM user_keys WHERE {} ORDER BY created_at, key",
        scope.pick("environment_id = $1", "user_id = ANY($1)")
    );
    let mut names = Interner::default();
    let keys = rows_of(pool, permits, scope.bind(sqlx::query(&sql)), |row| {
        key_row(row, &slots, &mut names)
    })
    .await?;
    let mut by_user: Vec<Vec<KeyPair>> = vec![Vec::new(); users.len()];
    for (slot, pair) in keys {
        by_user[slot].push(pair);
    }
    for (user, keys) in users.iter_mut().zip(by_user) {
        user.keys = keys.into_boxed_slice();
    }
    Ok(users)
}

pub async fn user(
    pool: &PgPool,
    environment_id: &str,
    id: &str,
) -> Result<Option<UserState>, sqlx::Error> {
    let ids = [id.to_string()];
    let scope = Scope::Ids(environment_id, &ids);
    Ok(load_users(pool, &load_permits(pool, scope), scope)
        .await?
        .pop())
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
