//! The evaluation engine: pure functions from plain data and a `now` to a check result.
//! No clock reads, no I/O. The cache layer gathers the inputs; this decides.
//!
//! Rule order (first match wins): global override → company override → plan entitlement →
//! company-override-usage-exceeded → plan-entitlement-usage-exceeded → standard rules by
//! ascending priority → the flag's default. Across the base plan, add-ons and an override the
//! most generous entitlement applies, except that a boolean `false` override always wins.

pub mod compact;
pub mod period;
pub mod rules;

use std::borrow::Borrow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use compact::{Interner, TraitSet};
pub use period::{MetricPeriod, MonthReset};
pub use rules::{Condition, Rule, RuleKind};

pub type Traits = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureType {
    Boolean,
    Event,
    Trait,
}

impl FeatureType {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureType::Boolean => "boolean",
            FeatureType::Event => "event",
            FeatureType::Trait => "trait",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "boolean" => FeatureType::Boolean,
            "event" => FeatureType::Event,
            "trait" => FeatureType::Trait,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub id: String,
    pub key: String,
    pub name: String,
    pub feature_type: FeatureType,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub id: String,
    pub key: String,
    pub default_value: bool,
    pub feature: Option<Feature>,
    /// Sorted by ascending priority.
    pub rules: Vec<Rule>,
}

/// An entitlement's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Numeric(i64),
    Unlimited,
    /// Allocation read from the company's numeric trait of this name.
    Trait(String),
    Credit {
        credit_id: String,
        rate: f64,
    },
}

impl Value {
    pub fn type_str(&self) -> &'static str {
        match self {
            Value::Bool(_) => "boolean",
            Value::Numeric(_) => "numeric",
            Value::Unlimited => "unlimited",
            Value::Trait(_) => "trait",
            Value::Credit { .. } => "credit",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Plan { entitlement_id: String },
    Override { override_id: String },
}

/// One entitlement that may apply to the flag's feature: from one of the company's plans or
/// from a company override.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub source: Source,
    /// For reasons: `"Pro: api-calls"`.
    pub label: String,
    pub value: Value,
    pub metric_period: Option<MetricPeriod>,
    pub month_reset: MonthReset,
    /// `price_behavior = pay_in_advance`: the allocation is this subscribed quantity.
    pub pay_in_advance_quantity: Option<i64>,
    /// `price_behavior = pay_as_you_go | overage`: usage past the allocation is billed, not
    /// denied (unless a soft limit says so).
    pub metered: Option<Metered>,
    /// An override stops applying at this instant, whether or not the expiry job has run.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A metered entitlement's access rule: allowed while usage is below `soft_limit`, or always
/// without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metered {
    pub soft_limit: Option<i64>,
}

/// A usage counter for one event in one window, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCounter {
    /// Shared by every company's counters of the event.
    pub event: Arc<str>,
    pub period: MetricPeriod,
    pub month_reset: MonthReset,
    pub window_start: DateTime<Utc>,
    pub count: i64,
    /// Bumped by every write of the row; lets the cache keep the newest of two updates.
    /// Evaluation ignores it.
    pub version: i64,
}

/// Merges `incoming` counters into `usage`: per event, period and reset, the newest window
/// wins, and within a window the highest version.
pub fn merge_usage(usage: &mut Vec<UsageCounter>, incoming: &[UsageCounter]) {
    for new in incoming {
        let same = |c: &UsageCounter| {
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

/// One credit grant as checks see it. Amounts are in credits.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditGrant {
    pub credit_id: String,
    pub granted: f64,
    pub used: f64,
    pub zeroed: f64,
    /// A grant stops counting at this instant, whether or not the job has zeroed it.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CreditBalance {
    pub total: f64,
    pub used: f64,
    pub remaining: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompanyContext {
    pub id: Arc<str>,
    pub traits: TraitSet,
    pub base_plan_id: Option<Arc<str>>,
    /// The base plan (or the fallback plan) and every add-on.
    pub plan_ids: Vec<Arc<str>>,
    /// The subscription's current period start, for `billing_cycle` resets.
    pub billing_anchor: Option<DateTime<Utc>>,
    pub usage: Vec<UsageCounter>,
    /// The company's credit grants that are not fully used or zeroed.
    pub credit_grants: Vec<CreditGrant>,
}

impl CompanyContext {
    /// The balance of one credit type at `now`: expired grants no longer count.
    pub fn credit_balance(&self, credit_id: &str, now: DateTime<Utc>) -> CreditBalance {
        let mut b = CreditBalance::default();
        for g in self
            .credit_grants
            .iter()
            .filter(|g| g.credit_id == credit_id)
        {
            if g.expires_at.is_some_and(|exp| exp <= now) {
                continue;
            }
            b.total += g.granted;
            b.used += g.used;
            b.remaining += (g.granted - g.used - g.zeroed).max(0.0);
        }
        b
    }

    /// Usage of `event` in the window of `period` containing `now`; a counter from an earlier
    /// window counts as zero, so resets need no job.
    pub fn usage_of(
        &self,
        event: &str,
        period: MetricPeriod,
        reset: MonthReset,
        now: DateTime<Utc>,
    ) -> i64 {
        let reset = counter_reset(period, reset, self.billing_anchor);
        let win = period::window(period, reset, self.billing_anchor, now);
        self.usage
            .iter()
            .filter(|c| {
                *c.event == *event
                    && c.period == period
                    && c.month_reset == reset
                    && c.window_start == win.start
            })
            .map(|c| c.count)
            .sum()
    }
}

/// The month reset a counter is kept under: day, week and all-time windows do not depend on
/// it, and a billing cycle without a subscription is the calendar month.
pub fn counter_reset(
    period: MetricPeriod,
    reset: MonthReset,
    billing_anchor: Option<DateTime<Utc>>,
) -> MonthReset {
    match (period, reset, billing_anchor) {
        (MetricPeriod::CurrentMonth, MonthReset::BillingCycle, Some(_)) => MonthReset::BillingCycle,
        _ => MonthReset::FirstOfMonth,
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserContext {
    pub id: Arc<str>,
    pub traits: TraitSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleType {
    GlobalOverride,
    CompanyOverride,
    PlanEntitlement,
    CompanyOverrideUsageExceeded,
    PlanEntitlementUsageExceeded,
    Standard,
    Default,
}

impl RuleType {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleType::GlobalOverride => "global_override",
            RuleType::CompanyOverride => "company_override",
            RuleType::PlanEntitlement => "plan_entitlement",
            RuleType::CompanyOverrideUsageExceeded => "company_override_usage_exceeded",
            RuleType::PlanEntitlementUsageExceeded => "plan_entitlement_usage_exceeded",
            RuleType::Standard => "standard",
            RuleType::Default => "default",
        }
    }
}

/// The entitlement behind an answer, for the check response.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitlementReport {
    pub feature_id: String,
    pub feature_key: String,
    pub value_type: &'static str,
    /// `None` for unlimited and boolean entitlements.
    pub allocation: Option<i64>,
    pub usage: Option<i64>,
    pub event_name: Option<String>,
    pub metric_period: Option<MetricPeriod>,
    pub metric_reset_at: Option<DateTime<Utc>>,
    pub credit_id: Option<String>,
    pub credit: Option<CreditBalance>,
    /// For `current_month` periods: how the month resets.
    pub month_reset: Option<MonthReset>,
    /// When the entitlement stops applying (overrides with an expiration date).
    pub expires_at: Option<DateTime<Utc>>,
    /// A metered entitlement's soft limit: usage at or above it is denied.
    pub soft_limit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub value: bool,
    pub reason: String,
    pub rule_type: RuleType,
    pub rule_id: Option<String>,
    pub entitlement: Option<EntitlementReport>,
}

/// Evaluates `flag` for a company and user (either may be unknown) at `now`.
/// `candidates` are the entitlements of the company's plans and its override for the flag's
/// feature; candidates are ignored without a feature. They may be borrowed (`Cow`, `&`), so
/// a caller need not copy the catalog's entitlements to evaluate them.
pub fn evaluate<C: Borrow<Candidate>>(
    flag: &Flag,
    company: Option<&CompanyContext>,
    user: Option<&UserContext>,
    candidates: &[C],
    now: DateTime<Utc>,
) -> Evaluation {
    let facts = rules::Facts { company, user, now };

    for rule in flag
        .rules
        .iter()
        .filter(|r| r.kind == RuleKind::GlobalOverride)
    {
        if rule.matches(&facts) {
            return Evaluation {
                value: rule.value,
                reason: format!(
                    "Matched global override rule \"{}\" ({})",
                    rule.name, rule.id
                ),
                rule_type: RuleType::GlobalOverride,
                rule_id: Some(rule.id.clone()),
                entitlement: None,
            };
        }
    }

    if let (Some(feature), Some(company)) = (&flag.feature, company) {
        if let Some(eval) = entitlement_answer(feature, company, candidates, now) {
            return eval;
        }
    }

    for rule in flag.rules.iter().filter(|r| r.kind == RuleKind::Standard) {
        if rule.matches(&facts) {
            return Evaluation {
                value: rule.value,
                reason: format!("Matched standard rule \"{}\" ({})", rule.name, rule.id),
                rule_type: RuleType::Standard,
                rule_id: Some(rule.id.clone()),
                entitlement: None,
            };
        }
    }

    Evaluation {
        value: flag.default_value,
        reason: "No rules matched; returned the flag's default value".into(),
        rule_type: RuleType::Default,
        rule_id: None,
        entitlement: None,
    }
}

/// How much a candidate allows, for ranking: a denial, a limit, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Generosity {
    Denied,
    Limited(f64),
    Unlimited,
}

/// A candidate resolved against the company's usage, traits and credits.
struct Resolved<'c> {
    candidate: &'c Candidate,
    allowed: bool,
    generosity: Generosity,
    report: EntitlementReport,
}

fn resolve<'c>(
    feature: &Feature,
    company: &CompanyContext,
    c: &'c Candidate,
    now: DateTime<Utc>,
) -> Resolved<'c> {
    let period = c.metric_period.unwrap_or(MetricPeriod::AllTime);
    let month_reset = if period == MetricPeriod::CurrentMonth {
        c.month_reset
    } else {
        MonthReset::FirstOfMonth
    };
    // What the feature measures: events counted in the window, or a numeric trait.
    let (usage, reset_at) = match feature.feature_type {
        FeatureType::Event => {
            let event = feature.event_subtype.as_deref().unwrap_or_default();
            let used = company.usage_of(event, period, month_reset, now);
            let win = period::window(period, month_reset, company.billing_anchor, now);
            (Some(used), win.end)
        }
        FeatureType::Trait => {
            let name = feature.trait_id.as_deref().unwrap_or("");
            let used = company
                .traits
                .get(name)
                .and_then(rules::trait_as_number)
                .unwrap_or(0.0);
            (Some(used.floor() as i64), None)
        }
        FeatureType::Boolean => (None, None),
    };
    let used = usage.unwrap_or(0) as f64;

    // The names are filled in for the winning candidate only ([`name_report`]): resolving
    // the losers copies no string.
    let mut report = EntitlementReport {
        feature_id: String::new(),
        feature_key: String::new(),
        value_type: c.value.type_str(),
        allocation: None,
        usage,
        event_name: None,
        metric_period: c.metric_period,
        metric_reset_at: reset_at,
        credit_id: None,
        credit: None,
        month_reset: (period == MetricPeriod::CurrentMonth).then_some(month_reset),
        expires_at: c.expires_at,
        soft_limit: c.metered.and_then(|m| m.soft_limit),
    };

    let limited = |allocation: f64, report: &mut EntitlementReport| {
        report.allocation = Some(allocation.floor() as i64);
        match c.metered {
            // Billed past the allocation: only a soft limit stops use.
            Some(Metered {
                soft_limit: Some(soft),
            }) => (used < soft as f64, Generosity::Limited(soft as f64)),
            Some(Metered { soft_limit: None }) => (true, Generosity::Unlimited),
            None => (used < allocation, Generosity::Limited(allocation)),
        }
    };
    let (allowed, generosity) = match (&c.value, c.pay_in_advance_quantity) {
        (Value::Bool(true), _) => (true, Generosity::Unlimited),
        (Value::Bool(false), _) => (false, Generosity::Denied),
        (Value::Unlimited, _) => (true, Generosity::Unlimited),
        (Value::Numeric(_), Some(quantity)) => limited(quantity as f64, &mut report),
        (Value::Numeric(n), None) => limited(*n as f64, &mut report),
        (Value::Trait(name), _) => {
            let allocation = company
                .traits
                .get(name)
                .and_then(rules::trait_as_number)
                .unwrap_or(0.0);
            limited(allocation, &mut report)
        }
        (Value::Credit { credit_id, rate }, _) => {
            let balance = company.credit_balance(credit_id, now);
            report.credit = Some(balance);
            let units = if *rate > 0.0 {
                balance.remaining / rate
            } else {
                0.0
            };
            (balance.remaining >= *rate, Generosity::Limited(units))
        }
    };
    Resolved {
        candidate: c,
        allowed,
        generosity,
        report,
    }
}

/// Names the feature, its event and the candidate's credit type in the winner's report.
fn name_report(feature: &Feature, c: &Candidate, report: &mut EntitlementReport) {
    report.feature_id.clone_from(&feature.id);
    report.feature_key.clone_from(&feature.key);
    if feature.feature_type == FeatureType::Event {
        report.event_name = Some(feature.event_subtype.clone().unwrap_or_default());
    }
    if let Value::Credit { credit_id, .. } = &c.value {
        report.credit_id = Some(credit_id.clone());
    }
}

/// The entitlement part of the rule order, or `None` when no entitlement applies.
fn entitlement_answer<C: Borrow<Candidate>>(
    feature: &Feature,
    company: &CompanyContext,
    candidates: &[C],
    now: DateTime<Utc>,
) -> Option<Evaluation> {
    let live = candidates
        .iter()
        .map(Borrow::borrow)
        .filter(|c| c.expires_at.is_none_or(|exp| now < exp));

    let mut best: Option<Resolved<'_>> = None;
    for c in live {
        let r = resolve(feature, company, c, now);
        let is_override = matches!(c.source, Source::Override { .. });
        // A boolean `false` override is a deliberate denial: it wins over everything.
        if is_override && c.value == Value::Bool(false) {
            best = Some(r);
            break;
        }
        let better = match &best {
            None => true,
            Some(b) => {
                let key = |x: &Resolved<'_>| (x.allowed, x.generosity);
                match key(&r).partial_cmp(&key(b)) {
                    Some(std::cmp::Ordering::Greater) => true,
                    // Equal generosity: the explicit override is the one to report.
                    Some(std::cmp::Ordering::Equal) => {
                        is_override && !matches!(b.candidate.source, Source::Override { .. })
                    }
                    _ => false,
                }
            }
        };
        if better {
            best = Some(r);
        }
    }
    let mut best = best?;
    name_report(feature, best.candidate, &mut best.report);

    let (id, is_override) = match &best.candidate.source {
        Source::Plan { entitlement_id } => (entitlement_id.clone(), false),
        Source::Override { override_id } => (override_id.clone(), true),
    };
    let exceeded = !best.allowed && best.generosity != Generosity::Denied;
    let rule_type = match (is_override, exceeded) {
        (true, false) => RuleType::CompanyOverride,
        (false, false) => RuleType::PlanEntitlement,
        (true, true) => RuleType::CompanyOverrideUsageExceeded,
        (false, true) => RuleType::PlanEntitlementUsageExceeded,
    };
    let kind = if is_override {
        "company override"
    } else {
        "plan entitlement"
    };
    let reason = if exceeded {
        let r = &best.report;
        match (&r.credit, r.usage, r.allocation) {
            (Some(balance), _, _) => format!(
                "Credit balance too low for {kind} rule \"{}\" ({id}): {} remaining",
                best.candidate.label, balance.remaining
            ),
            (None, Some(u), _) if r.soft_limit.is_some() => format!(
                "Soft limit reached for {kind} rule \"{}\" ({id}): {u} used, soft limit {}",
                best.candidate.label,
                r.soft_limit.unwrap_or_default()
            ),
            (None, Some(u), Some(a)) => format!(
                "Usage exceeded for {kind} rule \"{}\" ({id}): {u} of {a} used",
                best.candidate.label
            ),
            _ => format!(
                "Usage exceeded for {kind} rule \"{}\" ({id})",
                best.candidate.label
            ),
        }
    } else {
        format!("Matched {kind} rule \"{}\" ({id})", best.candidate.label)
    };
    Some(Evaluation {
        value: best.allowed,
        reason,
        rule_type,
        rule_id: Some(id),
        entitlement: Some(best.report),
    })
}

#[cfg(test)]
mod tests;

/// What unit tests here and in `datastream` build their cases from.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::rules::{Condition, ConditionType, Operator};
    use super::{Candidate, Feature, FeatureType, MetricPeriod, MonthReset, Source, Value};

    /// A condition on `resource_ids` (plans, companies, users…) with no trait or metric part.
    pub fn condition(
        condition_type: ConditionType,
        operator: Operator,
        resource_ids: Vec<String>,
    ) -> Condition {
        Condition {
            condition_type,
            operator,
            resource_ids,
            trait_id: None,
            trait_value: None,
            trait_entity_type: None,
            event_subtype: None,
            metric_value: None,
            metric_period: None,
            metric_period_month_reset: None,
        }
    }

    /// Feature `feat_1`: an `api_call` event feature, a `trait_name` trait feature, or a
    /// boolean one, as `ft` says.
    pub fn feature(ft: FeatureType, key: &str, name: &str, trait_name: &str) -> Feature {
        Feature {
            id: "feat_1".into(),
            key: key.into(),
            name: name.into(),
            feature_type: ft,
            event_subtype: (ft == FeatureType::Event).then(|| "api_call".into()),
            trait_id: (ft == FeatureType::Trait).then(|| trait_name.into()),
        }
    }

    /// A monthly (first of the month) candidate with no billing and no expiry.
    pub fn candidate(source: Source, label: impl Into<String>, value: Value) -> Candidate {
        Candidate {
            source,
            label: label.into(),
            value,
            metric_period: Some(MetricPeriod::CurrentMonth),
            month_reset: MonthReset::FirstOfMonth,
            pay_in_advance_quantity: None,
            metered: None,
            expires_at: None,
        }
    }
}
