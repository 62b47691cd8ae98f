use super::*;
use proptest::prelude::*;
use rules::{ConditionType, Operator};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-18T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn feature(ft: FeatureType) -> Feature {
    fixtures::feature(ft, "api-calls", "API calls", "seats_used")
}

fn flag(ft: FeatureType) -> Flag {
    Flag {
        id: "flag_1".into(),
        key: "api-calls".into(),
        default_value: false,
        feature: Some(feature(ft)),
        rules: vec![],
    }
}

fn plan(id: &str, value: Value) -> Candidate {
    let source = Source::Plan {
        entitlement_id: id.into(),
    };
    fixtures::candidate(source, format!("{id}: api-calls"), value)
}

fn over(value: Value) -> Candidate {
    Candidate {
        source: Source::Override {
            override_id: "cmov_1".into(),
        },
        label: "api-calls".into(),
        ..plan("x", value)
    }
}

fn company_with_usage(n: i64) -> CompanyContext {
    CompanyContext {
        id: "comp_1".into(),
        usage: vec![UsageCounter {
            event: "api_call".into(),
            period: MetricPeriod::CurrentMonth,
            month_reset: MonthReset::FirstOfMonth,
            window_start: period::window(
                MetricPeriod::CurrentMonth,
                MonthReset::FirstOfMonth,
                None,
                now(),
            )
            .start,
            count: n,
            version: 1,
        }],
        ..Default::default()
    }
}

fn rule(id: &str, kind: RuleKind, priority: i32, value: bool, conds: Vec<Condition>) -> Rule {
    Rule {
        id: id.into(),
        name: id.into(),
        kind,
        priority,
        value,
        conditions: conds,
        condition_groups: vec![],
    }
}

fn cond(t: ConditionType, op: Operator, ids: &[&str]) -> Condition {
    fixtures::condition(t, op, ids.iter().map(|s| s.to_string()).collect())
}

#[test]
fn rule_order_table() {
    let c = company_with_usage(5);
    // (name, rules, candidates, expected value, expected rule type, expected rule id)
    let global = rule("rule_g", RuleKind::GlobalOverride, 0, false, vec![]);
    let std_true = rule("rule_s", RuleKind::Standard, 1, true, vec![]);
    type Case = (
        &'static str,
        Vec<Rule>,
        Vec<Candidate>,
        bool,
        RuleType,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("default", vec![], vec![], false, RuleType::Default, None),
        (
            "standard",
            vec![std_true.clone()],
            vec![],
            true,
            RuleType::Standard,
            Some("rule_s"),
        ),
        (
            "global beats all",
            vec![global.clone(), std_true.clone()],
            vec![plan("pltl_a", Value::Unlimited)],
            false,
            RuleType::GlobalOverride,
            Some("rule_g"),
        ),
        (
            "plan beats standard",
            vec![rule("rule_s", RuleKind::Standard, 1, false, vec![])],
            vec![plan("pltl_a", Value::Numeric(10))],
            true,
            RuleType::PlanEntitlement,
            Some("pltl_a"),
        ),
        (
            "override numeric",
            vec![],
            vec![over(Value::Numeric(10))],
            true,
            RuleType::CompanyOverride,
            Some("cmov_1"),
        ),
        (
            "plan usage exceeded",
            vec![std_true.clone()],
            vec![plan("pltl_a", Value::Numeric(5))],
            false,
            RuleType::PlanEntitlementUsageExceeded,
            Some("pltl_a"),
        ),
        (
            "override usage exceeded",
            vec![],
            vec![over(Value::Numeric(3))],
            false,
            RuleType::CompanyOverrideUsageExceeded,
            Some("cmov_1"),
        ),
        (
            "exceeded override loses to allowing plan",
            vec![],
            vec![over(Value::Numeric(3)), plan("pltl_a", Value::Numeric(100))],
            true,
            RuleType::PlanEntitlement,
            Some("pltl_a"),
        ),
        (
            "plan's 1000 beats override's 500",
            vec![],
            vec![
                plan("pltl_a", Value::Numeric(1000)),
                over(Value::Numeric(500)),
            ],
            true,
            RuleType::PlanEntitlement,
            Some("pltl_a"),
        ),
        (
            "unlimited beats any number",
            vec![],
            vec![
                plan("pltl_a", Value::Numeric(1_000_000)),
                plan("pltl_b", Value::Unlimited),
            ],
            true,
            RuleType::PlanEntitlement,
            Some("pltl_b"),
        ),
        (
            "false override always wins",
            vec![],
            vec![plan("pltl_a", Value::Unlimited), over(Value::Bool(false))],
            false,
            RuleType::CompanyOverride,
            Some("cmov_1"),
        ),
        (
            "false plan loses to true add-on",
            vec![],
            vec![
                plan("pltl_a", Value::Bool(false)),
                plan("pltl_b", Value::Bool(true)),
            ],
            true,
            RuleType::PlanEntitlement,
            Some("pltl_b"),
        ),
        (
            "false plan alone denies",
            vec![std_true.clone()],
            vec![plan("pltl_a", Value::Bool(false))],
            false,
            RuleType::PlanEntitlement,
            Some("pltl_a"),
        ),
    ];
    for (name, rules, cands, value, rule_type, rule_id) in cases {
        let mut f = flag(FeatureType::Event);
        f.rules = rules;
        let e = evaluate(&f, Some(&c), None, &cands, now());
        assert_eq!(
            (e.value, e.rule_type, e.rule_id.as_deref()),
            (value, rule_type, rule_id),
            "{name}: {}",
            e.reason
        );
        assert!(!e.reason.is_empty());
    }
}

#[test]
fn reasons_name_the_rule() {
    let c = company_with_usage(0);
    let e = evaluate(
        &flag(FeatureType::Event),
        Some(&c),
        None,
        &[plan("pltl_9", Value::Numeric(10))],
        now(),
    );
    assert_eq!(
        e.reason,
        "Matched plan entitlement rule \"pltl_9: api-calls\" (pltl_9)"
    );
    let ent = e.entitlement.unwrap();
    assert_eq!(
        (ent.allocation, ent.usage, ent.event_name.as_deref()),
        (Some(10), Some(0), Some("api_call"))
    );
    assert_eq!(
        ent.metric_reset_at.unwrap().to_rfc3339(),
        "2026-12-01T00:00:00+00:00"
    );
}

#[test]
fn expired_override_is_ignored_at_read_time() {
    let c = company_with_usage(0);
    let mut o = over(Value::Bool(false));
    o.expires_at = Some(now());
    let e = evaluate(
        &flag(FeatureType::Boolean),
        Some(&c),
        None,
        &[o.clone(), plan("pltl_a", Value::Bool(true))],
        now(),
    );
    assert_eq!((e.value, e.rule_type), (true, RuleType::PlanEntitlement));
    o.expires_at = Some(now() + chrono::Duration::seconds(1));
    let e = evaluate(
        &flag(FeatureType::Boolean),
        Some(&c),
        None,
        &[o, plan("pltl_a", Value::Bool(true))],
        now(),
    );
    assert_eq!((e.value, e.rule_type), (false, RuleType::CompanyOverride));
}

#[test]
fn expired_numeric_override_keeps_usage() {
    // Usage earned under a larger override stays: after it expires, the plan's limit applies.
    let c = company_with_usage(150);
    let mut o = over(Value::Numeric(200));
    o.expires_at = Some(now() - chrono::Duration::seconds(1));
    let e = evaluate(
        &flag(FeatureType::Event),
        Some(&c),
        None,
        &[o, plan("pltl_a", Value::Numeric(100))],
        now(),
    );
    assert_eq!(
        (e.value, e.rule_type),
        (false, RuleType::PlanEntitlementUsageExceeded)
    );
}

#[test]
fn trait_features_and_trait_allocations() {
    let mut c = CompanyContext {
        id: "comp_1".into(),
        ..Default::default()
    };
    c.traits.insert("seats_used", serde_json::json!(4));
    c.traits.insert("seats_bought", serde_json::json!("5"));
    let f = flag(FeatureType::Trait);
    let e = evaluate(
        &f,
        Some(&c),
        None,
        &[plan("pltl_a", Value::Trait("seats_bought".into()))],
        now(),
    );
    assert!(e.value, "{}", e.reason);
    assert_eq!(e.entitlement.as_ref().unwrap().allocation, Some(5));
    assert_eq!(e.entitlement.as_ref().unwrap().usage, Some(4));
    c.traits.insert("seats_used", serde_json::json!(5));
    let e = evaluate(
        &f,
        Some(&c),
        None,
        &[plan("pltl_a", Value::Numeric(5))],
        now(),
    );
    assert_eq!(
        (e.value, e.rule_type),
        (false, RuleType::PlanEntitlementUsageExceeded)
    );
}

#[test]
fn pay_in_advance_uses_quantity() {
    let c = company_with_usage(7);
    let mut p = plan("pltl_a", Value::Numeric(1));
    p.pay_in_advance_quantity = Some(8);
    let e = evaluate(&flag(FeatureType::Event), Some(&c), None, &[p], now());
    assert!(e.value);
    assert_eq!(e.entitlement.unwrap().allocation, Some(8));
}

#[test]
fn metered_entitlements_deny_only_at_the_soft_limit() {
    // (allocation, metered, soft limit, usage) → (value, rule type, reported soft limit)
    let exceeded = RuleType::PlanEntitlementUsageExceeded;
    let matched = RuleType::PlanEntitlement;
    type Case = (i64, bool, Option<i64>, i64, bool, RuleType);
    let table: &[Case] = &[
        // Not metered: the allocation denies.
        (100, false, None, 99, true, matched),
        (100, false, None, 100, false, exceeded),
        // overage / pay_as_you_go without a soft limit: never denied at the allocation.
        (100, true, None, 100, true, matched),
        (100, true, None, 1_000_000, true, matched),
        (0, true, None, 5, true, matched),
        // With a soft limit: allowed below it, denied at and above it.
        (100, true, Some(150), 120, true, matched),
        (100, true, Some(150), 149, true, matched),
        (100, true, Some(150), 150, false, exceeded),
        (100, true, Some(150), 151, false, exceeded),
        (100, true, Some(100), 100, false, exceeded),
    ];
    for &(allocation, metered, soft_limit, usage, value, rule_type) in table {
        let mut p = plan("pltl_a", Value::Numeric(allocation));
        p.metered = metered.then_some(Metered { soft_limit });
        let c = company_with_usage(usage);
        let e = evaluate(&flag(FeatureType::Event), Some(&c), None, &[p], now());
        let case = format!(
            "allocation {allocation}, metered {metered}, soft {soft_limit:?}, usage {usage}"
        );
        assert_eq!((e.value, e.rule_type), (value, rule_type), "{case}");
        let report = e.entitlement.expect("entitlement report");
        // The allocation reported is still the plan's, not the soft limit.
        assert_eq!(report.allocation, Some(allocation), "{case}");
        assert_eq!(report.soft_limit, soft_limit.filter(|_| metered), "{case}");
        if !value {
            assert!(
                e.reason.contains("Soft limit") == metered,
                "{case}: {}",
                e.reason
            );
        }
    }
}

#[test]
fn a_metered_plan_beats_a_smaller_unmetered_one() {
    // Most generous: an overage plan without a soft limit is unlimited in access.
    let c = company_with_usage(500);
    let small = plan("pltl_small", Value::Numeric(1000));
    let mut metered = plan("pltl_metered", Value::Numeric(100));
    metered.metered = Some(Metered::default());
    let e = evaluate(
        &flag(FeatureType::Event),
        Some(&c),
        None,
        &[small.clone(), metered],
        now(),
    );
    assert!(e.value);
    assert_eq!(e.rule_id.as_deref(), Some("pltl_metered"));
    // With a soft limit below the other plan's allocation, the other plan is more generous.
    let mut capped = plan("pltl_capped", Value::Numeric(100));
    capped.metered = Some(Metered {
        soft_limit: Some(200),
    });
    let e = evaluate(
        &flag(FeatureType::Event),
        Some(&c),
        None,
        &[small, capped],
        now(),
    );
    assert_eq!(e.rule_id.as_deref(), Some("pltl_small"));
}

fn grant(granted: f64, used: f64, expires_at: Option<DateTime<Utc>>) -> CreditGrant {
    CreditGrant {
        credit_id: "bcrd_1".into(),
        granted,
        used,
        zeroed: 0.0,
        expires_at,
    }
}

#[test]
fn credit_entitlements_use_balance() {
    let mut c = company_with_usage(0);
    let credit = Value::Credit {
        credit_id: "bcrd_1".into(),
        rate: 2.0,
    };
    let check = |c: &CompanyContext| {
        evaluate(
            &flag(FeatureType::Event),
            Some(c),
            None,
            &[plan("pltl_a", credit.clone())],
            now(),
        )
    };
    c.credit_grants = vec![grant(10.0, 9.0, None)];
    let e = check(&c);
    assert_eq!(
        (e.value, e.rule_type),
        (false, RuleType::PlanEntitlementUsageExceeded)
    );
    c.credit_grants = vec![grant(10.0, 9.0, None), grant(5.0, 4.0, None)];
    let e = check(&c);
    assert!(e.value, "two grants of 1 remaining each cover a rate of 2");
    let b = e.entitlement.unwrap().credit.unwrap();
    assert_eq!((b.total, b.used, b.remaining), (15.0, 13.0, 2.0));
    // A grant stops counting at its expiry instant, before any job zeroes it.
    c.credit_grants = vec![grant(10.0, 0.0, Some(now())), grant(1.0, 0.0, None)];
    let e = check(&c);
    assert!(!e.value);
    assert_eq!(e.entitlement.unwrap().credit.unwrap().remaining, 1.0);
}

#[test]
fn usage_from_an_earlier_window_is_zero() {
    let mut c = company_with_usage(50);
    c.usage[0].window_start -= chrono::Duration::days(31);
    let e = evaluate(
        &flag(FeatureType::Event),
        Some(&c),
        None,
        &[plan("pltl_a", Value::Numeric(10))],
        now(),
    );
    assert!(e.value);
    assert_eq!(e.entitlement.unwrap().usage, Some(0));
}

#[test]
fn unknown_company_sees_only_global_and_standard_rules() {
    let mut f = flag(FeatureType::Boolean);
    f.rules = vec![
        rule(
            "rule_c",
            RuleKind::Standard,
            0,
            true,
            vec![cond(ConditionType::Company, Operator::Eq, &["comp_1"])],
        ),
        rule("rule_all", RuleKind::Standard, 5, true, vec![]),
    ];
    let e = evaluate(&f, None, None, &[plan("pltl_a", Value::Bool(false))], now());
    assert_eq!((e.value, e.rule_id.as_deref()), (true, Some("rule_all")));
}

#[test]
fn conditions_over_plans_users_traits_and_metrics() {
    let mut c = company_with_usage(12);
    c.plan_ids = vec!["plan_pro".into(), "plan_addon".into()];
    c.base_plan_id = Some("plan_pro".into());
    c.traits.insert("tier", serde_json::json!("gold"));
    let u = UserContext {
        id: "user_1".into(),
        traits: Default::default(),
    };
    let metric = Condition {
        event_subtype: Some("api_call".into()),
        metric_value: Some(10),
        metric_period: Some(MetricPeriod::CurrentMonth),
        ..cond(ConditionType::Metric, Operator::Gt, &[])
    };
    let tier = Condition {
        trait_id: Some("tier".into()),
        trait_value: Some("gold".into()),
        ..cond(ConditionType::Trait, Operator::Eq, &[])
    };
    let cases = [
        (
            cond(ConditionType::Plan, Operator::Eq, &["plan_addon"]),
            true,
        ),
        (
            cond(ConditionType::BasePlan, Operator::Eq, &["plan_addon"]),
            false,
        ),
        (
            cond(ConditionType::BasePlan, Operator::Ne, &["plan_addon"]),
            true,
        ),
        (cond(ConditionType::User, Operator::Eq, &["user_1"]), true),
        (
            cond(ConditionType::Company, Operator::Ne, &["comp_1"]),
            false,
        ),
        (metric.clone(), true),
        (
            Condition {
                metric_value: Some(12),
                ..metric
            },
            false,
        ),
        (tier, true),
    ];
    for (cnd, want) in cases {
        let mut f = flag(FeatureType::Boolean);
        f.rules = vec![rule(
            "rule_x",
            RuleKind::Standard,
            0,
            true,
            vec![cnd.clone()],
        )];
        let e = evaluate(&f, Some(&c), Some(&u), &[] as &[Candidate], now());
        assert_eq!(e.value, want, "{cnd:?}");
    }
    // Rules are ANDed within, first match by priority wins.
    let mut f = flag(FeatureType::Boolean);
    f.rules = vec![
        rule(
            "rule_a",
            RuleKind::Standard,
            1,
            true,
            vec![
                cond(ConditionType::Plan, Operator::Eq, &["plan_pro"]),
                cond(ConditionType::User, Operator::Eq, &["user_2"]),
            ],
        ),
        rule(
            "rule_b",
            RuleKind::Standard,
            2,
            true,
            vec![cond(ConditionType::Plan, Operator::Eq, &["plan_pro"])],
        ),
    ];
    let e = evaluate(&f, Some(&c), Some(&u), &[] as &[Candidate], now());
    assert_eq!(e.rule_id.as_deref(), Some("rule_b"));
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        (0i64..50).prop_map(Value::Numeric),
        Just(Value::Unlimited),
        Just(Value::Trait("seats_bought".into())),
    ]
}

fn arb_company() -> impl Strategy<Value = CompanyContext> {
    (0i64..60, 0i64..60, 0i64..60).prop_map(|(usage, seats_used, seats_bought)| {
        let mut c = company_with_usage(usage);
        c.traits.insert("seats_used", serde_json::json!(seats_used));
        c.traits
            .insert("seats_bought", serde_json::json!(seats_bought));
        c
    })
}

fn arb_feature_type() -> impl Strategy<Value = FeatureType> {
    prop_oneof![
        Just(FeatureType::Boolean),
        Just(FeatureType::Event),
        Just(FeatureType::Trait)
    ]
}

proptest! {
    #[test]
    fn adding_an_add_on_never_reduces_access(
        ft in arb_feature_type(),
        company in arb_company(),
        base in proptest::collection::vec(arb_value(), 0..3),
        add_on in arb_value(),
        override_value in proptest::option::of(arb_value()),
        default_value in any::<bool>(),
    ) {
        let mut f = flag(ft);
        f.default_value = default_value;
        let mut cands: Vec<Candidate> = base.into_iter().enumerate().map(|(i, v)| plan(&format!("pltl_{i}"), v)).collect();
        if let Some(v) = override_value { cands.push(over(v)); }
        let before = evaluate(&f, Some(&company), None, &cands, now());
        cands.push(plan("pltl_addon", add_on));
        let after = evaluate(&f, Some(&company), None, &cands, now());
        // Only the entitlement layer can deny; if access was granted before, it still is,
        // unless no entitlement applied before and the default answered.
        if before.value && before.rule_type != RuleType::Default {
            prop_assert!(after.value, "before: {} / after: {}", before.reason, after.reason);
        }
    }

    #[test]
    fn a_false_override_always_denies(
        ft in arb_feature_type(),
        company in arb_company(),
        plans in proptest::collection::vec(arb_value(), 0..4),
        default_value in any::<bool>(),
        std_value in any::<bool>(),
    ) {
        let mut f = flag(ft);
        f.default_value = default_value;
        f.rules = vec![rule("rule_s", RuleKind::Standard, 0, std_value, vec![])];
        let mut cands: Vec<Candidate> = plans.into_iter().enumerate().map(|(i, v)| plan(&format!("pltl_{i}"), v)).collect();
        cands.insert(0, over(Value::Bool(false)));
        let e = evaluate(&f, Some(&company), None, &cands, now());
        prop_assert!(!e.value);
        prop_assert_eq!(e.rule_type, RuleType::CompanyOverride);
    }

    #[test]
    fn candidate_order_does_not_matter(
        ft in arb_feature_type(),
        company in arb_company(),
        values in proptest::collection::vec(arb_value(), 1..5),
        seed in any::<u64>(),
    ) {
        let f = flag(ft);
        let cands: Vec<Candidate> = values.into_iter().enumerate().map(|(i, v)| plan(&format!("pltl_{i}"), v)).collect();
        let mut shuffled = cands.clone();
        let n = shuffled.len();
        shuffled.rotate_left((seed as usize) % n);
        let a = evaluate(&f, Some(&company), None, &cands, now());
        let b = evaluate(&f, Some(&company), None, &shuffled, now());
        prop_assert_eq!(a.value, b.value);
        prop_assert_eq!(a.rule_type, b.rule_type);
        prop_assert_eq!(a.entitlement.as_ref().map(|e| e.allocation), b.entitlement.as_ref().map(|e| e.allocation));
    }
}

#[test]
fn a_billing_cycle_without_subscription_counts_the_calendar_month() {
    // Counters are kept under first_of_month when the company has no billing anchor.
    let c = company_with_usage(7);
    assert_eq!(
        c.usage_of(
            "api_call",
            MetricPeriod::CurrentMonth,
            MonthReset::BillingCycle,
            now()
        ),
        7
    );
    let mut anchored = c.clone();
    anchored.billing_anchor = Some(now() - chrono::Duration::days(3));
    assert_eq!(
        anchored.usage_of(
            "api_call",
            MetricPeriod::CurrentMonth,
            MonthReset::BillingCycle,
            now()
        ),
        0,
        "with a subscription, billing-cycle usage has counters of its own"
    );
}

mod usage_merge {
    use super::super::*;

    fn counter(event: &str, start: i64, count: i64, version: i64) -> UsageCounter {
        UsageCounter {
            event: event.into(),
            period: MetricPeriod::CurrentMonth,
            month_reset: MonthReset::FirstOfMonth,
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
