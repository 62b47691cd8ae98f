//! `entitled seed FILE`: loads a catalog (features, plans, entitlements) from JSON or TOML,
//! idempotently: objects are matched by `key`, and running it twice changes nothing.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sqlx::{PgConnection, PgPool};

use crate::changes::{Change, Publisher};
use crate::engine::FeatureType;
use crate::ids;
use crate::store::values::ValueInput;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub features: Vec<SeedFeature>,
    #[serde(default)]
    pub plans: Vec<SeedPlan>,
    #[serde(default)]
    pub credits: Vec<serde_json::Value>,
    #[serde(default)]
    pub plan_entitlements: Vec<SeedEntitlement>,
    #[serde(default)]
    pub plan_credit_grants: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFeature {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub feature_type: String,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPlan {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub plan_type: String,
    pub billing_product_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SeedEntitlement {
    pub plan: String,
    pub feature: String,
    pub price_behavior: Option<String>,
    #[serde(flatten)]
    pub value: ValueInput,
}

/// What a seed run did, per kind: created / updated / unchanged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub features: [u32; 3],
    pub plans: [u32; 3],
    pub plan_entitlements: [u32; 3],
}

impl Summary {
    pub fn changed(&self) -> bool {
        [self.features, self.plans, self.plan_entitlements]
            .iter()
            .any(|c| c[0] + c[1] > 0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, c) in [
            ("features", self.features),
            ("plans", self.plans),
            ("plan_entitlements", self.plan_entitlements),
        ] {
            writeln!(
                f,
                "{name}: {} created, {} updated, {} unchanged",
                c[0], c[1], c[2]
            )?;
        }
        Ok(())
    }
}

/// Reads `path` (`.json` or `.toml`) and applies it in one transaction.
pub async fn seed_file(pool: &PgPool, path: &Path) -> anyhow::Result<Summary> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let catalog: Catalog = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a valid catalog: {e}", path.display()))?,
        Some("json") => {
            let de = &mut serde_json::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{} is not a valid catalog: {e}", path.display()))?
        }
        _ => anyhow::bail!("{}: use a .json or .toml file", path.display()),
    };
    seed(pool, &catalog).await
}

pub async fn seed(pool: &PgPool, catalog: &Catalog) -> anyhow::Result<Summary> {
    if !catalog.credits.is_empty() || !catalog.plan_credit_grants.is_empty() {
        anyhow::bail!(
            "credits and plan_credit_grants are not supported by this version of entitled yet"
        );
    }
    let mut tx = pool.begin().await?;
    let mut summary = Summary::default();
    for (i, f) in catalog.features.iter().enumerate() {
        let outcome = upsert_feature(&mut tx, f)
            .await
            .map_err(|e| anyhow::anyhow!("features[{i}] ({}): {e}", f.key))?;
        summary.features[outcome] += 1;
    }
    for (i, p) in catalog.plans.iter().enumerate() {
        let outcome = upsert_plan(&mut tx, p)
            .await
            .map_err(|e| anyhow::anyhow!("plans[{i}] ({}): {e}", p.key))?;
        summary.plans[outcome] += 1;
    }
    for (i, e) in catalog.plan_entitlements.iter().enumerate() {
        let outcome = upsert_entitlement(&mut tx, e).await.map_err(|err| {
            anyhow::anyhow!("plan_entitlements[{i}] ({} / {}): {err}", e.plan, e.feature)
        })?;
        summary.plan_entitlements[outcome] += 1;
    }
    let changes = if summary.changed() {
        vec![Change::Catalog]
    } else {
        Vec::new()
    };
    Publisher::detached("seed").commit(tx, &changes).await?;
    Ok(summary)
}

const CREATED: usize = 0;
const UPDATED: usize = 1;
const UNCHANGED: usize = 2;

/// `(id, inserted)` from an upsert's RETURNING, or `None` when the row was unchanged.
type Upserted = Option<(String, bool)>;

fn outcome(row: &Upserted) -> usize {
    match row {
        Some((_, true)) => CREATED,
        Some((_, false)) => UPDATED,
        None => UNCHANGED,
    }
}

async fn upsert_feature(conn: &mut PgConnection, f: &SeedFeature) -> anyhow::Result<usize> {
    let ft = FeatureType::parse(&f.feature_type).ok_or_else(|| {
        anyhow::anyhow!(
            "feature_type {:?} is not boolean, event or trait",
            f.feature_type
        )
    })?;
    let event_subtype = f.event_subtype.clone().filter(|_| ft == FeatureType::Event);
    let trait_id = f.trait_id.clone().filter(|_| ft == FeatureType::Trait);
    let row: Upserted = sqlx::query_as(
        "INSERT INTO features (id, key, name, description, feature_type, event_subtype, trait_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
             feature_type = EXCLUDED.feature_type, event_subtype = EXCLUDED.event_subtype,
             trait_id = EXCLUDED.trait_id, updated_at = now()
         WHERE (features.name, features.description, features.feature_type, features.event_subtype, features.trait_id)
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description, EXCLUDED.feature_type, EXCLUDED.event_subtype, EXCLUDED.trait_id)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::FEATURE))
    .bind(&f.key)
    .bind(&f.name)
    .bind(&f.description)
    .bind(ft.as_str())
    .bind(&event_subtype)
    .bind(&trait_id)
    .fetch_optional(&mut *conn)
    .await?;
    // Every feature has a flag with its key.
    let feature_id: String = sqlx::query_scalar("SELECT id FROM features WHERE key = $1")
        .bind(&f.key)
        .fetch_one(&mut *conn)
        .await?;
    let flag: Upserted = sqlx::query_as(
        "INSERT INTO flags (id, key, name, description, feature_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, feature_id = EXCLUDED.feature_id,
             updated_at = now()
         WHERE (flags.name, flags.feature_id) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.feature_id)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::FLAG))
    .bind(&f.key)
    .bind(&f.name)
    .bind(&f.description)
    .bind(&feature_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match (outcome(&row), outcome(&flag)) {
        (UNCHANGED, UNCHANGED) => UNCHANGED,
        (UNCHANGED, _) => UPDATED,
        (o, _) => o,
    })
}

async fn upsert_plan(conn: &mut PgConnection, p: &SeedPlan) -> anyhow::Result<usize> {
    if p.plan_type != "plan" && p.plan_type != "add_on" {
        anyhow::bail!("plan_type {:?} is not plan or add_on", p.plan_type);
    }
    let row: Upserted = sqlx::query_as(
        "INSERT INTO plans (id, key, name, description, plan_type, billing_product_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
             plan_type = EXCLUDED.plan_type, billing_product_id = EXCLUDED.billing_product_id,
             updated_at = now()
         WHERE (plans.name, plans.description, plans.plan_type, plans.billing_product_id)
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description, EXCLUDED.plan_type, EXCLUDED.billing_product_id)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::PLAN))
    .bind(&p.key)
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.plan_type)
    .bind(p.billing_product_id.as_deref().filter(|s| !s.is_empty()))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(outcome(&row))
}

async fn upsert_entitlement(conn: &mut PgConnection, e: &SeedEntitlement) -> anyhow::Result<usize> {
    let plan_id: String = sqlx::query_scalar("SELECT id FROM plans WHERE key = $1")
        .bind(&e.plan)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| anyhow::anyhow!("plan {:?} is not in the catalog", e.plan))?;
    let (feature_id, feature_type): (String, String) =
        sqlx::query_as("SELECT id, feature_type FROM features WHERE key = $1")
            .bind(&e.feature)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| anyhow::anyhow!("feature {:?} is not in the catalog", e.feature))?;
    let ft = FeatureType::parse(&feature_type).unwrap_or(FeatureType::Boolean);
    let v = e
        .value
        .resolve(None, ft)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let row: Upserted = sqlx::query_as(
        "INSERT INTO plan_entitlements (id, plan_id, feature_id, value_type, value_bool, value_numeric,
             value_trait_id, value_credit_id, credit_consumption_rate, metric_period,
             metric_period_month_reset, price_behavior)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (plan_id, feature_id) DO UPDATE SET value_type = EXCLUDED.value_type,
             value_bool = EXCLUDED.value_bool, value_numeric = EXCLUDED.value_numeric,
             value_trait_id = EXCLUDED.value_trait_id, value_credit_id = EXCLUDED.value_credit_id,
             credit_consumption_rate = EXCLUDED.credit_consumption_rate,
             metric_period = EXCLUDED.metric_period,
             metric_period_month_reset = EXCLUDED.metric_period_month_reset,
             price_behavior = EXCLUDED.price_behavior, updated_at = now()
         WHERE (plan_entitlements.value_type, plan_entitlements.value_bool, plan_entitlements.value_numeric,
                plan_entitlements.value_trait_id, plan_entitlements.value_credit_id,
                plan_entitlements.credit_consumption_rate, plan_entitlements.metric_period,
                plan_entitlements.metric_period_month_reset, plan_entitlements.price_behavior)
               IS DISTINCT FROM (EXCLUDED.value_type, EXCLUDED.value_bool, EXCLUDED.value_numeric,
                EXCLUDED.value_trait_id, EXCLUDED.value_credit_id, EXCLUDED.credit_consumption_rate,
                EXCLUDED.metric_period, EXCLUDED.metric_period_month_reset, EXCLUDED.price_behavior)
         RETURNING id, (xmax = 0)",
    )
    .bind(ids::new_id(ids::prefix::PLAN_ENTITLEMENT))
    .bind(&plan_id)
    .bind(&feature_id)
    .bind(&v.value_type)
    .bind(v.value_bool)
    .bind(v.value_numeric)
    .bind(&v.value_trait_id)
    .bind(&v.value_credit_id)
    .bind(v.credit_consumption_rate)
    .bind(&v.metric_period)
    .bind(&v.metric_period_month_reset)
    .bind(&e.price_behavior)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(outcome(&row))
}
