//! Table tests of the mapping: each row a piece of the snapshot and the rules, metrics and
//! balances the SDK's engine must receive for it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::cache::{Catalog, CompanyState, Membership, PlanEntitlementInfo};
use crate::engine::{CompanyContext, CreditGrant, Feature, Metered, Source, UsageCounter};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 18, 12, 0, 0).unwrap()
}

fn feature(kind: FeatureType) -> Feature {
    crate::engine::fixtures::feature(kind, "api", "API", "seats")
}

fn candidate(source: Source, value: Value) -> Candidate {
    crate::engine::fixtures::candidate(source, "Pro: api", value)
}

fn plan(id: &str) -> Source {
    Source::Plan {
        entitlement_id: format!("pltl_{id}"),
    }
}

fn over() -> Source {
    Source::Override {
        override_id: "cmov_1".into(),
    }
}

fn catalog(kind: FeatureType, plans: Vec<(&str, Candidate, bool)>) -> Catalog {
    let flag = Arc::new(Flag {
        id: "flag_1".into(),
        key: "api".into(),
        default_value: false,
        feature: Some(feature(kind)),
        rules: Vec::new(),
    });
    let mut by_plan = HashMap::new();
    for (p, c, pay_in_advance) in plans {
        by_plan.insert(
            p.to_string(),
            PlanEntitlementInfo {
                candidate: c,
                pay_in_advance,
            },
        );
    }
    let mut c = Catalog::default();
    c.flags_by_key.insert("api".into(), flag.clone());
    c.flags_sorted.push(flag);
    c.entitlements.insert("feat_1".into(), by_plan);
    c
}

fn company(plans: &[&str], overrides: Vec<Candidate>) -> CompanyState {
    CompanyState {
        keys: vec![("id".into(), "c1".into())].into(),
        context: CompanyContext {
            id: "comp_1".into(),
            plan_ids: plans.iter().map(|p| (*p).into()).collect(),
            base_plan_id: plans.first().map(|p| (*p).into()),
            ..CompanyContext::default()
        },
        memberships: plans
            .iter()
            .map(|p| Membership {
                plan_id: (*p).into(),
                is_base: true,
                quantity: 7,
            })
            .collect(),
        overrides: overrides
            .into_iter()
            .map(|o| ("feat_1".into(), o))
            .collect(),
    }
}

/// (rule type, value, condition types) of each rule, in order.
fn shape(rules: &[RRule]) -> Vec<(&'static str, bool, Vec<&'static str>)> {
    rules
        .iter()
        .map(|r| {
            (
                r.rule_type,
                r.value,
                r.conditions.iter().map(|c| c.condition_type).collect(),
            )
        })
        .collect()
}

/// An event feature on which `plan_pro` allows 100 (not company-dependent).
fn pro_with_limit_100() -> Catalog {
    let pro = candidate(plan("pro"), Value::Numeric(100));
    catalog(FeatureType::Event, vec![("plan_pro", pro, false)])
}

/// A limited entitlement's rules, as [`shape`] writes them: its rule while under the limit
/// (with the limit's own `condition`), and the usage-exceeded rule past it.
fn limit(condition: &'static str) -> Vec<(&'static str, bool, Vec<&'static str>)> {
    vec![
        ("plan_entitlement", true, vec!["plan", condition]),
        ("plan_entitlement_usage_exceeded", false, vec!["plan"]),
    ]
}

#[test]
fn plan_entitlements_become_flag_rules_conditioned_on_the_plan() {
    type Row = (
        &'static str,
        FeatureType,
        Value,
        Vec<(&'static str, bool, Vec<&'static str>)>,
    );
    let rows: Vec<Row> = vec![
        (
            "boolean on",
            FeatureType::Boolean,
            Value::Bool(true),
            vec![("plan_entitlement", true, vec!["plan"])],
        ),
        (
            "boolean off comes after allowing rules",
            FeatureType::Boolean,
            Value::Bool(false),
            vec![("plan_entitlement", false, vec!["plan"])],
        ),
        (
            "unlimited",
            FeatureType::Event,
            Value::Unlimited,
            vec![("plan_entitlement", true, vec!["plan"])],
        ),
        (
            "event limit: usage below the allocation, else exceeded",
            FeatureType::Event,
            Value::Numeric(100),
            limit("metric"),
        ),
        (
            "trait limit",
            FeatureType::Trait,
            Value::Numeric(5),
            limit("trait"),
        ),
        (
            "credits",
            FeatureType::Event,
            Value::Credit {
                credit_id: "cred_1".into(),
                rate: 2.0,
            },
            limit("credit"),
        ),
        (
            "a numeric entitlement of a boolean feature: zero usage is under it",
            FeatureType::Boolean,
            Value::Numeric(3),
            vec![("plan_entitlement", true, vec!["plan"])],
        ),
    ];
    for (name, kind, value, want) in rows {
        let cat = catalog(
            kind,
            vec![("plan_pro", candidate(plan("pro"), value), false)],
        );
        let f = flag("env_1", &cat, &cat.flags_sorted[0]);
        assert_eq!(shape(&f.rules), want, "{name}");
        assert_eq!(
            f.rules[0].conditions[0].resource_ids,
            vec!["plan_pro".to_string()],
            "{name}"
        );
        let allowing = f.rules.iter().filter(|r| r.value).count();
        assert!(
            f.rules
                .iter()
                .all(|r| r.value || r.priority > 0 || allowing == 0),
            "{name}: denials sort after allowing rules"
        );
    }
}

#[test]
fn limits_carry_allocation_period_and_operator() {
    let cat = pro_with_limit_100();
    let f = flag("env_1", &cat, &cat.flags_sorted[0]);
    let metric = &f.rules[0].conditions[1];
    assert_eq!(metric.operator, "lt");
    assert_eq!(metric.metric_value, Some(100));
    assert_eq!(metric.event_subtype.as_deref(), Some("api_call"));
    assert_eq!(metric.metric_period, Some("current_month"));
    assert_eq!(metric.metric_period_month_reset, Some("first_of_month"));

    // A metered entitlement denies only at its soft limit; without one it never denies.
    let mut soft = candidate(plan("pro"), Value::Numeric(100));
    soft.metered = Some(Metered {
        soft_limit: Some(150),
    });
    let cat = catalog(FeatureType::Event, vec![("plan_pro", soft, false)]);
    let f = flag("env_1", &cat, &cat.flags_sorted[0]);
    assert_eq!(f.rules[0].conditions[1].metric_value, Some(150));
    let mut payg = candidate(plan("pro"), Value::Numeric(100));
    payg.metered = Some(Metered { soft_limit: None });
    let cat = catalog(FeatureType::Event, vec![("plan_pro", payg, false)]);
    let f = flag("env_1", &cat, &cat.flags_sorted[0]);
    assert_eq!(
        shape(&f.rules),
        vec![("plan_entitlement", true, vec!["plan"])]
    );
}

#[test]
fn overrides_become_company_rules_for_the_flag() {
    type Row = (
        &'static str,
        Candidate,
        Vec<(&'static str, bool, Vec<&'static str>)>,
    );
    let mut expired = candidate(over(), Value::Bool(true));
    expired.expires_at = Some(now() - chrono::Duration::seconds(1));
    let rows: Vec<Row> = vec![
        (
            "negative boolean",
            candidate(over(), Value::Bool(false)),
            vec![("company_override", false, vec![])],
        ),
        (
            "numeric",
            candidate(over(), Value::Numeric(500)),
            vec![
                ("company_override", true, vec!["metric"]),
                ("company_override_usage_exceeded", false, vec![]),
            ],
        ),
        (
            "unlimited",
            candidate(over(), Value::Unlimited),
            vec![("company_override", true, vec![])],
        ),
        ("expired: not sent", expired, vec![]),
    ];
    for (name, o, want) in rows {
        let cat = catalog(FeatureType::Event, vec![]);
        let state = company(&["plan_pro"], vec![o]);
        let r = super::company("env_1", &cat, &state, &state.context, now());
        assert_eq!(shape(&r.company.rules), want, "{name}");
        assert!(
            r.company
                .rules
                .iter()
                .all(|r| r.flag_id.as_deref() == Some("flag_1")),
            "{name}: company rules name their flag"
        );
    }
}

#[test]
fn an_override_that_expires_later_sets_the_next_change() {
    let mut o = candidate(over(), Value::Bool(true));
    let at = now() + chrono::Duration::minutes(5);
    o.expires_at = Some(at);
    o.metric_period = None;
    let cat = catalog(FeatureType::Boolean, vec![]);
    let state = company(&["plan_pro"], vec![o]);
    let r = super::company("env_1", &cat, &state, &state.context, now());
    assert_eq!(r.next_change, Some(at));
    assert_eq!(r.company.rules.len(), 1);
}

#[test]
fn company_dependent_allocations_are_company_rules_with_the_companys_figure() {
    // Pay in advance: the subscribed quantity (7) is the allocation.
    let cat = catalog(
        FeatureType::Event,
        vec![("plan_pro", candidate(plan("pro"), Value::Numeric(1)), true)],
    );
    assert!(flag("env_1", &cat, &cat.flags_sorted[0]).rules.is_empty());
    let state = company(&["plan_pro"], vec![]);
    let r = super::company("env_1", &cat, &state, &state.context, now());
    assert_eq!(shape(&r.company.rules), limit("metric"));
    assert_eq!(r.company.rules[0].conditions[1].metric_value, Some(7));
    // A company not on the plan gets no rule for it.
    let other = company(&["plan_free"], vec![]);
    let r = super::company("env_1", &cat, &other, &other.context, now());
    assert!(r.company.rules.is_empty());
}

#[test]
fn metrics_hold_the_current_window_for_every_measured_event() {
    let cat = pro_with_limit_100();
    let mut state = company(&["plan_pro"], vec![]);
    let march = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let feb = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    for (start, count) in [(feb, 40), (march, 12)] {
        state.context.usage = vec![UsageCounter {
            event: "api_call".into(),
            period: MetricPeriod::CurrentMonth,
            month_reset: MonthReset::FirstOfMonth,
            window_start: start,
            count,
            version: 1,
        }];
        let r = super::company("env_1", &cat, &state, &state.context, now());
        assert_eq!(r.company.metrics.len(), 1);
        let m = &r.company.metrics[0];
        assert_eq!(
            (m.event_subtype.as_str(), m.period, m.month_reset),
            ("api_call", "current_month", "first_of_month")
        );
        // Last month's counter is this month's zero.
        assert_eq!(m.value, if start == march { 12 } else { 0 });
        let april = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
        assert_eq!(m.valid_until, Some(april));
        assert_eq!(r.next_change, Some(april), "the period reset re-renders it");
    }
}

#[test]
fn credit_balances_count_live_grants_and_referenced_credits() {
    let cat = catalog(
        FeatureType::Event,
        vec![(
            "plan_pro",
            candidate(
                plan("pro"),
                Value::Credit {
                    credit_id: "cred_1".into(),
                    rate: 2.0,
                },
            ),
            false,
        )],
    );
    let mut state = company(&["plan_pro"], vec![]);
    let r = super::company("env_1", &cat, &state, &state.context, now());
    assert_eq!(
        r.company.credit_balances.get("cred_1"),
        Some(&0.0),
        "no grant: zero"
    );
    state.context.credit_grants = vec![
        CreditGrant {
            credit_id: "cred_1".into(),
            granted: 10.0,
            used: 3.0,
            zeroed: 0.0,
            expires_at: None,
        },
        CreditGrant {
            credit_id: "cred_1".into(),
            granted: 50.0,
            used: 0.0,
            zeroed: 0.0,
            expires_at: Some(now() - chrono::Duration::days(1)),
        },
    ];
    let r = super::company("env_1", &cat, &state, &state.context, now());
    assert_eq!(r.company.credit_balances.get("cred_1"), Some(&7.0));
}

#[test]
fn companies_carry_plans_keys_and_traits() {
    let cat = catalog(FeatureType::Boolean, vec![]);
    let mut state = company(&["plan_pro", "plan_addon"], vec![]);
    state.context.traits.insert("seats", serde_json::json!(4));
    state
        .context
        .traits
        .insert("tier", serde_json::json!("gold"));
    let r = super::company("env_1", &cat, &state, &state.context, now());
    let c = &r.company;
    assert_eq!(
        c.plan_ids,
        vec!["plan_pro".to_string(), "plan_addon".to_string()]
    );
    assert_eq!(c.base_plan_id.as_deref(), Some("plan_pro"));
    assert_eq!(c.keys.get("id").map(String::as_str), Some("c1"));
    let traits: Vec<(&str, &str, &str)> = c
        .traits
        .iter()
        .map(|t| {
            (
                t.trait_definition.id.as_str(),
                t.trait_definition.comparable_type,
                t.value.as_str(),
            )
        })
        .collect();
    assert_eq!(
        traits,
        vec![("seats", "int", "4"), ("tier", "string", "gold")]
    );
}

#[test]
fn partials_carry_only_what_changed() {
    use serde_json::json;
    let old = json!({"id": "c", "keys": {"id": "1"}, "rules": [], "metrics": [
        {"event_subtype": "a", "value": 1}, {"event_subtype": "b", "value": 2}], "base_plan_id": "p"});
    assert_eq!(crate::datastream::diff(&old, &old), None);
    let mut new = old.clone();
    new["metrics"][1]["value"] = json!(3);
    new.as_object_mut().unwrap().remove("base_plan_id");
    assert_eq!(
        crate::datastream::diff(&old, &new),
        Some(Some(
            json!({"metrics": [{"event_subtype": "b", "value": 3}], "base_plan_id": null})
        ))
    );
    let mut rekeyed = old.clone();
    rekeyed["keys"] = json!({"id": "2"});
    assert_eq!(
        crate::datastream::diff(&old, &rekeyed),
        Some(None),
        "new keys: a full message"
    );
}
