//! Sign-in, sign-out, the forced password change after a one-time password, and the
//! environment switcher.
//!
//! Sign-in is rate limited per client address (20 attempts per 15 minutes, then 429) and
//! per account (the fifth consecutive failure locks it for 15 minutes, during which the
//! right password is refused too). The sign-in form has no session yet: its CSRF token is
//! double-submitted (a cookie and the form field must match).

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};

use super::error::{ConsoleError, ConsoleResult};
use super::session::{self, Console, Form, Posted, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::api::AppState;
use crate::metrics::CONSOLE_SIGN_INS;
use crate::store;

/// Sign-in attempts one address may make per window.
pub const ATTEMPTS_PER_ADDRESS: i64 = 20;
pub const ATTEMPT_WINDOW_MINUTES: i64 = 15;
/// The shortest password a person may choose.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    email: &'a str,
    error: &'a str,
}

/// The sign-in page, with a fresh double-submit CSRF cookie.
fn login_page(state: &AppState, status: StatusCode, email: &str, error: &str) -> Response {
    let csrf = session::random_token();
    let page = LoginPage {
        csrf: &csrf,
        email,
        error,
    };
    match page.render() {
        Ok(html) => (
            status,
            session::cookie_header(session::set_cookie(state, LOGIN_CSRF_COOKIE, &csrf, None)),
            Html(html),
        )
            .into_response(),
        Err(e) => ConsoleError::from(e).into_response(),
    }
}

pub async fn page(State(state): State<AppState>) -> Response {
    login_page(&state, StatusCode::OK, "", "")
}

fn client_address(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

#[tracing::instrument(skip_all, fields(email))]
pub async fn submit(State(state): State<AppState>, req: Request) -> ConsoleResult<Response> {
    let address = client_address(&req);
    let cookie_csrf = session::cookie(req.headers(), LOGIN_CSRF_COOKIE).map(str::to_string);
    let form = Form::parse(req, &state).await?;
    match (cookie_csrf, form.get("csrf_token")) {
        (Some(c), Some(f)) if session::same_token(&c, f) => {}
        _ => {
            return Err(ConsoleError::Forbidden(
                "missing or invalid CSRF token: reload the sign-in page and try again".into(),
            ))
        }
    }
    let email = form.text("email").unwrap_or("").to_lowercase();
    let password = form.get("password").unwrap_or("").to_string();
    tracing::Span::current().record("email", email.as_str());
    let now = Utc::now();
    let mut conn = state.pool.acquire().await?;
    let attempts = store::console::note_attempt(
        &mut conn,
        &address,
        now,
        now - Duration::minutes(ATTEMPT_WINDOW_MINUTES),
    )
    .await?;
    if attempts > ATTEMPTS_PER_ADDRESS {
        CONSOLE_SIGN_INS.inc("rate_limited");
        tracing::warn!(%address, "console sign-in rate limited");
        return Err(ConsoleError::TooManyRequests(format!(
            "too many sign-in attempts from this address: try again in {ATTEMPT_WINDOW_MINUTES} minutes"
        )));
    }
    let refuse = |outcome: &'static str, message: &str| {
        CONSOLE_SIGN_INS.inc(outcome);
        tracing::info!(outcome, "console sign-in refused");
        Ok(login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            &email,
            message,
        ))
    };
    let Some(user) = store::console::user_by_email(&mut conn, &email).await? else {
        return refuse("unknown_user", "Wrong email or password.");
    };
    if user.disabled {
        return refuse("disabled", "This account is disabled.");
    }
    if let Some(until) = user.locked_until.filter(|u| *u > now) {
        return refuse(
            "locked",
            &format!(
                "This account is locked after too many failed sign-ins; try again after {}.",
                until.format("%H:%M UTC")
            ),
        );
    }
    let hash = user.password_hash.clone();
    let ok = tokio::task::spawn_blocking(move || session::verify_password(&password, &hash))
        .await
        .map_err(|e| ConsoleError::Internal(e.into()))?;
    if !ok {
        let locked = store::console::record_failure(&mut conn, &user.id, now).await?;
        return match locked {
            Some(until) => refuse(
                "wrong_password",
                &format!(
                    "Wrong email or password. The account is now locked until {}.",
                    until.format("%H:%M UTC")
                ),
            ),
            None => refuse("wrong_password", "Wrong email or password."),
        };
    }
    store::console::record_success(&mut conn, &user.id).await?;
    // Sessions past the idle timeout are dead weight: each sign-in sweeps them.
    let idle = Duration::minutes(i64::from(state.config.console.session_idle_minutes));
    store::console::end_idle_sessions(&mut conn, now - idle).await?;
    let token = session::random_token();
    let default_env = state.cache.default_env().map(|e| e.environment.id.clone());
    store::console::create_session(
        &mut conn,
        &session::hash_token(&token),
        &user.id,
        &session::random_token(),
        default_env.as_deref(),
    )
    .await?;
    CONSOLE_SIGN_INS.inc("success");
    tracing::info!(user = %user.email, role = %user.role, "console sign-in");
    let target = if user.must_change_password {
        "/console/password"
    } else {
        "/console/companies"
    };
    let mut headers = HeaderMap::new();
    headers.append(
        SET_COOKIE,
        session::set_cookie(&state, SESSION_COOKIE, &token, None),
    );
    headers.append(
        SET_COOKIE,
        session::set_cookie(&state, LOGIN_CSRF_COOKIE, "", Some(0)),
    );
    Ok((headers, Redirect::to(target)).into_response())
}

pub async fn logout(State(state): State<AppState>, posted: Posted) -> ConsoleResult<Response> {
    let mut conn = state.pool.acquire().await?;
    store::console::end_session(&mut conn, &posted.console.session_hash).await?;
    tracing::info!(user = %posted.console.email, "console sign-out");
    Ok((
        session::cookie_header(session::set_cookie(&state, SESSION_COOKIE, "", Some(0))),
        Redirect::to("/console/login"),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "console/password.html")]
struct PasswordPage<'a> {
    csrf: &'a str,
    error: &'a str,
}

pub async fn password_page(console: Console) -> ConsoleResult<Response> {
    super::render(&PasswordPage {
        csrf: &console.csrf,
        error: "",
    })
}

pub async fn password_submit(
    State(state): State<AppState>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let new = posted.form.get("new_password").unwrap_or("").to_string();
    let confirm = posted.form.get("confirm_password").unwrap_or("");
    let problem = if new.chars().count() < MIN_PASSWORD_CHARS {
        Some(format!(
            "new_password: must be at least {MIN_PASSWORD_CHARS} characters"
        ))
    } else if new != confirm {
        Some("confirm_password: the two passwords differ".to_string())
    } else {
        None
    };
    if let Some(error) = problem {
        let html = PasswordPage {
            csrf: &posted.console.csrf,
            error: &error,
        }
        .render()?;
        return Ok((StatusCode::BAD_REQUEST, Html(html)).into_response());
    }
    let hash = tokio::task::spawn_blocking(move || session::hash_password(&new))
        .await
        .map_err(|e| ConsoleError::Internal(e.into()))??;
    let mut conn = state.pool.acquire().await?;
    store::console::set_password(&mut conn, &posted.console.user_id, &hash).await?;
    tracing::info!(user = %posted.console.email, "console password changed");
    Ok(Redirect::to("/console/companies").into_response())
}

pub async fn switch_environment(
    State(state): State<AppState>,
    posted: Posted,
) -> ConsoleResult<Response> {
    let key = posted.form.text("environment").unwrap_or("");
    let env = state.cache.env_by_key(key).ok_or_else(|| {
        ConsoleError::BadRequest(format!("environment: {key:?} is not configured"))
    })?;
    let mut conn = state.pool.acquire().await?;
    store::console::set_session_environment(
        &mut conn,
        &posted.console.session_hash,
        &env.environment.id,
    )
    .await?;
    Ok(Redirect::to("/console/companies?done=environment").into_response())
}
