//! The in-memory snapshot that checks read, and its invalidation.
//!
//! Checks never touch Postgres. Every write sends a `pg_notify` inside its transaction (so it
//! is delivered only if the write commits); every replica's listener reloads what changed.
//! The writing process also refreshes synchronously after commit, so a client reads its own
//! writes. A lost listener connection triggers a full reload on reconnect.

mod check;
mod listener;
mod load;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use sqlx::{PgConnection, PgPool};

use crate::config::EnvironmentConfig;
use crate::db::Environment;
use crate::engine::{self, Candidate};

pub use check::{CheckOutcome, KeyMap};
pub use listener::{spawn_listener, subscribe};
pub use load::hash_key;

/// The Postgres channel carrying invalidations.
pub const CHANNEL: &str = "entitled_changes";

/// What a write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Features, flags, rules, plans or entitlements.
    Catalog,
    Company {
        environment_id: String,
        id: String,
    },
    User {
        environment_id: String,
        id: String,
    },
    ApiKeys,
    /// A company's credit grants changed (a grant, a burn, a zero-out).
    Credits {
        environment_id: String,
        company_id: String,
    },
    /// New absolute values of a company's usage counters, applied without reading Postgres.
    Usage {
        environment_id: String,
        company_id: String,
        counters: Vec<engine::UsageCounter>,
    },
}

/// The wire form of a usage counter in a notification.
#[derive(serde::Serialize, serde::Deserialize)]
struct UsagePayload {
    e: String,
    c: String,
    /// `[event, period, month_reset, window_start (unix seconds), count, version]`
    u: Vec<(
        String,
        engine::MetricPeriod,
        engine::MonthReset,
        i64,
        i64,
        i64,
    )>,
}

/// Keeps notification payloads under Postgres's 8000-byte limit.
pub const MAX_COUNTERS_PER_NOTIFICATION: usize = 40;

impl Change {
    fn encode(&self, origin: &str) -> String {
        match self {
            Change::Catalog => format!("{origin}|catalog"),
            Change::ApiKeys => format!("{origin}|api_keys"),
            Change::Company { environment_id, id } => {
                format!("{origin}|company|{environment_id}|{id}")
            }
            Change::User { environment_id, id } => format!("{origin}|user|{environment_id}|{id}"),
            Change::Credits {
                environment_id,
                company_id,
            } => format!("{origin}|credits|{environment_id}|{company_id}"),
            Change::Usage {
                environment_id,
                company_id,
                counters,
            } => {
                let payload = UsagePayload {
                    e: environment_id.clone(),
                    c: company_id.clone(),
                    u: counters
                        .iter()
                        .map(|c| {
                            (
                                c.event.clone(),
                                c.period,
                                c.month_reset,
                                c.window_start.timestamp(),
                                c.count,
                                c.version,
                            )
                        })
                        .collect(),
                };
                let json = serde_json::to_string(&payload).unwrap_or_default();
                format!("{origin}|usage|{json}")
            }
        }
    }

    fn decode(payload: &str) -> Option<(&str, Change)> {
        if let Some((origin, rest)) = payload.split_once('|') {
            if let Some(json) = rest.strip_prefix("usage|") {
                let p: UsagePayload = serde_json::from_str(json).ok()?;
                let counters =
                    p.u.into_iter()
                        .filter_map(|(event, period, month_reset, start, count, version)| {
                            Some(engine::UsageCounter {
                                event,
                                period,
                                month_reset,
                                window_start: chrono::DateTime::from_timestamp(start, 0)?,
                                count,
                                version,
                            })
                        })
                        .collect();
                return Some((
                    origin,
                    Change::Usage {
                        environment_id: p.e,
                        company_id: p.c,
                        counters,
                    },
                ));
            }
        }
        let mut parts = payload.split('|');
        let origin = parts.next()?;
        let change = match (parts.next()?, parts.next(), parts.next()) {
            ("catalog", None, None) => Change::Catalog,
            ("api_keys", None, None) => Change::ApiKeys,
            ("company", Some(env), Some(id)) => Change::Company {
                environment_id: env.into(),
                id: id.into(),
            },
            ("user", Some(env), Some(id)) => Change::User {
                environment_id: env.into(),
                id: id.into(),
            },
            ("credits", Some(env), Some(id)) => Change::Credits {
                environment_id: env.into(),
                company_id: id.into(),
            },
            _ => return None,
        };
        Some((origin, change))
    }
}

/// Queues `change` for every replica; delivered when the surrounding transaction commits.
pub async fn notify(
    conn: &mut PgConnection,
    origin: &str,
    change: &Change,
) -> Result<(), sqlx::Error> {
    notify_all(conn, origin, std::slice::from_ref(change)).await
}

/// Queues every change in one statement; Postgres delivers them in order, after commit.
pub async fn notify_all(
    conn: &mut PgConnection,
    origin: &str,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = changes.iter().map(|c| c.encode(origin)).collect();
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS t(p)")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(conn)
        .await?;
    Ok(())
}

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
    pub plans: HashMap<String, PlanInfo>,
    pub plan_ids_by_key: HashMap<String, String>,
    /// `(plan_id, feature_id)` → the entitlement as a candidate.
    pub entitlements: HashMap<(String, String), PlanEntitlementInfo>,
    /// Whether any credit type exists (when none does, nothing burns credits).
    pub credit_types_exist: bool,
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

#[derive(Debug)]
struct Entry<T> {
    keys: Vec<(String, String)>,
    value: Arc<T>,
}

#[derive(Debug)]
struct Index<T> {
    by_id: HashMap<String, Entry<T>>,
    by_key: HashMap<(String, String), String>,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<T> Index<T> {
    /// Replaces (or with `None`, removes) one object and its key entries.
    fn put(&mut self, id: &str, keys: Vec<(String, String)>, value: Option<T>) {
        if let Some(old) = self.by_id.remove(id) {
            for k in old.keys {
                if self.by_key.get(&k).is_some_and(|owner| owner == id) {
                    self.by_key.remove(&k);
                }
            }
        }
        if let Some(value) = value {
            for k in &keys {
                self.by_key.insert(k.clone(), id.to_string());
            }
            self.by_id.insert(
                id.to_string(),
                Entry {
                    keys,
                    value: Arc::new(value),
                },
            );
        }
    }

    fn get(&self, id: &str) -> Option<Arc<T>> {
        self.by_id.get(id).map(|e| e.value.clone())
    }

    fn find(&self, keys: &KeyMap) -> Option<(String, Arc<T>)> {
        keys.iter().find_map(|(k, v)| {
            let id = self.by_key.get(&(k.clone(), v.clone()))?;
            Some((id.clone(), self.get(id)?))
        })
    }
}

/// One environment's companies and users.
pub struct EnvCache {
    pub environment: Environment,
    pub config: EnvironmentConfig,
    companies: RwLock<Index<CompanyState>>,
    users: RwLock<Index<UserState>>,
}

/// The snapshot of everything checks read, per process.
pub struct Cache {
    origin: String,
    pool: PgPool,
    catalog: ArcSwap<Catalog>,
    api_keys: ArcSwap<HashMap<[u8; 32], ApiKeyInfo>>,
    envs: HashMap<String, Arc<EnvCache>>,
    env_ids_by_key: HashMap<String, String>,
    default_env_id: String,
    /// Serialises reloads of one object, so a slow reload cannot overwrite a newer one.
    refresh_locks: Vec<tokio::sync::Mutex<()>>,
    catalog_lock: tokio::sync::Mutex<()>,
}

const REFRESH_SHARDS: usize = 64;

impl Cache {
    /// Loads a full snapshot for the given environments.
    pub async fn load(
        pool: PgPool,
        environments: &[(Environment, EnvironmentConfig)],
    ) -> Result<Arc<Cache>, sqlx::Error> {
        let mut envs = HashMap::new();
        let mut env_ids_by_key = HashMap::new();
        for (env, config) in environments {
            env_ids_by_key.insert(env.key.clone(), env.id.clone());
            envs.insert(
                env.id.clone(),
                Arc::new(EnvCache {
                    environment: env.clone(),
                    config: config.clone(),
                    companies: RwLock::new(Index::default()),
                    users: RwLock::new(Index::default()),
                }),
            );
        }
        let cache = Arc::new(Cache {
            origin: crate::ids::new_id("inst"),
            pool,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            api_keys: ArcSwap::from_pointee(HashMap::new()),
            envs,
            env_ids_by_key,
            default_env_id: environments
                .first()
                .map(|(e, _)| e.id.clone())
                .unwrap_or_default(),
            refresh_locks: (0..REFRESH_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            catalog_lock: tokio::sync::Mutex::new(()),
        });
        cache.reload_all().await?;
        Ok(cache)
    }

    /// This process's id in notifications.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    pub fn env(&self, id: &str) -> Option<&Arc<EnvCache>> {
        self.envs.get(id)
    }

    /// Every configured environment.
    pub fn environments(&self) -> impl Iterator<Item = &Arc<EnvCache>> {
        self.envs.values()
    }

    pub fn env_by_key(&self, key: &str) -> Option<&Arc<EnvCache>> {
        self.env_ids_by_key
            .get(key)
            .and_then(|id| self.envs.get(id))
    }

    pub fn default_env(&self) -> Option<&Arc<EnvCache>> {
        self.envs.get(&self.default_env_id)
    }

    /// Environment id → plan id of each environment's `fallback_plan`, resolved now (the
    /// plan may have been created after start).
    pub fn fallback_plans(&self) -> HashMap<String, String> {
        let catalog = self.catalog();
        self.envs
            .values()
            .filter_map(|e| {
                let plan = catalog.plan_ids_by_key.get(&e.config.fallback_plan)?;
                Some((e.environment.id.clone(), plan.clone()))
            })
            .collect()
    }

    pub fn api_key(&self, hash: &[u8; 32]) -> Option<ApiKeyInfo> {
        self.api_keys.load().get(hash).cloned()
    }

    /// Reloads everything: at start and whenever notifications may have been missed.
    pub async fn reload_all(&self) -> Result<(), sqlx::Error> {
        self.reload(&Change::ApiKeys).await?;
        self.reload(&Change::Catalog).await?;
        for env in self.envs.values() {
            let (companies, users) = load::environment(&self.pool, &env.environment.id).await?;
            {
                let mut idx = Index::default();
                for (id, state) in companies {
                    idx.put(&id, state.keys.clone(), Some(state));
                }
                *env.companies.write().unwrap_or_else(|e| e.into_inner()) = idx;
            }
            let mut idx = Index::default();
            for (id, state) in users {
                idx.put(&id, state.keys.clone(), Some(state));
            }
            *env.users.write().unwrap_or_else(|e| e.into_inner()) = idx;
        }
        Ok(())
    }

    /// Reloads what `change` names from Postgres.
    #[tracing::instrument(skip_all, fields(change = ?change))]
    pub async fn reload(&self, change: &Change) -> Result<(), sqlx::Error> {
        match change {
            Change::Catalog => {
                let _guard = self.catalog_lock.lock().await;
                let catalog = load::catalog(&self.pool).await?;
                self.catalog.store(Arc::new(catalog));
            }
            Change::ApiKeys => {
                let _guard = self.catalog_lock.lock().await;
                let keys = load::api_keys(&self.pool).await?;
                self.api_keys.store(Arc::new(keys));
            }
            Change::Company { environment_id, id } => {
                let Some(env) = self.envs.get(environment_id) else {
                    return Ok(());
                };
                let _guard = self.shard(id).lock().await;
                let state = load::company(&self.pool, environment_id, id).await?;
                let keys = state.as_ref().map(|s| s.keys.clone()).unwrap_or_default();
                let mut companies = env.companies.write().unwrap_or_else(|e| e.into_inner());
                // Usage may have moved on in memory while we read: keep the newer counters.
                let state = state.map(|mut s| {
                    if let Some(current) = companies.get(id) {
                        merge_usage(&mut s.context.usage, &current.context.usage);
                    }
                    s
                });
                companies.put(id, keys, state);
            }
            Change::Usage {
                environment_id,
                company_id,
                counters,
            } => {
                if let Some(env) = self.envs.get(environment_id) {
                    env.apply_usage(company_id, counters);
                }
                return Ok(());
            }
            Change::Credits {
                environment_id,
                company_id,
            } => {
                let Some(env) = self.envs.get(environment_id) else {
                    return Ok(());
                };
                let _guard = self.shard(company_id).lock().await;
                let grants = load::credit_grants(&self.pool, company_id).await?;
                let mut companies = env.companies.write().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = companies.by_id.get_mut(company_id.as_str()) {
                    let mut state = (*entry.value).clone();
                    state.context.credit_grants = grants;
                    entry.value = Arc::new(state);
                }
            }
            Change::User { environment_id, id } => {
                let Some(env) = self.envs.get(environment_id) else {
                    return Ok(());
                };
                let _guard = self.shard(id).lock().await;
                let state = load::user(&self.pool, environment_id, id).await?;
                let keys = state.as_ref().map(|s| s.keys.clone()).unwrap_or_default();
                env.users
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(id, keys, state);
            }
        }
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// After a local commit: refresh now, so this process reads its own writes. Failures are
    /// logged; the notification will be retried by the listener's periodic full reload.
    pub async fn after_commit(&self, changes: &[Change]) {
        if let Err(e) = self.reload_changes(changes).await {
            tracing::warn!(error = %e, changes = changes.len(), "cache refresh after commit failed");
        }
    }

    /// Reloads what `changes` name: companies grouped per environment (a reconcile page, a
    /// burst of notifications: six queries, not six per company), the rest one by one.
    pub async fn reload_changes(&self, changes: &[Change]) -> Result<(), sqlx::Error> {
        let mut companies: HashMap<&str, Vec<String>> = HashMap::new();
        for change in changes {
            match change {
                Change::Company { environment_id, id } => {
                    companies
                        .entry(environment_id)
                        .or_default()
                        .push(id.clone());
                }
                other => self.reload(other).await?,
            }
        }
        for (environment_id, mut ids) in companies {
            ids.sort_unstable();
            ids.dedup();
            if let [id] = ids.as_slice() {
                self.reload(&Change::Company {
                    environment_id: environment_id.to_string(),
                    id: id.clone(),
                })
                .await?;
            } else {
                self.reload_companies(environment_id, &ids).await?;
            }
        }
        Ok(())
    }

    /// Reloads several companies of one environment with six queries.
    pub async fn reload_companies(
        &self,
        environment_id: &str,
        ids: &[String],
    ) -> Result<(), sqlx::Error> {
        let Some(env) = self.envs.get(environment_id) else {
            return Ok(());
        };
        // Hold every shard involved, in order, so no single reload interleaves with this one.
        let mut shards: Vec<usize> = ids.iter().map(|id| self.shard_index(id)).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guards = Vec::with_capacity(shards.len());
        for i in shards {
            guards.push(self.refresh_locks[i].lock().await);
        }
        let mut states = load::companies(&self.pool, environment_id, ids).await?;
        let mut companies = env.companies.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let state = states.remove(id).map(|mut s| {
                if let Some(current) = companies.get(id) {
                    merge_usage(&mut s.context.usage, &current.context.usage);
                }
                s
            });
            let keys = state.as_ref().map(|s| s.keys.clone()).unwrap_or_default();
            companies.put(id, keys, state);
        }
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    fn shard(&self, id: &str) -> &tokio::sync::Mutex<()> {
        &self.refresh_locks[self.shard_index(id)]
    }

    fn shard_index(&self, id: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        (h.finish() as usize) % REFRESH_SHARDS
    }
}

impl EnvCache {
    pub fn find_company(&self, keys: &KeyMap) -> Option<(String, Arc<CompanyState>)> {
        self.companies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .find(keys)
    }

    pub fn company(&self, id: &str) -> Option<Arc<CompanyState>> {
        self.companies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
    }

    pub fn find_user(&self, keys: &KeyMap) -> Option<(String, Arc<UserState>)> {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .find(keys)
    }

    /// Applies new absolute counter values (newest version wins; older windows are dropped).
    pub fn apply_usage(&self, company_id: &str, counters: &[engine::UsageCounter]) {
        let mut companies = self.companies.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = companies.by_id.get_mut(company_id) else {
            return; // not loaded yet: its full load reads the counters
        };
        let mut state = (*entry.value).clone();
        merge_usage(&mut state.context.usage, counters);
        entry.value = Arc::new(state);
    }

    pub fn company_count(&self) -> usize {
        self.companies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}

/// Merges `incoming` counters into `usage`: per event, period and reset, the newest window
/// wins, and within a window the highest version.
pub(crate) fn merge_usage(
    usage: &mut Vec<engine::UsageCounter>,
    incoming: &[engine::UsageCounter],
) {
    for new in incoming {
        let same = |c: &engine::UsageCounter| {
            c.event == new.event && c.period == new.period && c.month_reset == new.month_reset
        };
        match usage.iter_mut().find(|c| same(c)) {
            Some(old) => {
                let newer = new.window_start > old.window_start
                    || (new.window_start == old.window_start && new.version > old.version);
                if newer {
                    *old = new.clone();
                }
            }
            None => usage.push(new.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::Catalog,
            Change::ApiKeys,
            Change::Company {
                environment_id: "env_1".into(),
                id: "comp_1".into(),
            },
            Change::Credits {
                environment_id: "env_1".into(),
                company_id: "comp_1".into(),
            },
            Change::User {
                environment_id: "env_1".into(),
                id: "user_1".into(),
            },
        ] {
            let encoded = c.encode("inst_a");
            assert_eq!(Change::decode(&encoded), Some(("inst_a", c)));
        }
        assert_eq!(Change::decode("inst|bogus"), None);
        let usage = Change::Usage {
            environment_id: "env_1".into(),
            company_id: "comp_1".into(),
            counters: vec![counter("api|call", 0, 5, 2)],
        };
        assert_eq!(Change::decode(&usage.encode("i")), Some(("i", usage)));
    }

    fn counter(event: &str, start: i64, count: i64, version: i64) -> engine::UsageCounter {
        engine::UsageCounter {
            event: event.into(),
            period: engine::MetricPeriod::CurrentMonth,
            month_reset: engine::MonthReset::FirstOfMonth,
            window_start: chrono::DateTime::from_timestamp(start, 0).unwrap(),
            count,
            version,
        }
    }

    #[test]
    fn merging_keeps_the_newest_counter() {
        let mut usage = vec![counter("a", 100, 5, 3)];
        merge_usage(&mut usage, &[counter("a", 100, 4, 2)]); // older version: ignored
        assert_eq!(usage[0].count, 5);
        merge_usage(&mut usage, &[counter("a", 100, 9, 4)]);
        assert_eq!(usage[0].count, 9);
        merge_usage(&mut usage, &[counter("a", 50, 1, 9)]); // an earlier window: ignored
        assert_eq!(usage[0].count, 9);
        merge_usage(&mut usage, &[counter("a", 200, 1, 1)]); // a new window replaces
        assert_eq!((usage[0].count, usage.len()), (1, 1));
        merge_usage(&mut usage, &[counter("b", 200, 1, 1)]);
        assert_eq!(usage.len(), 2);
    }
}
