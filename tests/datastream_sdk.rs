//! The official `schematichq` Python SDK in datastream mode (`tests/sdk/datastream_sdk.py`)
//! against a live server: a differential matrix of companies × flags where every local
//! answer equals `POST /flags/{key}/check` and the server answers no check for the SDK;
//! changes (an override, a plan changed by a Stripe webhook, usage tracked by another client,
//! a flag's default) reaching the SDK's answers within a second; and a server restart
//! survived by the SDK's reconnect. `scripts/test.sh` installs `schematichq[datastream]` and
//! sets `ENTITLED_SDK_PYTHON`.

mod common;
mod fake_stripe;

use std::process::Stdio;
use std::time::Duration;

use common::stripe::{self as s, Item};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

/// The SDK driver: one JSON command per line in, one JSON answer per line out.
struct Sdk {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Sdk {
    fn start(app: &common::TestApp) -> Sdk {
        let python = std::env::var("ENTITLED_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = tokio::process::Command::new(&python)
            .arg("tests/sdk/datastream_sdk.py")
            .arg(&app.base)
            .arg(&app.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{python}: {e} (set ENTITLED_SDK_PYTHON or run scripts/test.sh)")
            });
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Sdk {
            _child: child,
            stdin,
            lines,
        }
    }

    async fn call(&mut self, cmd: Value) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .expect("the SDK driver answers")
            .unwrap()
            .unwrap_or_else(|| panic!("the SDK driver exited on {cmd} (see its stderr above)"));
        serde_json::from_str(&line).unwrap()
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\": \"quit\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self._child.wait()).await;
    }

    async fn matrix(&mut self, companies: &[Value], flags: &[&str]) -> Vec<Vec<bool>> {
        let r = self
            .call(json!({"cmd": "matrix", "companies": companies, "flags": flags}))
            .await;
        serde_json::from_value(r["values"].clone()).unwrap()
    }

    /// Waits until the SDK's answer is `value`; returns the milliseconds it took.
    async fn becomes(&mut self, company: &Value, flag: &str, value: bool) -> f64 {
        let r = self
            .call(json!({"cmd": "wait", "company": company, "flag": flag, "value": value, "timeout": 1.0}))
            .await;
        assert_eq!(
            r["ok"], true,
            "{flag} for {company} did not become {value} within 1 s: {r}"
        );
        r["ms"].as_f64().unwrap()
    }
}

/// Checks the server answered (`entitled_checks_total`, every outcome).
async fn server_checks(app: &common::TestApp) -> u64 {
    app.metric_sum("entitled_checks_total{").await
}

const FLAGS: [&str; 7] = [
    "sso",
    "audit-log",
    "api-calls",
    "reports",
    "seats",
    "projects",
    "ai-tokens",
];

async fn rest_matrix(app: &common::TestApp, companies: &[Value]) -> Vec<Vec<bool>> {
    let mut out = Vec::new();
    for c in companies {
        let mut row = Vec::new();
        for f in FLAGS {
            row.push(app.check(f, c.clone()).await["value"].as_bool().unwrap());
        }
        out.push(row);
    }
    out
}

fn enterprise_item() -> Item<'static> {
    Item {
        id: "si_ent",
        price: "price_demo_enterprise_monthly",
        product: "prod_demo_enterprise",
        quantity: 1,
    }
}

#[tokio::test]
async fn the_sdk_evaluates_locally_like_the_server_and_follows_changes() {
    let fake = fake_stripe::FakeStripe::start(s::API_KEY).await;
    let mut app =
        common::spawn_app_with(&s::fake_config(&fake.base, "fallback_plan = \"free\"")).await;
    app.seed_demo_until("sso").await;
    let plan = |k: &'static str| app.id_of("plans", k);
    let (free, pro, enterprise, analytics) = (
        plan("free").await,
        plan("pro").await,
        plan("enterprise").await,
        plan("analytics").await,
    );
    let feature = |k: &'static str| app.id_of("features", k);
    let (sso, audit, reports, api_calls, projects) = (
        feature("sso").await,
        feature("audit-log").await,
        feature("reports").await,
        feature("api-calls").await,
        feature("projects").await,
    );
    // Credits: Pro's AI tokens cost 2 credits each.
    let credit = app
        .pro_ai_tokens_burn_credit(json!({"name": "Tokens"}), 2.0)
        .await;

    // The companies of the matrix: (key, base plan, add-ons, traits).
    let none: Option<&String> = None;
    let rows: Vec<(&str, Option<&String>, Vec<&String>, Value)> = vec![
        (
            "free",
            Some(&free),
            vec![],
            json!({"seats_used": 1, "projects_count": 0}),
        ),
        ("free-reports-at-limit", Some(&free), vec![], json!({})),
        ("free-reports-under", Some(&free), vec![], json!({})),
        (
            "free-seats-over",
            Some(&free),
            vec![],
            json!({"seats_used": 5}),
        ),
        (
            "pro",
            Some(&pro),
            vec![],
            json!({"seats_used": 1, "projects_count": 4}),
        ),
        (
            "pro-analytics",
            Some(&pro),
            vec![&analytics],
            json!({"projects_count": 12}),
        ),
        (
            "enterprise-trait",
            Some(&enterprise),
            vec![],
            json!({"projects_limit": 20, "projects_count": 5}),
        ),
        (
            "enterprise-trait-over",
            Some(&enterprise),
            vec![],
            json!({"projects_limit": 3, "projects_count": 5}),
        ),
        ("override-bool", Some(&free), vec![], json!({})),
        ("override-negative", Some(&pro), vec![], json!({})),
        ("override-numeric", Some(&free), vec![], json!({})),
        ("override-numeric-less", Some(&pro), vec![], json!({})),
        ("override-unlimited", Some(&free), vec![], json!({})),
        (
            "override-trait",
            Some(&free),
            vec![],
            json!({"projects_count": 4, "custom_projects": 6}),
        ),
        ("override-expired", Some(&free), vec![], json!({})),
        ("credits", Some(&pro), vec![], json!({})),
        ("credits-short", Some(&pro), vec![], json!({})),
        ("fallback", none, vec![], json!({"seats_used": 2})),
    ];
    let mut ids = std::collections::HashMap::new();
    for (key, base, add_ons, traits) in &rows {
        let mut body =
            json!({"keys": {"id": key}, "name": key, "traits": traits, "add_on_ids": add_ons});
        if let Some(b) = base {
            body["base_plan_id"] = json!(b);
        }
        let c = app.create("/companies", body).await;
        ids.insert(key.to_string(), c["id"].as_str().unwrap().to_string());
    }
    let id = |k: &str| ids[k].clone();
    let track = |company: &'static str, event: &'static str, quantity: i64| {
        let app = &app;
        async move {
            let (st, body) = app
                .post(
                    "/events",
                    json!({"event_type": "track", "body": {"event": event, "company": {"id": company}, "quantity": quantity}}),
                )
                .await;
            assert!(st.is_success(), "{body}");
        }
    };
    track("free-reports-at-limit", "report_generated", 5).await;
    track("free-reports-under", "report_generated", 4).await;
    track("override-numeric", "report_generated", 7).await;
    track("override-numeric-less", "report_generated", 5).await;
    track("override-unlimited", "api_call", 5000).await;
    let over = |company: &str, feature: &str, value: Value| {
        let mut body = json!({"company_id": id(company), "feature_id": feature});
        body.as_object_mut()
            .unwrap()
            .extend(value.as_object().unwrap().clone());
        body
    };
    for body in [
        over(
            "override-bool",
            &sso,
            json!({"value_type": "boolean", "value_bool": true}),
        ),
        over(
            "override-negative",
            &audit,
            json!({"value_type": "boolean", "value_bool": false}),
        ),
        over(
            "override-numeric",
            &reports,
            json!({"value_type": "numeric", "value_numeric": 10}),
        ),
        over(
            "override-numeric-less",
            &reports,
            json!({"value_type": "numeric", "value_numeric": 2}),
        ),
        over(
            "override-unlimited",
            &api_calls,
            json!({"value_type": "unlimited"}),
        ),
        over(
            "override-trait",
            &projects,
            json!({"value_type": "trait", "value_trait_id": "custom_projects"}),
        ),
        over(
            "override-expired",
            &sso,
            json!({"value_type": "boolean", "value_bool": true,
                   "expiration_date": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339()}),
        ),
    ] {
        app.create("/company-overrides", body).await;
    }
    for (company, quantity) in [("credits", 10.0), ("credits-short", 1.0)] {
        app.create(
            "/billing/credits/grants/company",
            json!({"company_id": id(company), "credit_id": credit, "quantity": quantity, "reason": "purchased"}),
        )
        .await;
    }
    // The expiring override lapses (the REST answer says so) before the matrix runs.
    common::eventually(Duration::from_secs(5), || async {
        let c = app.check("sso", json!({"id": "override-expired"})).await;
        (c["value"] == false).then_some(())
    })
    .await;

    let companies: Vec<Value> = rows.iter().map(|r| json!({"id": r.0})).collect();
    let mut sdk = Sdk::start(&app);
    let ready = sdk.call(json!({"cmd": "ready", "timeout": 10})).await;
    assert_eq!(
        ready["connected"], true,
        "the SDK's datastream did not connect"
    );

    // The matrix: every local answer equals the server's, and the server answered no check.
    let before = server_checks(&app).await;
    let local = sdk.matrix(&companies, &FLAGS).await;
    let rest_checks_during_sdk = server_checks(&app).await - before;
    let remote = rest_matrix(&app, &companies).await;
    for (i, c) in companies.iter().enumerate() {
        for (j, f) in FLAGS.iter().enumerate() {
            assert_eq!(
                local[i][j], remote[i][j],
                "{f} for {c}: SDK datastream {} vs POST /flags/{f}/check {}",
                local[i][j], remote[i][j]
            );
        }
    }
    assert_eq!(
        rest_checks_during_sdk, 0,
        "the SDK fell back to REST checks during the matrix"
    );
    // The matrix is not trivial: both answers occur for most flags.
    let trues = local.iter().flatten().filter(|v| **v).count();
    assert!(
        trues > 20 && trues < companies.len() * FLAGS.len() - 20,
        "{local:?}"
    );
    eprintln!(
        "matrix: {} companies × {} flags equal, {trues} true, 0 REST checks",
        companies.len(),
        FLAGS.len()
    );

    // An unknown company: the server says so at once and the SDK asks REST, one check per flag.
    let ghost = vec![json!({"id": "ghost"})];
    let before = server_checks(&app).await;
    let local = sdk.matrix(&ghost, &FLAGS).await;
    assert_eq!(server_checks(&app).await - before, FLAGS.len() as u64);
    assert_eq!(local, rest_matrix(&app, &ghost).await);

    // Changes reach the SDK's answers within a second.
    let free_co = json!({"id": "free"});
    assert_eq!(
        sdk.matrix(std::slice::from_ref(&free_co), &["sso"]).await,
        vec![vec![false]]
    );
    app.create(
        "/company-overrides",
        json!({"company_id": id("free"), "feature_id": sso, "value_type": "boolean", "value_bool": true}),
    )
    .await;
    let override_ms = sdk.becomes(&free_co, "sso", true).await;

    // A plan changed by a Stripe webhook: the customer's company moves to Enterprise.
    let cus = json!({"stripe_customer_id": "cus_ds"});
    app.create(
        "/companies",
        json!({"keys": {"stripe_customer_id": "cus_ds"}, "name": "DS"}),
    )
    .await;
    assert_eq!(
        sdk.matrix(std::slice::from_ref(&cus), &["sso"]).await,
        vec![vec![false]]
    );
    let sub = s::subscription("sub_ds", "cus_ds", "active", &[enterprise_item()]);
    fake.put(sub.clone());
    app.webhook_now("customer.subscription.created", "evt_ds_1", sub)
        .await;
    let stripe_ms = sdk.becomes(&cus, "sso", true).await;

    // Usage tracked by another client: 4 of 5 reports, one more reaches the limit.
    let under = json!({"id": "free-reports-under"});
    assert_eq!(
        sdk.matrix(std::slice::from_ref(&under), &["reports"]).await,
        vec![vec![true]]
    );
    track("free-reports-under", "report_generated", 1).await;
    let usage_ms = sdk.becomes(&under, "reports", false).await;

    // A flag's default flipped.
    let flag_id = app.id_of("flags", "priority-support").await;
    assert_eq!(
        sdk.matrix(std::slice::from_ref(&free_co), &["priority-support"])
            .await,
        vec![vec![false]]
    );
    let (st, body) = app
        .put(&format!("/flags/{flag_id}"), json!({"default_value": true}))
        .await;
    assert!(st.is_success(), "{body}");
    let default_ms = sdk.becomes(&free_co, "priority-support", true).await;
    eprintln!(
        "changes reached the SDK in: override {override_ms:.0} ms, stripe plan {stripe_ms:.0} ms, \
         usage {usage_ms:.0} ms, flag default {default_ms:.0} ms"
    );

    // The server restarts on the same address; the SDK reconnects and evaluates locally.
    app.stop_server().await;
    let listener = tokio::net::TcpListener::bind(app.addr).await.unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(entitled::app::run(
        app.config.clone(),
        listener,
        shutdown.clone(),
    ));
    app.wait_ready().await;
    let ready = sdk.call(json!({"cmd": "ready", "timeout": 30})).await;
    assert_eq!(ready["connected"], true, "the SDK did not reconnect");
    // A flag change after the restart reaches it (the SDK re-requests flags on reconnect)…
    let (st, body) = app
        .put(
            &format!("/flags/{flag_id}"),
            json!({"default_value": false}),
        )
        .await;
    assert!(st.is_success(), "{body}");
    sdk.becomes(&json!({"id": "pro"}), "priority-support", false)
        .await;
    // …and companies it had not seen are fetched over the new connection, locally evaluated.
    let before = server_checks(&app).await;
    let fresh: Vec<Value> = ["pro-analytics", "enterprise-trait", "credits"]
        .iter()
        .map(|k| json!({"id": k}))
        .collect();
    let local = sdk.matrix(&fresh, &FLAGS).await;
    assert_eq!(
        server_checks(&app).await - before,
        0,
        "REST checks after the restart"
    );
    assert_eq!(local, rest_matrix(&app, &fresh).await);

    sdk.quit().await;
    shutdown.cancel();
    let _ = server.await;
}
