//! The admin console through the real HTTP stack against real Postgres: a real headless
//! Chromium (WebDriver) for what a person does, plain HTTP for what an attacker does
//! (forged and replayed forms).

mod common;

use common::webdriver::Browser;
use common::{spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::json;

/// Creates a console user with the real CLI; returns the one-time password (last line).
fn create_console_user(app: &TestApp, email: &str, viewer: bool) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_entitled"));
    cmd.args(["console-user", "create", "--email", email])
        .env("DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "warn");
    if viewer {
        cmd.arg("--viewer");
    }
    let out = cmd.output().expect("run entitled console-user create");
    assert!(
        out.status.success(),
        "console-user create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().last().unwrap().trim().to_string()
}

/// A cookie-less client that does not follow redirects: we read `Set-Cookie` ourselves.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()?
                .trim()
                .strip_prefix(&format!("{name}="))
                .map(str::to_string)
        })
        .filter(|v| !v.is_empty())
}

/// The value of the first hidden `csrf_token` input of `html`.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf_token\" value=\"")
        .expect("a csrf_token field");
    let rest = &html[at + "name=\"csrf_token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The login form's answer after POSTing `email` and `password` over HTTP (with the form's
/// CSRF token and cookie).
async fn post_login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    let client = raw_client();
    let page = client
        .get(format!("{}/console/login", app.base))
        .send()
        .await
        .unwrap();
    let login_cookie = set_cookie(&page, "entitled_console_login").expect("login csrf cookie");
    let csrf = csrf_of(&page.text().await.unwrap());
    client
        .post(format!("{}/console/login", app.base))
        .header("cookie", format!("entitled_console_login={login_cookie}"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("email", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

/// The login form's status after POSTing `email` and `password` over HTTP, and the session
/// cookie when it set one.
async fn http_sign_in(app: &TestApp, email: &str, password: &str) -> (StatusCode, Option<String>) {
    let resp = post_login(app, email, password).await;
    let status = resp.status();
    (status, set_cookie(&resp, "entitled_console"))
}

/// Runs `entitled console-user {args}` on the app's database.
fn console_user(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_entitled"))
        .arg("console-user")
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .output()
        .unwrap()
}

/// Signs in over HTTP and replaces the one-time password; the session cookie.
async fn http_session(app: &TestApp, email: &str, one_time: &str) -> String {
    let (status, cookie) = http_sign_in(app, email, one_time).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = cookie.expect("session cookie");
    let (_, page) = get_page(app, &cookie, "/console/password").await;
    let csrf = csrf_of(&page);
    let resp = raw_client()
        .post(format!("{}/console/password", app.base))
        .header("cookie", format!("entitled_console={cookie}"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("new_password", "correct horse battery staple"),
            ("confirm_password", "correct horse battery staple"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    cookie
}

async fn get_page(app: &TestApp, cookie: &str, path: &str) -> (StatusCode, String) {
    let resp = raw_client()
        .get(format!("{}{path}", app.base))
        .header("cookie", format!("entitled_console={cookie}"))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn post_form(app: &TestApp, cookie: &str, path: &str, form: &[(&str, String)]) -> StatusCode {
    raw_client()
        .post(format!("{}{path}", app.base))
        .header("cookie", format!("entitled_console={cookie}"))
        .form(form)
        .send()
        .await
        .unwrap()
        .status()
}

/// The demo catalog and one company without a plan (so `custom-branding` is false).
async fn seeded() -> (TestApp, String) {
    let app = spawn_app().await;
    app.seed_demo().await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "acme-42", "crm_id": "crm-9001"}, "name": "Acme Rockets",
                   "traits": {"seats_bought": 12}}),
        )
        .await;
    (app, company["id"].as_str().unwrap().to_string())
}

fn screenshot_dir() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::path::Path::new(&target).join("console-screenshots")
}

/// Signs in in the browser with `password`; returns the page's URL afterwards.
async fn browser_sign_in(b: &Browser, app: &TestApp, email: &str, password: &str) -> String {
    b.goto(&format!("{}/console/login", app.base)).await;
    let e = b.testid("login-email").await;
    b.clear(&e).await;
    b.type_text(&e, email).await;
    b.type_text(&b.testid("login-password").await, password)
        .await;
    b.click(&b.testid("login-submit").await).await;
    b.url().await
}

/// Signs out in the browser and waits for the sign-in page.
async fn sign_out(b: &Browser) {
    b.click(&b.testid("sign-out").await).await;
    b.wait_until("the sign-in page", || async {
        b.url().await.ends_with("/console/login")
    })
    .await;
}

#[tokio::test]
async fn an_admin_finds_a_company_grants_an_override_and_retries_a_stripe_event_in_chromium() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let (app, company_id) = seeded().await;
    // On the free plan (no custom branding there), assigned by hand.
    let free = app.id_of("plans", "free").await;
    app.create(
        "/companies",
        json!({"keys": {"id": "acme-42"}, "base_plan_id": free}),
    )
    .await;
    let admin = "ada@example.com";
    let one_time = create_console_user(&app, admin, false);

    // Sign in: the one-time password asks for a new one first.
    browser_sign_in(&b, &app, admin, &one_time).await;
    b.wait_until("the password page", || async {
        b.url().await.ends_with("/console/password")
    })
    .await;
    let new_password = "a much longer secret 42";
    b.type_text(&b.testid("new-password").await, new_password)
        .await;
    b.type_text(&b.testid("confirm-password").await, new_password)
        .await;
    b.click(&b.testid("password-submit").await).await;

    // Find the company by one of its keys.
    let search = b.testid("company-search").await;
    b.type_text(&search, "crm-90").await;
    b.click(&b.testid("company-search-submit").await).await;
    b.wait_until("the search's page", || async {
        b.url().await.contains("q=crm-90")
    })
    .await;
    b.wait_until("one search hit", || async {
        b.find_all("[data-testid=\"company-result\"]").await.len() == 1
    })
    .await;
    let hit = b.testid("company-result").await;
    assert_eq!(
        b.attr(&hit, "data-company-id").await.as_deref(),
        Some(company_id.as_str())
    );
    b.click(&b.find("[data-testid=\"company-result\"] a").await)
        .await;

    // Its plan, assigned by hand.
    let plan = b.testid("company-plan").await;
    assert!(b.text(&plan).await.contains("Free"));
    assert_eq!(b.text(&b.testid("plan-source").await).await, "manual");

    // Its answer for custom-branding is false, as the check endpoint says.
    let answer = b.testid("feature-answer-custom-branding").await;
    assert_eq!(
        b.attr(&answer, "data-value").await.as_deref(),
        Some("false")
    );
    let checked = app.check("custom-branding", json!({"id": "acme-42"})).await;
    assert_eq!(checked["value"], false);
    assert!(b
        .text(&answer)
        .await
        .contains(checked["reason"].as_str().unwrap()));

    // Grant custom-branding for 30 days with a note.
    let feature_id = app.id_of("features", "custom-branding").await;
    b.testid("override-create").await;
    b.select("override-feature", &feature_id).await;
    b.select("override-value-type", "boolean").await;
    let value = b.testid("override-value").await;
    b.clear(&value).await;
    b.type_text(&value, "true").await;
    b.select("override-expires", "30").await;
    b.type_text(
        &b.testid("override-note").await,
        "Pilot of the white-label portal, asked by Sam (AE)",
    )
    .await;
    b.click(&b.testid("override-submit").await).await;

    // The answer flips to true on the company page, and the API agrees.
    b.wait_until("the company page after the write", || async {
        b.url().await.contains("done=override-created")
    })
    .await;
    b.wait_until("the answer to flip", || async {
        let e = b.testid("feature-answer-custom-branding").await;
        b.attr(&e, "data-value").await.as_deref() == Some("true")
    })
    .await;
    assert!(b.source().await.contains("Override created."));
    let checked = app.check("custom-branding", json!({"id": "acme-42"})).await;
    assert_eq!(checked["value"], true, "{checked}");
    let (_, overrides) = app
        .get(&format!("/company-overrides?company_id={company_id}"))
        .await;
    let o = &overrides["data"][0];
    assert_eq!(
        o["note"],
        "Pilot of the white-label portal, asked by Sam (AE)"
    );
    let expires: chrono::DateTime<chrono::Utc> =
        o["expiration_date"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.1).contains(&days), "expires in {days} days");
    // The note's author is recorded beside it.
    assert!(b
        .text(&b.testid("override-author").await)
        .await
        .contains(admin));

    // A reviewer can look at the company page.
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join("company-page.png"), &png).unwrap();

    // The audit page shows who did it, filtered by the company.
    b.click(&b.testid("nav-audit").await).await;
    let entry = b.testid("audit-entry").await;
    let text = b.text(&entry).await;
    assert!(
        text.contains(admin) && text.contains("override.create"),
        "{text}"
    );
    b.goto(&format!("{}/console/audit?company={company_id}", app.base))
        .await;
    assert_eq!(b.find_all("[data-testid=\"audit-entry\"]").await.len(), 1);
    b.goto(&format!(
        "{}/console/audit?person=nobody@example.com",
        app.base
    ))
    .await;
    assert!(b.find_all("[data-testid=\"audit-entry\"]").await.is_empty());

    // A Stripe event that failed to apply: retried from the Stripe page, it applies.
    let env_id: String =
        sqlx::query_scalar("SELECT id FROM environments WHERE key = 'development'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let payload = std::fs::read_to_string("fixtures/stripe/customer.created.json").unwrap();
    let event: serde_json::Value = serde_json::from_str(&payload).unwrap();
    let event_id = event["id"].as_str().unwrap();
    sqlx::query(
        "INSERT INTO stripe_events (environment_id, id, type, object_id, created, payload, status,
             attempts, error, next_attempt_at)
         VALUES ($1, $2, 'customer.created', $3, now(), $4::json, 'failed', 3,
                 'database was unavailable', now() + interval '1 day')",
    )
    .bind(&env_id)
    .bind(event_id)
    .bind(event["data"]["object"]["id"].as_str())
    .bind(&payload)
    .execute(&app.pool)
    .await
    .unwrap();
    b.click(&b.testid("nav-stripe").await).await;
    b.click(&b.testid("inbox-status-failed").await).await;
    b.wait_until("the failed events", || async {
        b.url().await.contains("status=failed")
    })
    .await;
    let row = b.testid("inbox-event").await;
    assert_eq!(
        b.attr(&row, "data-event-id").await.as_deref(),
        Some(event_id)
    );
    b.click(
        &b.find(&format!(
            "[data-event-id=\"{event_id}\"] [data-testid=\"inbox-retry\"]"
        ))
        .await,
    )
    .await;
    b.wait_until("the retry to land", || async {
        b.url().await.contains("done=event-retried")
    })
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = $1")
        .bind(event_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "applied");
    let row = b.find(&format!("[data-event-id=\"{event_id}\"]")).await;
    assert_eq!(
        b.attr(&row, "data-status").await.as_deref(),
        Some("applied")
    );
    // Its JSON, as received.
    b.click(&b.find(&format!("[data-event-id=\"{event_id}\"] a")).await)
        .await;
    let json_text = b.text(&b.testid("inbox-event-json").await).await;
    assert!(json_text.contains("cus_TqvAcme0001xQ"), "{json_text}");

    // A viewer sees the company but no write control.
    let viewer = "vic@example.com";
    let viewer_once = create_console_user(&app, viewer, true);
    sign_out(&b).await;
    browser_sign_in(&b, &app, viewer, &viewer_once).await;
    b.type_text(&b.testid("new-password").await, new_password)
        .await;
    b.type_text(&b.testid("confirm-password").await, new_password)
        .await;
    b.click(&b.testid("password-submit").await).await;
    b.testid("company-search").await;
    b.goto(&format!("{}/console/companies/{company_id}", app.base))
        .await;
    let answer = b.testid("feature-answer-custom-branding").await;
    assert_eq!(b.attr(&answer, "data-value").await.as_deref(), Some("true"));
    for control in [
        "override-create",
        "override-submit",
        "override-delete",
        "override-edit",
    ] {
        assert!(
            b.find_all(&format!("[data-testid=\"{control}\"]"))
                .await
                .is_empty(),
            "a viewer sees {control}"
        );
    }
    b.goto(&format!("{}/console/stripe", app.base)).await;
    b.testid("inbox-event").await;
    assert!(b.find_all("[data-testid=\"inbox-retry\"]").await.is_empty());
    assert!(b
        .find_all("[data-testid=\"reconcile-now\"]")
        .await
        .is_empty());
    sign_out(&b).await;

    // Five wrong passwords lock the account: the right one is refused for a while.
    for _ in 0..5 {
        browser_sign_in(&b, &app, admin, "not the password").await;
        b.testid("login-error").await;
    }
    browser_sign_in(&b, &app, admin, new_password).await;
    let error = b.text(&b.testid("login-error").await).await;
    assert!(error.contains("locked"), "{error}");
    assert!(b.url().await.ends_with("/console/login"));
    assert!(b.cookie("entitled_console").await.is_none());
}

#[tokio::test]
async fn forged_and_replayed_writes_get_403_and_nothing_is_written() {
    let (app, company_id) = seeded().await;
    let admin_once = create_console_user(&app, "ada@example.com", false);
    let viewer_once = create_console_user(&app, "vic@example.com", true);
    let admin = http_session(&app, "ada@example.com", &admin_once).await;
    let viewer = http_session(&app, "vic@example.com", &viewer_once).await;
    let feature_id = app.id_of("features", "sso").await;
    let path = format!("/console/companies/{company_id}/overrides");

    // The admin's own form, as the page renders it, works with the admin's cookie…
    let (status, page) = get_page(&app, &admin, &format!("/console/companies/{company_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-testid=\"override-create\""));
    let admin_csrf = csrf_of(&page);
    let replay: Vec<(&str, String)> = vec![
        ("csrf_token", admin_csrf.clone()),
        ("feature_id", feature_id.clone()),
        ("value_type", "boolean".into()),
        ("value", "true".into()),
        ("expires", "7".into()),
        ("note", "replayed".into()),
    ];
    let with_token = |token: Option<&str>| -> Vec<(&str, String)> {
        let mut f = replay[1..].to_vec();
        if let Some(t) = token {
            f.insert(0, ("csrf_token", t.to_string()));
        }
        f
    };

    // …but replayed with the viewer's cookie it is refused.
    assert_eq!(
        post_form(&app, &viewer, &path, &replay).await,
        StatusCode::FORBIDDEN
    );
    // So is the viewer's own token: viewers may not write.
    let (_, viewer_page) =
        get_page(&app, &viewer, &format!("/console/companies/{company_id}")).await;
    assert!(!viewer_page.contains("data-testid=\"override-create\""));
    let viewer_csrf = csrf_of(&viewer_page);
    assert_eq!(
        post_form(&app, &viewer, &path, &with_token(Some(&viewer_csrf))).await,
        StatusCode::FORBIDDEN
    );

    // Without a CSRF token, or with a wrong one, the admin's cookie alone gets 403.
    assert_eq!(
        post_form(&app, &admin, &path, &with_token(None)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_form(&app, &admin, &path, &with_token(Some("0000"))).await,
        StatusCode::FORBIDDEN
    );
    // Signing in needs its token too.
    let resp = raw_client()
        .post(format!("{}/console/login", app.base))
        .form(&[("email", "ada@example.com"), ("password", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM company_overrides")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "a refused write wrote nothing");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM console_audit")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, 0);

    // The admin's replay itself goes through, and is audited in the same transaction.
    assert_eq!(
        post_form(&app, &admin, &path, &replay).await,
        StatusCode::SEE_OTHER
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM console_audit WHERE action = 'override.create' AND actor_email = 'ada@example.com'
           AND after IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn a_refused_override_shows_the_apis_message_next_to_its_field_and_saves_nothing() {
    let (app, company_id) = seeded().await;
    let once = create_console_user(&app, "ada@example.com", false);
    let admin = http_session(&app, "ada@example.com", &once).await;
    let (_, page) = get_page(&app, &admin, &format!("/console/companies/{company_id}")).await;
    let csrf = csrf_of(&page);
    let feature_id = app.id_of("features", "api-calls").await;
    let path = format!("/console/companies/{company_id}/overrides");
    let client = raw_client();
    let send = |form: Vec<(&'static str, String)>| {
        client
            .post(format!("{}{path}", app.base))
            .header("cookie", format!("entitled_console={admin}"))
            .form(&form)
            .send()
    };
    // Refused with 400 and the message beside its field: no note; a date in the past (the
    // API's own message, beside the expiry).
    // (the form's fields after the value, the texts the answer must show)
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let refused: [Case; 2] = [
        (
            &[("expires", "30"), ("note", " ")],
            &["data-testid=\"override-note-error\""],
        ),
        (
            &[
                ("expires", "date"),
                ("expires_date", "2001-01-01"),
                ("note", "too late"),
            ],
            &[
                "data-testid=\"override-expires-error\"",
                "is not in the future",
            ],
        ),
    ];
    for (fields, expected) in refused {
        let mut form = vec![
            ("csrf_token", csrf.clone()),
            ("feature_id", feature_id.clone()),
            ("value_type", "numeric".into()),
            ("value", "100".into()),
        ];
        form.extend(fields.iter().map(|(k, v)| (*k, v.to_string())));
        let resp = send(form).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{fields:?}");
        let html = resp.text().await.unwrap();
        for e in expected {
            assert!(html.contains(e), "{html}");
        }
    }
    // A value the API refuses for the feature's type (a boolean for an event feature).
    let resp = send(vec![
        ("csrf_token", csrf.clone()),
        ("feature_id", "feat_nope".into()),
        ("value_type", "boolean".into()),
        ("value", "true".into()),
        ("expires", "7".into()),
        ("note", "no such feature".into()),
    ])
    .await
    .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM company_overrides")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM console_audit")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, 0);
}

#[tokio::test]
async fn search_finds_companies_by_name_key_and_id_and_filters_by_plan() {
    let (app, company_id) = seeded().await;
    app.create(
        "/companies",
        json!({"keys": {"id": "globex"}, "name": "Globex"}),
    )
    .await;
    let once = create_console_user(&app, "vic@example.com", true);
    let viewer = http_session(&app, "vic@example.com", &once).await;
    let hits = |html: &str| html.matches("data-testid=\"company-result\"").count();
    for (q, n) in [
        ("acme", 1),
        ("ACME R", 1),
        ("crm-9001", 1),
        ("acme-4", 1),
        ("glob", 1),
        ("%", 0),
        ("_cme", 0),
        ("zzz", 0),
    ] {
        let (status, html) = get_page(
            &app,
            &viewer,
            &format!("/console/companies?q={}", urlencode(q)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(hits(&html), n, "search {q:?}");
    }
    let (_, html) = get_page(&app, &viewer, &format!("/console/companies?q={company_id}")).await;
    assert_eq!(hits(&html), 1);
    let (_, html) = get_page(&app, &viewer, "/console/companies").await;
    assert_eq!(hits(&html), 2);
    // The plan filter: nobody is on pro yet.
    let pro = app.id_of("plans", "pro").await;
    let (_, html) = get_page(&app, &viewer, &format!("/console/companies?plan={pro}")).await;
    assert_eq!(hits(&html), 0);
    // Bad input names the problem.
    let (status, html) = get_page(&app, &viewer, "/console/companies?offset=-3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("offset"), "{html}");
    let (status, html) = get_page(&app, &viewer, "/console/companies?plan=plan_nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("plan"), "{html}");
    // Every page renders for a viewer.
    for path in [
        "/console/plans",
        "/console/features",
        "/console/stripe",
        "/console/insights",
        "/console/audit",
    ] {
        let (status, html) = get_page(&app, &viewer, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
    }
    let (status, _) = get_page(&app, &viewer, "/console/companies/comp_missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("q", s)]).unwrap()[2..].to_string()
}

#[tokio::test]
async fn sessions_cookies_rate_limits_and_the_cli() {
    let app = spawn_app().await;
    // Without a session, pages send you to sign in.
    let resp = raw_client()
        .get(format!("{}/console/companies", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/console/login");

    let once = create_console_user(&app, "Ada@Example.com", false);
    // The email is unique (case-insensitively).
    let out = console_user(&app, &["create", "--email", "ada@example.com"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // The session cookie is HttpOnly and SameSite=Strict.
    let resp = post_login(&app, "ada@example.com", &once).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/console/password");
    let header = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("entitled_console="))
        .unwrap();
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Strict"),
        "{header}"
    );
    assert!(!header.contains("Secure"), "{header}");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let cookie = set_cookie(&resp, "entitled_console").unwrap();
    // Until the one-time password is replaced, every page leads to the password page.
    let (status, _) = get_page(&app, &cookie, "/console/companies").await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // reset-password ends the session and prints a new one-time password.
    let out = console_user(&app, &["reset-password", "--email", "ada@example.com"]);
    assert!(out.status.success());
    let again = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(again, once);
    let (status, _) = get_page(&app, &cookie, "/console/password").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the old session ended");
    let (status, _) = http_sign_in(&app, "ada@example.com", &once).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password is gone");
    let session = http_session(&app, "ada@example.com", &again).await;
    let (status, _) = get_page(&app, &session, "/console/companies").await;
    assert_eq!(status, StatusCode::OK);

    // disable: sessions end and sign-in is refused.
    let out = console_user(&app, &["disable", "--email", "ada@example.com"]);
    assert!(out.status.success());
    let (status, _) = get_page(&app, &session, "/console/companies").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, cookie) =
        http_sign_in(&app, "ada@example.com", "correct horse battery staple").await;
    assert_eq!((status, cookie), (StatusCode::UNAUTHORIZED, None));

    // Twenty attempts per address per 15 minutes, then 429 (4 were made above).
    for _ in 0..16 {
        let (status, _) = http_sign_in(&app, "nobody@example.com", "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = http_sign_in(&app, "nobody@example.com", "x").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // The sign-ins are counted by outcome.
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("entitled_console_sign_ins_total{outcome=\"rate_limited\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("entitled_console_requests_total{page=\"login\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_console_is_off_when_disabled() {
    let app = common::spawn_app_with("[console]\nenabled = false\n").await;
    let resp = raw_client()
        .get(format!("{}/console/login", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn secure_cookies_idle_sessions_and_config_errors_naming_the_key() {
    let err = entitled::config::Config::from_layers(
        Some(("bad.toml", "[console]\nsession_idle_minutes = 0\n")),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("console.session_idle_minutes"), "{err}");

    let app =
        common::spawn_app_with("[console]\nsecure_cookies = true\nsession_idle_minutes = 5\n")
            .await;
    let page = raw_client()
        .get(format!("{}/console/login", app.base))
        .send()
        .await
        .unwrap();
    let header = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        header.contains("; Secure") && header.contains("HttpOnly"),
        "{header}"
    );
    let once = create_console_user(&app, "ada@example.com", false);
    let session = http_session(&app, "ada@example.com", &once).await;
    let (status, _) = get_page(&app, &session, "/console/companies").await;
    assert_eq!(status, StatusCode::OK);
    // Unused for longer than session_idle_minutes: signed out.
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '6 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, _) = get_page(&app, &session, "/console/companies").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // The next sign-in sweeps the dead session away.
    http_sign_in(&app, "ada@example.com", "correct horse battery staple").await;
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "only the new session is left");
}

#[tokio::test]
async fn plan_entitlements_are_added_and_removed_from_the_plans_page() {
    let (app, _) = seeded().await;
    let once = create_console_user(&app, "ada@example.com", false);
    let admin = http_session(&app, "ada@example.com", &once).await;
    let (status, page) = get_page(&app, &admin, "/console/plans").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);
    let free = app.id_of("plans", "free").await;
    let sso = app.id_of("features", "sso").await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "tiny"}, "name": "Tiny", "base_plan_id": free}),
        )
        .await;
    assert!(company["id"].is_string());
    assert_eq!(
        app.check("sso", json!({"id": "tiny"})).await["value"],
        false
    );
    let path = format!("/console/plans/{free}/entitlements");
    let add = |value_type: &str, value: &str, period: &str| {
        vec![
            ("csrf_token", csrf.clone()),
            ("feature_id", sso.clone()),
            ("value_type", value_type.to_string()),
            ("value", value.to_string()),
            ("metric_period", period.to_string()),
        ]
    };
    assert_eq!(
        post_form(&app, &admin, &path, &add("boolean", "true", "")).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.check("sso", json!({"id": "tiny"})).await["value"], true);
    // The same feature again: the API's conflict, shown on the page; nothing changes.
    let resp = raw_client()
        .post(format!("{}{path}", app.base))
        .header("cookie", format!("entitled_console={admin}"))
        .form(&add("boolean", "false", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("data-testid=\"entitlement-error\""));
    assert_eq!(app.check("sso", json!({"id": "tiny"})).await["value"], true);
    // A value that is no number for a numeric entitlement: refused before the API.
    let resp = raw_client()
        .post(format!("{}{path}", app.base))
        .header("cookie", format!("entitled_console={admin}"))
        .form(&add("numeric", "lots", "current_month"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let entitlement: String = sqlx::query_scalar(
        "SELECT id FROM plan_entitlements WHERE plan_id = $1 AND feature_id = $2",
    )
    .bind(&free)
    .bind(&sso)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let del = vec![("csrf_token", csrf.clone())];
    assert_eq!(
        post_form(
            &app,
            &admin,
            &format!("/console/plans/entitlements/{entitlement}/delete"),
            &del
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        app.check("sso", json!({"id": "tiny"})).await["value"],
        false
    );
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM console_audit ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        actions,
        ["plan_entitlement.create", "plan_entitlement.delete"]
    );
}

#[tokio::test]
async fn features_are_created_and_edited_with_the_apis_validation_and_audited() {
    let (app, _) = seeded().await;
    let once = create_console_user(&app, "ada@example.com", false);
    let admin = http_session(&app, "ada@example.com", &once).await;
    let (status, page) = get_page(&app, &admin, "/console/features").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-testid=\"feature-create\""));
    let csrf = csrf_of(&page);
    let form = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut f = vec![("csrf_token", csrf.clone())];
        f.extend(pairs.iter().map(|(k, v)| (*k, v.to_string())));
        f
    };

    // An event feature without its event: the API's message, beside the event field.
    let resp = raw_client()
        .post(format!("{}/console/features", app.base))
        .header("cookie", format!("entitled_console={admin}"))
        .form(&form(&[("name", "Exports"), ("feature_type", "event")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("data-testid=\"feature-event-error\""),
        "{html}"
    );
    assert!(
        html.contains("value=\"Exports\""),
        "the form keeps what was sent"
    );

    // Created with a default of true: its flag answers true for anyone.
    let path = "/console/features";
    let created = form(&[
        ("name", "Exports"),
        ("feature_type", "event"),
        ("event_subtype", "export"),
        ("default_value", "true"),
    ]);
    assert_eq!(
        post_form(&app, &admin, path, &created).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.check("exports", json!({})).await["value"], true);
    // The same key again: the API's conflict.
    let resp = raw_client()
        .post(format!("{}{path}", app.base))
        .header("cookie", format!("entitled_console={admin}"))
        .form(&created)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // Edited: default false.
    let feature_id = app.id_of("features", "exports").await;
    let edit = form(&[
        ("name", "Data exports"),
        ("description", "CSV"),
        ("default_value", "false"),
    ]);
    assert_eq!(
        post_form(
            &app,
            &admin,
            &format!("/console/features/{feature_id}"),
            &edit
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.check("exports", json!({})).await["value"], false);
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM console_audit ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(actions, ["feature.create", "feature.update"]);
    // A viewer gets neither the forms nor the writes.
    let vonce = create_console_user(&app, "vic@example.com", true);
    let viewer = http_session(&app, "vic@example.com", &vonce).await;
    let (_, page) = get_page(&app, &viewer, "/console/features").await;
    assert!(!page.contains("data-testid=\"feature-create\""));
    assert!(!page.contains("data-testid=\"feature-edit\""));
    let vform = vec![("csrf_token", csrf_of(&page)), ("name", "Nope".to_string())];
    assert_eq!(
        post_form(&app, &viewer, path, &vform).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn overrides_are_edited_and_deleted_with_before_and_after_audited() {
    let (app, company_id) = seeded().await;
    let once = create_console_user(&app, "ada@example.com", false);
    let admin = http_session(&app, "ada@example.com", &once).await;
    let (_, page) = get_page(&app, &admin, &format!("/console/companies/{company_id}")).await;
    let csrf = csrf_of(&page);
    let feature_id = app.id_of("features", "projects").await;
    let base = format!("/console/companies/{company_id}/overrides");
    let create = vec![
        ("csrf_token", csrf.clone()),
        ("feature_id", feature_id),
        ("value_type", "numeric".to_string()),
        ("value", "5".to_string()),
        ("expires", "never".to_string()),
        ("note", "five projects for the pilot".to_string()),
    ];
    assert_eq!(
        post_form(&app, &admin, &base, &create).await,
        StatusCode::SEE_OTHER
    );
    let override_id: String = sqlx::query_scalar("SELECT id FROM company_overrides")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (_, page) = get_page(&app, &admin, &format!("/console/companies/{company_id}")).await;
    assert!(page.contains("five projects for the pilot"));
    assert!(page.contains("data-testid=\"override-edit\""));

    // Edit: more projects, an expiry date, a new note.
    let edit = vec![
        ("csrf_token", csrf.clone()),
        ("value", "8".to_string()),
        ("expires_date", "2099-03-01".to_string()),
        ("note", "eight after the renewal call".to_string()),
    ];
    let path = format!("{base}/{override_id}");
    assert_eq!(
        post_form(&app, &admin, &path, &edit).await,
        StatusCode::SEE_OTHER
    );
    let (_, o) = app.get(&format!("/company-overrides/{override_id}")).await;
    assert_eq!(o["data"]["value_numeric"], 8);
    assert_eq!(o["data"]["note"], "eight after the renewal call");
    assert!(o["data"]["expiration_date"]
        .as_str()
        .unwrap()
        .starts_with("2099-03-01"));
    // A value the type refuses: 400, and the override is unchanged.
    let bad = vec![
        ("csrf_token", csrf.clone()),
        ("value", "eight".to_string()),
        ("note", "x".to_string()),
    ];
    assert_eq!(
        post_form(&app, &admin, &path, &bad).await,
        StatusCode::BAD_REQUEST
    );

    // Delete.
    let del = vec![("csrf_token", csrf.clone())];
    assert_eq!(
        post_form(&app, &admin, &format!("{path}/delete"), &del).await,
        StatusCode::SEE_OTHER
    );
    let (status, _) = app.get(&format!("/company-overrides/{override_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Each write audited with the override before and after it.
    let rows: Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT action, before, after FROM console_audit ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        actions,
        ["override.create", "override.update", "override.delete"]
    );
    assert_eq!(rows[1].1.as_ref().unwrap()["value_numeric"], 5);
    assert_eq!(rows[1].2.as_ref().unwrap()["value_numeric"], 8);
    assert!(rows[2].2.is_none());

    // Reconcile now without a Stripe key: the API's 422, shown as a page.
    let (status, html) = {
        let resp = raw_client()
            .post(format!("{}/console/stripe/reconcile", app.base))
            .header("cookie", format!("entitled_console={admin}"))
            .form(&[("csrf_token", csrf.as_str())])
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("stripe_api_key") || html.contains("Stripe"),
        "{html}"
    );
}

#[tokio::test]
async fn the_environment_switcher_scopes_every_page() {
    let app = common::spawn_app_with(
        "[[environments]]\nkey = \"a\"\nname = \"A\"\n[[environments]]\nkey = \"b\"\nname = \"B\"\n",
    )
    .await;
    // A company in environment b only (the test app's key is environment a's).
    let b_key = common::create_api_key(&app.pool, "b").await;
    // The server hears of the new key through its listener.
    common::eventually(std::time::Duration::from_secs(5), || async {
        let (status, _) = app
            .send(
                reqwest::Method::POST,
                "/companies",
                Some(&json!({"keys": {"id": "only-in-b"}, "name": "Bee Corp"})),
                Some(&b_key),
            )
            .await;
        status.is_success().then_some(())
    })
    .await;
    let once = create_console_user(&app, "ada@example.com", false);
    let admin = http_session(&app, "ada@example.com", &once).await;
    let (_, page) = get_page(&app, &admin, "/console/companies?q=only-in-b").await;
    assert!(!page.contains("Bee Corp"), "environment a is the default");
    let csrf = csrf_of(&page);
    let switch = vec![
        ("csrf_token", csrf.clone()),
        ("environment", "b".to_string()),
    ];
    assert_eq!(
        post_form(&app, &admin, "/console/environment", &switch).await,
        StatusCode::SEE_OTHER
    );
    let (_, page) = get_page(&app, &admin, "/console/companies?q=only-in-b").await;
    assert!(page.contains("Bee Corp"));
    let unknown = vec![("csrf_token", csrf), ("environment", "nope".to_string())];
    assert_eq!(
        post_form(&app, &admin, "/console/environment", &unknown).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn flag_rules_are_replaced_from_their_page_with_the_apis_validation() {
    let (app, _) = seeded().await;
    let once = create_console_user(&app, "ada@example.com", false);
    let admin = http_session(&app, "ada@example.com", &once).await;
    let flag_id = app.id_of("flags", "sso").await;
    let path = format!("/console/flags/{flag_id}/rules");
    let (status, page) = get_page(&app, &admin, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-testid=\"rules-edit\""));
    let csrf = csrf_of(&page);
    let send = |rules: &str| {
        raw_client()
            .post(format!("{}{path}", app.base))
            .header("cookie", format!("entitled_console={admin}"))
            .form(&[("csrf_token", csrf.as_str()), ("rules", rules)])
            .send()
    };
    assert_eq!(
        app.check("sso", json!({"id": "acme-42"})).await["value"],
        false
    );

    // Not JSON: 400, the text kept in the textarea.
    let resp = send("{not json").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert!(html.contains("data-testid=\"rules-error\"") && html.contains("{not json"));
    // The API's validation, naming the rule and condition by path.
    let bad = r#"{"rules": [{"name": "big", "priority": 1, "value": true,
        "conditions": [{"condition_type": "trait", "operator": "gt"}]}]}"#;
    let resp = send(bad).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert!(html.contains("rules[0].conditions[0]"), "{html}");
    assert_eq!(
        app.check("sso", json!({"id": "acme-42"})).await["value"],
        false
    );

    // Companies with 10 or more seats get SSO.
    let good = r#"{"rules": [{"name": "Big teams", "priority": 1, "value": true,
        "conditions": [{"condition_type": "trait", "operator": "gte", "trait_id": "seats_bought", "trait_value": "10"}]}]}"#;
    assert_eq!(send(good).await.unwrap().status(), StatusCode::SEE_OTHER);
    let checked = app.check("sso", json!({"id": "acme-42"})).await;
    assert_eq!(checked["value"], true, "{checked}");
    let (_, page) = get_page(&app, &admin, &path).await;
    assert!(page.contains("Big teams") && page.contains("seats_bought"));
    let audited: Vec<String> = sqlx::query_scalar("SELECT action FROM console_audit")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, ["flag_rules.replace"]);

    // What the page shows round-trips: saving it unchanged keeps the answer.
    let shown = {
        let at =
            page.find("data-testid=\"rules-json\">").unwrap() + "data-testid=\"rules-json\">".len();
        let end = page[at..].find("</textarea>").unwrap();
        page[at..at + end]
            .replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .replace("&#x22;", "\"")
            .replace("&gt;", ">")
            .replace("&lt;", "<")
            .replace("&amp;", "&")
    };
    assert_eq!(
        send(&shown).await.unwrap().status(),
        StatusCode::SEE_OTHER,
        "{shown}"
    );
    assert_eq!(
        app.check("sso", json!({"id": "acme-42"})).await["value"],
        true
    );
}
