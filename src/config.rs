//! Layered configuration: embedded defaults → `--config FILE` → `ENTITLED_<SECTION>__<KEY>`
//! environment variables, with `DATABASE_URL` overriding `database.url` from any layer.
//!
//! Loading has no side effects; `Config::validate` names the offending key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

/// The defaults, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

const ENV_PREFIX: &str = "ENTITLED_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"[redacted]\"")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub environments: Vec<EnvironmentConfig>,
    pub schedule: ScheduleConfig,
    pub insights: InsightsConfig,
    pub webhooks: WebhooksConfig,
    pub stripe: StripeConfig,
    pub console: ConsoleConfig,
    pub datastream: DatastreamConfig,
}

/// The admin console (`console/`), served at `/console`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Session cookies carry `Secure` (serve the console over HTTPS).
    pub secure_cookies: bool,
    /// A session unused for this long is signed out.
    pub session_idle_minutes: u32,
}

/// The datastream the SDKs evaluate flags from (`datastream/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastreamConfig {
    /// Open connections per API key; one more is refused with 429 before the upgrade.
    pub max_connections_per_key: usize,
    /// Messages queued for one connection; a consumer that falls this far behind is closed
    /// (1008) rather than buffered without bound.
    pub send_queue: usize,
}

/// The Stripe inbox workers (`stripe/worker.rs`), for every environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// Inbox events a worker claims and applies in one transaction.
    pub batch_size: usize,
    /// Inbox workers per process (at most half of `database.max_connections` run).
    pub workers: usize,
}

/// Outbound webhooks (`outbound/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow endpoints on loopback and private addresses (tests, local development).
    pub allow_private_targets: bool,
    /// One delivery attempt, connecting included.
    pub timeout_secs: u64,
    /// Seconds before each retry after a failed attempt (each ±20% at random); after the
    /// last, the message is given up (`failure`).
    pub retry_schedule_secs: Vec<u64>,
    /// Deliveries in flight per process.
    pub concurrency: usize,
    /// `entitlement.limit.warning` fires when usage reaches this share of the allocation.
    pub limit_warning_percent: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsightsConfig {
    /// How often each replica adds its in-memory check counts to Postgres.
    pub check_flush_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub body_limit_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    pub key: String,
    pub name: String,
    pub stripe_api_key: Secret,
    pub stripe_api_base: String,
    pub stripe_webhook_secrets: Vec<Secret>,
    pub stripe_webhook_tolerance_secs: u64,
    pub stripe_max_requests_per_sec: u32,
    /// How long one Stripe API request may take before it counts as failed (and retried).
    pub stripe_timeout_secs: u64,
    pub stripe_refetch_on_webhook: bool,
    pub stripe_customer_metadata_keys: Vec<String>,
    pub fallback_plan: String,
    /// Usage billed through Stripe meters: `0` sends one meter event per billable track
    /// event; `N` sums a company's units per meter over `N`-second windows.
    pub stripe_meter_flush_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub reconcile: String,
    pub expire_overrides: String,
    pub grant_credits: String,
    pub retry_inbox: String,
}

impl Config {
    /// Loads the layered configuration from the defaults, an optional file and the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let file_text = match file {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            )),
            None => None,
        };
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::from_layers(
            file_text.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
            &vars,
        )
    }

    /// Pure form of [`Config::load`]: the file as `(path, text)` and the environment as pairs.
    pub fn from_layers(
        file: Option<(&str, &str)>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let defaults: toml::Table =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: "<embedded defaults>".into(),
                    message: e.to_string(),
                })?;
        // Every environment a user declares starts from the default environment's values.
        let env_template = defaults
            .get("environments")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();

        let mut merged = defaults;
        if let Some((path, text)) = file {
            let mut layer: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.into(),
                        message: e.to_string(),
                    })?;
            if let Some(toml::Value::Array(envs)) = layer.get_mut("environments") {
                for item in envs.iter_mut() {
                    if let toml::Value::Table(t) = item {
                        let mut full = env_template.clone();
                        merge_tables(&mut full, std::mem::take(t));
                        *t = full;
                    }
                }
            }
            merge_tables(&mut merged, layer);
        }

        let mut database_url = None;
        for (name, value) in env {
            if name == "DATABASE_URL" {
                database_url = Some(value.clone());
                continue;
            }
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.len() < 2 || path.iter().any(|s| s.is_empty()) {
                continue;
            }
            set_path(&mut merged, &path, parse_env_value(value), &env_template).map_err(|msg| {
                ConfigError::Invalid(format!("environment variable {name}: {msg}"))
            })?;
        }
        if let Some(url) = database_url {
            if let Some(toml::Value::Table(db)) = merged.get_mut("database") {
                db.insert("url".into(), toml::Value::String(url));
            }
        }

        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|e| ConfigError::Invalid(format!("{}: {}", e.path(), e.inner().message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "server.listen = {:?} is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return invalid("server.body_limit_bytes must be at least 1024".into());
        }
        if self.datastream.max_connections_per_key == 0 {
            return invalid("datastream.max_connections_per_key must be at least 1".into());
        }
        if self.datastream.send_queue == 0 {
            return invalid("datastream.send_queue must be at least 1".into());
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections must be at least 1".into());
        }
        if self.database.acquire_timeout_secs == 0 {
            return invalid("database.acquire_timeout_secs must be at least 1".into());
        }
        if self.database.url.is_empty() {
            return invalid("database.url is empty".into());
        }
        if self.insights.check_flush_secs == 0 {
            return invalid("insights.check_flush_secs must be at least 1".into());
        }
        if !(1..=43_200).contains(&self.console.session_idle_minutes) {
            return invalid("console.session_idle_minutes must be between 1 and 43200".into());
        }
        if self.environments.is_empty() {
            return invalid("environments: at least one environment is required".into());
        }
        if !(1..=300).contains(&self.webhooks.timeout_secs) {
            return invalid("webhooks.timeout_secs must be between 1 and 300".into());
        }
        if !(1..=99).contains(&self.webhooks.limit_warning_percent) {
            return invalid("webhooks.limit_warning_percent must be between 1 and 99".into());
        }
        if self.webhooks.concurrency == 0 || self.webhooks.concurrency > 1024 {
            return invalid("webhooks.concurrency must be between 1 and 1024".into());
        }
        if let Some(i) = self
            .webhooks
            .retry_schedule_secs
            .iter()
            .position(|s| *s == 0 || *s > 7 * 86_400)
        {
            return invalid(format!(
                "webhooks.retry_schedule_secs[{i}] must be between 1 and 604800 seconds"
            ));
        }
        for (key, expr) in [
            ("reconcile", &self.schedule.reconcile),
            ("expire_overrides", &self.schedule.expire_overrides),
            ("grant_credits", &self.schedule.grant_credits),
            ("retry_inbox", &self.schedule.retry_inbox),
        ] {
            if !expr.trim().is_empty() {
                parse_schedule(key, expr).map_err(ConfigError::Invalid)?;
            }
        }
        let mut seen = HashSet::new();
        for (i, env) in self.environments.iter().enumerate() {
            let valid_key = !env.key.is_empty()
                && env.key.len() <= 63
                && env
                    .key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
                && !env.key.starts_with(['-', '_']);
            if !valid_key {
                return invalid(format!(
                    "environments[{i}].key = {:?}: use lowercase letters, digits, '-' and '_'",
                    env.key
                ));
            }
            if !seen.insert(env.key.as_str()) {
                return invalid(format!(
                    "environments[{i}].key = {:?} is used twice",
                    env.key
                ));
            }
            if env.name.trim().is_empty() {
                return invalid(format!("environments[{i}].name is empty"));
            }
            if env.stripe_timeout_secs == 0 {
                return invalid(format!(
                    "environments[{i}].stripe_timeout_secs must be at least 1"
                ));
            }
            if env.stripe_max_requests_per_sec == 0 {
                return invalid(format!(
                    "environments[{i}].stripe_max_requests_per_sec must be at least 1"
                ));
            }
        }
        if !(1..=10_000).contains(&self.stripe.batch_size) {
            return invalid(format!(
                "stripe.batch_size = {}: must be 1 to 10000",
                self.stripe.batch_size
            ));
        }
        if !(1..=64).contains(&self.stripe.workers) {
            return invalid(format!(
                "stripe.workers = {}: must be 1 to 64",
                self.stripe.workers
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // validate() guarantees this parses.
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn default_environment(&self) -> &EnvironmentConfig {
        &self.environments[0]
    }

    pub fn environment(&self, key: &str) -> Option<&EnvironmentConfig> {
        self.environments.iter().find(|e| e.key == key)
    }
}

/// Deep-merges `layer` into `base`: tables merge key by key, everything else is replaced.
fn merge_tables(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge_tables(b, l),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Environment values are typed when they read as TOML (`20`, `true`, `["a", "b"]`),
/// otherwise taken as strings (`postgres://…`, `0 */30 * * * *`).
fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            )
            | Some(v @ toml::Value::Array(_)) => v,
            Some(toml::Value::String(s)) => toml::Value::String(s),
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Sets `path` (e.g. `["server", "listen"]` or `["environments", "0", "fallback_plan"]`).
fn set_path(
    root: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    env_template: &toml::Table,
) -> Result<(), String> {
    let (head, rest) = path.split_first().ok_or("empty path")?;
    if rest.is_empty() {
        root.insert(head.clone(), value);
        return Ok(());
    }
    let entry = root
        .entry(head.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => set_path(t, rest, value, env_template),
        toml::Value::Array(items) => {
            let index: usize = rest[0]
                .parse()
                .map_err(|_| format!("{head} is a list: use {head}__<index>__<key>"))?;
            if index > items.len() {
                return Err(format!("{head}__{index}: no such entry"));
            }
            if index == items.len() {
                items.push(toml::Value::Table(env_template.clone()));
            }
            match (&mut items[index], &rest[1..]) {
                (toml::Value::Table(t), tail) if !tail.is_empty() => {
                    set_path(t, tail, value, env_template)
                }
                (slot, []) => {
                    *slot = value;
                    Ok(())
                }
                _ => Err(format!("{head}__{index} is not a table")),
            }
        }
        _ => Err(format!("{head} is not a section")),
    }
}

/// Parses a six-field cron expression (with seconds), naming the key on error.
pub fn parse_schedule(key: &str, expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| {
        format!("schedule.{key} = {expr:?} is not a cron expression with seconds: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::from_layers(None, &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.body_limit_bytes, 1_048_576);
        assert_eq!(c.environments.len(), 1);
        assert_eq!(c.environments[0].key, "development");
        assert_eq!(
            c.environments[0].stripe_customer_metadata_keys,
            ["company_id"]
        );
        assert_eq!(c.schedule.expire_overrides, "*/10 * * * * *");
        assert_eq!(c.stripe.batch_size, 500);
        assert_eq!(c.stripe.workers, 2);
    }

    #[test]
    fn file_then_env_then_database_url() {
        let file = r#"
            [server]
            listen = "0.0.0.0:9000"
            [database]
            url = "postgres://file/db"
            [[environments]]
            key = "production"
            name = "Production"
            fallback_plan = "free"
            [[environments]]
            key = "staging"
            name = "Staging"
        "#;
        let c = Config::from_layers(
            Some(("x.toml", file)),
            &env(&[
                ("ENTITLED_SERVER__LISTEN", "127.0.0.1:7000"),
                ("ENTITLED_DATABASE__MAX_CONNECTIONS", "7"),
                (
                    "ENTITLED_ENVIRONMENTS__1__STRIPE_WEBHOOK_SECRETS",
                    r#"["whsec_a","whsec_b"]"#,
                ),
                ("ENTITLED_SCHEDULE__RECONCILE", ""),
                ("DATABASE_URL", "postgres://env/db"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7000");
        assert_eq!(
            c.server.body_limit_bytes, 1_048_576,
            "untouched defaults survive"
        );
        assert_eq!(c.database.max_connections, 7);
        assert_eq!(c.database.url.expose(), "postgres://env/db");
        assert_eq!(c.environments.len(), 2);
        assert_eq!(c.environments[0].key, "production");
        assert_eq!(c.environments[0].fallback_plan, "free");
        // A declared environment inherits the defaults it does not set.
        assert_eq!(c.environments[1].stripe_webhook_tolerance_secs, 300);
        assert_eq!(c.environments[1].stripe_webhook_secrets.len(), 2);
        assert_eq!(c.schedule.reconcile, "");
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_layers(Some(("x.toml", "[server]\nlisten = 5")), &[]).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err =
            Config::from_layers(Some(("x.toml", "[server]\nlisten = \"nope\"")), &[]).unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err =
            Config::from_layers(Some(("x.toml", "[server]\nlistn = \"a\"")), &[]).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err = Config::from_layers(
            Some((
                "x.toml",
                "[[environments]]\nkey='a'\nname='A'\n[[environments]]\nkey='a'\nname='B'",
            )),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("environments[1].key"), "{err}");
        let err = Config::from_layers(
            None,
            &env(&[("ENTITLED_SCHEDULE__GRANT_CREDITS", "every minute")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("schedule.grant_credits"), "{err}");
        let err = Config::from_layers(Some(("x.toml", "[server")), &[]).unwrap_err();
        assert!(err.to_string().contains("x.toml"), "{err}");
        let err = Config::from_layers(
            None,
            &env(&[("ENTITLED_ENVIRONMENTS__0__STRIPE_TIMEOUT_SECS", "0")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("environments[0].stripe_timeout_secs"),
            "{err}"
        );
        let err =
            Config::from_layers(None, &env(&[("ENTITLED_STRIPE__BATCH_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("stripe.batch_size"), "{err}");
        let c = Config::from_layers(None, &env(&[("ENTITLED_STRIPE__BATCH_SIZE", "64")])).unwrap();
        assert_eq!(c.stripe.batch_size, 64);
        let err =
            Config::from_layers(None, &env(&[("ENTITLED_STRIPE__WORKERS", "65")])).unwrap_err();
        assert!(err.to_string().contains("stripe.workers = 65"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::from_layers(
            None,
            &env(&[("ENTITLED_ENVIRONMENTS__0__STRIPE_API_KEY", "sk_test_123")]),
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk_test_123"));
        assert!(!debug.contains("postgres://postgres@"));
        assert_eq!(c.environments[0].stripe_api_key.expose(), "sk_test_123");
    }
}
