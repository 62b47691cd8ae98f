//! `entitled seed FILE`: loads a catalog (features, plans, credit types, plan entitlements
//! and plan credit grants) from JSON or TOML, idempotently: objects are matched by `key`
//! (entitlements and grants by plan and feature or credit), and running it twice changes
//! nothing. The SQL is `store::seed`.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sqlx::{PgConnection, PgPool};

use crate::changes::{Change, Publisher};
use crate::engine::FeatureType;
use crate::store::seed::{self as store, Outcome};
use crate::store::values::ValueInput;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub features: Vec<SeedFeature>,
    #[serde(default)]
    pub plans: Vec<SeedPlan>,
    #[serde(default)]
    pub credits: Vec<SeedCredit>,
    #[serde(default)]
    pub plan_entitlements: Vec<SeedEntitlement>,
    #[serde(default)]
    pub plan_credit_grants: Vec<SeedPlanCreditGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedCredit {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPlanCreditGrant {
    /// The plan's key.
    pub plan: String,
    /// The credit type's key.
    pub credit: String,
    /// Credits per period.
    pub credit_amount: f64,
    /// `monthly` (default), `yearly`, `daily` or `weekly`.
    pub reset_cadence: Option<String>,
    /// `billing_period` (default) or `first_of_month`.
    pub reset_start: Option<String>,
    /// `period_end` (default: unused credits lapse) or `never` (they roll over).
    pub expiry: Option<String>,
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
    /// For credit entitlements, `value_credit_id` may name the credit type by its key.
    pub price_behavior: Option<String>,
    /// Stripe price ids on a meter (checked when a track event bills them, not here: a
    /// catalog is shared by environments whose Stripe accounts differ).
    pub monthly_metered_price_id: Option<String>,
    pub yearly_metered_price_id: Option<String>,
    pub soft_limit: Option<i64>,
    #[serde(flatten)]
    pub value: ValueInput,
}

/// What a seed run did, per kind: created / updated / unchanged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub features: [u32; 3],
    pub plans: [u32; 3],
    pub credits: [u32; 3],
    pub plan_entitlements: [u32; 3],
    pub plan_credit_grants: [u32; 3],
}

impl Summary {
    fn kinds(&self) -> [(&'static str, [u32; 3]); 5] {
        [
            ("features", self.features),
            ("plans", self.plans),
            ("credits", self.credits),
            ("plan_entitlements", self.plan_entitlements),
            ("plan_credit_grants", self.plan_credit_grants),
        ]
    }

    pub fn changed(&self) -> bool {
        self.kinds().iter().any(|(_, c)| c[0] + c[1] > 0)
    }
}

fn count(counts: &mut [u32; 3], outcome: Outcome) {
    counts[match outcome {
        Outcome::Created => 0,
        Outcome::Updated => 1,
        Outcome::Unchanged => 2,
    }] += 1;
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, c) in self.kinds() {
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
    let mut tx = crate::store::begin(pool).await?;
    let mut summary = Summary::default();
    for (i, f) in catalog.features.iter().enumerate() {
        let outcome = upsert_feature(&mut tx, f)
            .await
            .map_err(|e| anyhow::anyhow!("features[{i}] ({}): {e}", f.key))?;
        count(&mut summary.features, outcome);
    }
    for (i, p) in catalog.plans.iter().enumerate() {
        let outcome = upsert_plan(&mut tx, p)
            .await
            .map_err(|e| anyhow::anyhow!("plans[{i}] ({}): {e}", p.key))?;
        count(&mut summary.plans, outcome);
    }
    for (i, c) in catalog.credits.iter().enumerate() {
        let outcome = store::upsert_credit_type(&mut tx, &c.key, &c.name, &c.description)
            .await
            .map_err(|e| anyhow::anyhow!("credits[{i}] ({}): {e}", c.key))?;
        count(&mut summary.credits, outcome);
    }
    for (i, e) in catalog.plan_entitlements.iter().enumerate() {
        let outcome = upsert_entitlement(&mut tx, e).await.map_err(|err| {
            anyhow::anyhow!("plan_entitlements[{i}] ({} / {}): {err}", e.plan, e.feature)
        })?;
        count(&mut summary.plan_entitlements, outcome);
    }
    for (i, g) in catalog.plan_credit_grants.iter().enumerate() {
        let outcome = upsert_plan_credit_grant(&mut tx, g).await.map_err(|err| {
            anyhow::anyhow!("plan_credit_grants[{i}] ({} / {}): {err}", g.plan, g.credit)
        })?;
        count(&mut summary.plan_credit_grants, outcome);
    }
    let changes = if summary.changed() {
        vec![Change::Catalog]
    } else {
        Vec::new()
    };
    Publisher::detached("seed").commit(tx, &changes).await?;
    Ok(summary)
}

async fn upsert_feature(conn: &mut PgConnection, f: &SeedFeature) -> anyhow::Result<Outcome> {
    let ft = FeatureType::parse(&f.feature_type).ok_or_else(|| {
        anyhow::anyhow!(
            "feature_type {:?} is not boolean, event or trait",
            f.feature_type
        )
    })?;
    let feature = store::Feature {
        key: &f.key,
        name: &f.name,
        description: &f.description,
        feature_type: ft.as_str(),
        event_subtype: f
            .event_subtype
            .as_deref()
            .filter(|_| ft == FeatureType::Event),
        trait_id: f.trait_id.as_deref().filter(|_| ft == FeatureType::Trait),
    };
    Ok(store::upsert_feature(conn, &feature).await?)
}

async fn upsert_plan(conn: &mut PgConnection, p: &SeedPlan) -> anyhow::Result<Outcome> {
    if p.plan_type != "plan" && p.plan_type != "add_on" {
        anyhow::bail!("plan_type {:?} is not plan or add_on", p.plan_type);
    }
    let plan = store::Plan {
        key: &p.key,
        name: &p.name,
        description: &p.description,
        plan_type: &p.plan_type,
        billing_product_id: p.billing_product_id.as_deref().filter(|s| !s.is_empty()),
    };
    Ok(store::upsert_plan(conn, &plan).await?)
}

async fn plan_id(conn: &mut PgConnection, key: &str) -> anyhow::Result<String> {
    store::plan_id(conn, key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("plan {key:?} is not in the catalog"))
}

async fn credit_id(conn: &mut PgConnection, key: &str) -> anyhow::Result<String> {
    store::credit_id(conn, key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("credit {key:?} is not in the catalog"))
}

async fn upsert_entitlement(
    conn: &mut PgConnection,
    e: &SeedEntitlement,
) -> anyhow::Result<Outcome> {
    let plan_id = plan_id(conn, &e.plan).await?;
    let (feature_id, feature_type) = store::feature(conn, &e.feature)
        .await?
        .ok_or_else(|| anyhow::anyhow!("feature {:?} is not in the catalog", e.feature))?;
    let ft = FeatureType::parse(&feature_type).unwrap_or(FeatureType::Boolean);
    let mut value = e.value.clone();
    // A catalog names credit types by key; an id is accepted too.
    if let Some(credit) = &value.value_credit_id {
        if let Some(id) = store::credit_id(conn, credit).await? {
            value.value_credit_id = Some(id);
        }
    }
    let v = value
        .resolve(None, ft)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let billing = crate::store::plans::Billing {
        price_behavior: e.price_behavior.clone(),
        monthly_metered_price_id: e.monthly_metered_price_id.clone(),
        yearly_metered_price_id: e.yearly_metered_price_id.clone(),
        soft_limit: e.soft_limit,
    };
    billing
        .validate(v.value_numeric)
        .map_err(|err| anyhow::anyhow!("plan_entitlements {}/{}: {err}", e.plan, e.feature))?;
    Ok(store::upsert_entitlement(conn, &plan_id, &feature_id, &v, &billing).await?)
}

async fn upsert_plan_credit_grant(
    conn: &mut PgConnection,
    g: &SeedPlanCreditGrant,
) -> anyhow::Result<Outcome> {
    let plan_id = plan_id(conn, &g.plan).await?;
    let credit_id = credit_id(conn, &g.credit).await?;
    if !(g.credit_amount.is_finite() && g.credit_amount > 0.0) {
        anyhow::bail!("credit_amount: must be a positive number of credits");
    }
    let amount_micros = (g.credit_amount * crate::store::credits::MICROS).round() as i64;
    let cadence = g.reset_cadence.as_deref().unwrap_or("monthly");
    let start = g.reset_start.as_deref().unwrap_or("billing_period");
    let expiry = g.expiry.as_deref().unwrap_or("period_end");
    if !["daily", "weekly", "monthly", "yearly"].contains(&cadence) {
        anyhow::bail!("reset_cadence: {cadence:?} is not monthly, yearly, daily or weekly");
    }
    if !["billing_period", "first_of_month"].contains(&start) {
        anyhow::bail!("reset_start: {start:?} is not billing_period or first_of_month");
    }
    if !["period_end", "never"].contains(&expiry) {
        anyhow::bail!("expiry: {expiry:?} is not period_end or never");
    }
    let grant = store::PlanCreditGrant {
        plan_id: &plan_id,
        credit_id: &credit_id,
        amount_micros,
        reset_cadence: cadence,
        reset_start: start,
        expiry,
    };
    Ok(store::upsert_plan_credit_grant(conn, &grant).await?)
}
