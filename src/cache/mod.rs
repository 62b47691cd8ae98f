//! The in-memory snapshot that checks read.
//!
//! Checks never touch Postgres. The snapshot is loaded whole at start and then refreshed
//! piece by piece by `crate::changes`, which hears of every committed write (this process's
//! own right after commit, other replicas' through LISTEN/NOTIFY). The SQL that reads the
//! pieces is `store::snapshot`.

mod check;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use sqlx::PgPool;

use crate::config::EnvironmentConfig;
use crate::engine;
use crate::store;
use crate::store::environments::Environment;
use crate::store::snapshot as load;

pub use check::{CheckOutcome, Found, KeyMap, Subject};
pub use load::{
    ApiKeyInfo, Catalog, CompanyState, KeyPair, Membership, PlanEntitlementInfo, PlanInfo,
    UserState,
};

/// What the key index needs of a company or a user.
trait Keyed {
    fn id(&self) -> &Arc<str>;
    fn keys(&self) -> &[load::KeyPair];
}

impl Keyed for CompanyState {
    fn id(&self) -> &Arc<str> {
        &self.context.id
    }
    fn keys(&self) -> &[load::KeyPair] {
        &self.keys
    }
}

impl Keyed for UserState {
    fn id(&self) -> &Arc<str> {
        &self.context.id
    }
    fn keys(&self) -> &[load::KeyPair] {
        &self.keys
    }
}

/// A key pair as the index holds it: `key`, NUL, `value` (Postgres text never holds NUL, so
/// the split is unambiguous).
fn key_entry(out: &mut String, key: &str, value: &str) {
    out.clear();
    out.push_str(key);
    out.push('\0');
    out.push_str(value);
}

thread_local! {
    /// A check's key lookup writes the pair here rather than allocating.
    static KEY_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[derive(Debug)]
struct Index<T> {
    /// Keyed by the object's own id (the same allocation as its context's).
    by_id: HashMap<Arc<str>, Arc<T>>,
    /// [`key_entry`] → the id of the object with that key.
    by_key: HashMap<Box<str>, Arc<str>>,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<T: Keyed> Index<T> {
    fn with_capacity(n: usize) -> Self {
        Index {
            by_id: HashMap::with_capacity(n),
            by_key: HashMap::with_capacity(n),
        }
    }

    /// Replaces (or with `None`, removes) object `id` and its key entries.
    fn put(&mut self, id: &str, value: Option<T>) {
        let mut entry = String::new();
        if let Some(old) = self.by_id.remove(id) {
            for (k, v) in old.keys() {
                key_entry(&mut entry, k, v);
                if self
                    .by_key
                    .get(entry.as_str())
                    .is_some_and(|owner| &**owner == id)
                {
                    self.by_key.remove(entry.as_str());
                }
            }
        }
        if let Some(value) = value {
            self.insert(value, &mut entry);
        }
    }

    fn insert(&mut self, value: T, entry: &mut String) {
        let id = value.id().clone();
        for (k, v) in value.keys() {
            key_entry(entry, k, v);
            self.by_key.insert(Box::from(entry.as_str()), id.clone());
        }
        self.by_id.insert(id, Arc::new(value));
    }

    fn get(&self, id: &str) -> Option<Arc<T>> {
        self.by_id.get(id).cloned()
    }

    fn find(&self, keys: &KeyMap) -> Option<(String, Arc<T>)> {
        KEY_BUF.with_borrow_mut(|entry| {
            keys.iter().find_map(|(k, v)| {
                key_entry(entry, k, v);
                let id = self.by_key.get(entry.as_str())?;
                Some((id.to_string(), self.get(id)?))
            })
        })
    }
}

/// Builds an index of `objects` and swaps it into `slot`, returning the old one for the
/// caller to drop outside the lock.
fn swap_in<T: Keyed>(slot: &RwLock<Index<T>>, objects: Vec<T>) -> Index<T> {
    let mut idx = Index::with_capacity(objects.len());
    let mut entry = String::new();
    for object in objects {
        idx.insert(object, &mut entry);
    }
    std::mem::replace(&mut *slot.write().unwrap_or_else(|e| e.into_inner()), idx)
}

/// One environment's companies and users.
pub struct EnvCache {
    pub environment: Environment,
    pub config: EnvironmentConfig,
    companies: RwLock<Index<CompanyState>>,
    users: RwLock<Index<UserState>>,
}

/// What an API key grants: the environment it reads and writes, and whether it only reads.
pub struct Grant {
    pub env: Arc<EnvCache>,
    /// The key's id (or, for the console, who signed in).
    pub key_id: String,
    pub readonly: bool,
}

/// The snapshot of everything checks read, per process.
pub struct Cache {
    pool: PgPool,
    catalog: ArcSwap<Catalog>,
    /// Key hash → what the key grants, its environment resolved at load.
    api_keys: ArcSwap<HashMap<[u8; 32], Arc<Grant>>>,
    /// Environment id → the request types its active outbound webhooks subscribe to:
    /// writers build messages only for these. Looked up by `&str`, without allocating.
    webhook_types: ArcSwap<HashMap<String, std::collections::HashSet<String>>>,
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
    ) -> store::Result<Arc<Cache>> {
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
            pool,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            api_keys: ArcSwap::from_pointee(HashMap::new()),
            webhook_types: ArcSwap::from_pointee(Default::default()),
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

    pub fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    pub fn env(&self, id: &str) -> Option<&Arc<EnvCache>> {
        self.envs.get(id)
    }

    /// The environment and its company `company_id`, when both are known.
    pub fn env_and_company(
        &self,
        env_id: &str,
        company_id: &str,
    ) -> Option<(&Arc<EnvCache>, Arc<CompanyState>)> {
        let env = self.env(env_id)?;
        Some((env, env.company(company_id)?))
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

    /// Per environment id, `stripe_meter_flush_secs` where it is not 0.
    pub fn meter_flush_secs(&self) -> HashMap<String, u64> {
        self.envs
            .values()
            .filter(|e| e.config.stripe_meter_flush_secs > 0)
            .map(|e| (e.environment.id.clone(), e.config.stripe_meter_flush_secs))
            .collect()
    }

    /// Whether an active outbound webhook of the environment subscribes to `request_type`.
    pub fn webhooks_want(&self, environment_id: &str, request_type: &str) -> bool {
        self.webhook_types
            .load()
            .get(environment_id)
            .is_some_and(|types| types.contains(request_type))
    }

    /// Reloads which request types the environments' webhooks subscribe to.
    pub async fn reload_webhook_types(&self) -> store::Result<()> {
        let mut types: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for (env, request_type) in store::webhooks::subscribed_types(&self.pool).await? {
            types.entry(env).or_default().insert(request_type);
        }
        self.webhook_types.store(Arc::new(types));
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// What the key with this hash grants: one reference count per request, no copy.
    pub fn api_key(&self, hash: &[u8; 32]) -> Option<Arc<Grant>> {
        self.api_keys.load().get(hash).cloned()
    }

    /// Reloads everything: at start and whenever notifications may have been missed.
    ///
    /// Checks keep answering from the old snapshot throughout: the new indexes are read and
    /// built without a lock, swapped in under a write lock held for the swap alone, and the
    /// old ones are dropped after it is released.
    pub async fn reload_all(&self) -> store::Result<()> {
        self.reload_api_keys().await?;
        self.reload_catalog().await?;
        self.reload_webhook_types().await?;
        for env in self.envs.values() {
            let (companies, users) = load::environment(&self.pool, &env.environment.id).await?;
            let old = (
                swap_in(&env.companies, companies),
                swap_in(&env.users, users),
            );
            // Freeing the old snapshot (a second or so at a million companies) is no part of
            // the reload, and must not hold a runtime worker: a blocking thread does it.
            tokio::task::spawn_blocking(move || drop(old));
        }
        Ok(())
    }

    /// Reloads features, flags, plans and entitlements.
    pub async fn reload_catalog(&self) -> store::Result<()> {
        let _guard = self.catalog_lock.lock().await;
        let catalog = load::catalog(&self.pool).await?;
        self.catalog.store(Arc::new(catalog));
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// Reloads the API keys.
    pub async fn reload_api_keys(&self) -> store::Result<()> {
        let _guard = self.catalog_lock.lock().await;
        let keys = load::api_keys(&self.pool).await?;
        // A key of an environment no longer configured grants nothing.
        let grants = keys
            .into_iter()
            .filter_map(|(hash, info)| {
                let env = self.envs.get(&info.environment_id)?.clone();
                let grant = Grant {
                    env,
                    key_id: info.id,
                    readonly: info.readonly,
                };
                Some((hash, Arc::new(grant)))
            })
            .collect();
        self.api_keys.store(Arc::new(grants));
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// Applies new absolute usage counter values of one company (no database read).
    pub fn apply_usage(
        &self,
        environment_id: &str,
        company_id: &str,
        counters: &[engine::UsageCounter],
    ) {
        if let Some(env) = self.envs.get(environment_id) {
            env.apply_usage(company_id, counters);
        }
    }

    /// Reloads one company's credit grants.
    pub async fn reload_credits(
        &self,
        environment_id: &str,
        company_id: &str,
    ) -> store::Result<()> {
        let Some(env) = self.envs.get(environment_id) else {
            return Ok(());
        };
        let _guard = self.shard(company_id).lock().await;
        let grants = load::credit_grants(&self.pool, company_id).await?;
        let mut companies = env.companies.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = companies.by_id.get_mut(company_id) {
            Arc::make_mut(entry).context.credit_grants = grants;
        }
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// Reloads one user (or forgets a deleted one).
    pub async fn reload_user(&self, environment_id: &str, id: &str) -> store::Result<()> {
        let Some(env) = self.envs.get(environment_id) else {
            return Ok(());
        };
        let _guard = self.shard(id).lock().await;
        let state = load::user(&self.pool, environment_id, id).await?;
        env.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(id, state);
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// Reloads one company (or forgets a deleted one).
    pub async fn reload_company(&self, environment_id: &str, id: &str) -> store::Result<()> {
        let Some(env) = self.envs.get(environment_id) else {
            return Ok(());
        };
        let _guard = self.shard(id).lock().await;
        let state = load::company(&self.pool, environment_id, id).await?;
        let mut companies = env.companies.write().unwrap_or_else(|e| e.into_inner());
        // Usage may have moved on in memory while we read: keep the newer counters.
        let state = state.map(|mut s| {
            if let Some(current) = companies.get(id) {
                engine::merge_usage(&mut s.context.usage, &current.context.usage);
            }
            s
        });
        companies.put(id, state);
        crate::metrics::CACHE_RELOADS.inc();
        Ok(())
    }

    /// Reloads several companies of one environment with six queries.
    pub async fn reload_companies(
        &self,
        environment_id: &str,
        ids: &[String],
    ) -> store::Result<()> {
        if let [id] = ids {
            return self.reload_company(environment_id, id).await;
        }
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
        let mut states: HashMap<Arc<str>, CompanyState> =
            load::companies(&self.pool, environment_id, ids)
                .await?
                .into_iter()
                .map(|s| (s.context.id.clone(), s))
                .collect();
        let mut companies = env.companies.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let state = states.remove(id.as_str()).map(|mut s| {
                if let Some(current) = companies.get(id) {
                    engine::merge_usage(&mut s.context.usage, &current.context.usage);
                }
                s
            });
            companies.put(id, state);
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

    pub fn user(&self, id: &str) -> Option<Arc<UserState>> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).get(id)
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
        engine::merge_usage(&mut Arc::make_mut(entry).context.usage, counters);
    }

    pub fn company_count(&self) -> usize {
        self.companies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, keys: &[(&str, &str)]) -> UserState {
        UserState {
            keys: keys
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            context: engine::UserContext {
                id: id.into(),
                traits: Default::default(),
            },
        }
    }

    fn found(idx: &Index<UserState>, key: &str, value: &str) -> Option<String> {
        idx.find(&vec![(key.to_string(), value.to_string())])
            .map(|(id, state)| {
                assert_eq!(&*state.context.id, id);
                id
            })
    }

    #[test]
    fn keys_follow_puts_and_removals() {
        let mut idx = Index::default();
        idx.put("u1", Some(user("u1", &[("email", "a@x"), ("id", "1")])));
        idx.put("u2", Some(user("u2", &[("id", "2")])));
        assert_eq!(found(&idx, "email", "a@x").as_deref(), Some("u1"));
        assert_eq!(found(&idx, "id", "2").as_deref(), Some("u2"));
        // A key is a name and a value: neither alone finds anything.
        assert_eq!(found(&idx, "email", "1"), None);
        assert_eq!(found(&idx, "id\0a", "x"), None);

        // u1 drops its email; u2 takes it over.
        idx.put("u1", Some(user("u1", &[("id", "1")])));
        idx.put("u2", Some(user("u2", &[("id", "2"), ("email", "a@x")])));
        assert_eq!(found(&idx, "email", "a@x").as_deref(), Some("u2"));

        // Removing u1 leaves the keys u2 owns.
        idx.put("u1", None);
        assert_eq!(found(&idx, "id", "1"), None);
        assert!(idx.get("u1").is_none());
        assert_eq!(found(&idx, "email", "a@x").as_deref(), Some("u2"));
        assert_eq!(idx.by_key.len(), 2);
    }
}
