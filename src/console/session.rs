//! Who is signed in: the session cookie, looked up in Postgres (any replica serves any
//! request), the CSRF token every POST form carries, roles, and password hashing.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use chrono::{Duration, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::error::ConsoleError;
use crate::api::auth::Auth;
use crate::api::AppState;
use crate::cache::{EnvCache, Grant};
use crate::store;

/// The session cookie: a random secret whose SHA-256 is the session's key in Postgres.
pub const SESSION_COOKIE: &str = "entitled_console";
/// Before signing in: the double-submit CSRF cookie of the sign-in form.
pub const LOGIN_CSRF_COOKIE: &str = "entitled_console_login";

/// A random URL-safe token of 32 bytes.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares without an early exit, so timing tells nothing about where tokens differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A one-time password for `console-user create` and `reset-password`.
pub fn one_time_password() -> String {
    let bytes: [u8; 15] = rand::rng().random();
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict`, `Secure` when configured. `max_age`
/// zero deletes the cookie.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if state.config.console.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn cookie_header(value: HeaderValue) -> [(axum::http::HeaderName, HeaderValue); 1] {
    [(SET_COOKIE, value)]
}

/// The signed-in person, their session and the environment every page is scoped to.
#[derive(Clone)]
pub struct Console {
    pub user_id: String,
    pub email: String,
    pub role: String,
    pub csrf: String,
    pub session_hash: String,
    pub must_change_password: bool,
    pub env: Arc<EnvCache>,
}

impl Console {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// Writes need the admin role; a viewer's forged write gets 403.
    pub fn require_admin(&self) -> Result<(), ConsoleError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "viewers may only read: ask an admin to make this change".into(),
            ))
        }
    }

    /// The API's view of this person: what the API handlers the console reuses authorize.
    pub fn auth(&self) -> Auth {
        Auth::new(Arc::new(Grant {
            env: self.env.clone(),
            key_id: format!("console:{}", self.user_id),
            readonly: !self.is_admin(),
        }))
    }

    pub fn env_id(&self) -> &str {
        &self.env.environment.id
    }
}

/// Resolves the session cookie. Without a live session: a redirect to the sign-in page.
impl FromRequestParts<AppState> for Console {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or(ConsoleError::SignIn)?;
        let hash = hash_token(token);
        let now = Utc::now();
        let idle = Duration::minutes(i64::from(state.config.console.session_idle_minutes));
        let mut conn = state.pool.acquire().await?;
        let row = store::console::session(&mut conn, &hash, now, now - idle)
            .await?
            .ok_or(ConsoleError::SignIn)?;
        let env = row
            .environment_id
            .as_deref()
            .and_then(|id| state.cache.env(id))
            .or_else(|| state.cache.default_env())
            .cloned()
            .ok_or_else(|| ConsoleError::Internal(anyhow::anyhow!("no environment")))?;
        let console = Console {
            user_id: row.user_id,
            email: row.email,
            role: row.role,
            csrf: row.csrf_token,
            session_hash: hash,
            must_change_password: row.must_change_password,
            env,
        };
        // Until the one-time password is replaced, only the password page is served.
        if console.must_change_password
            && !matches!(parts.uri.path(), "/console/password" | "/console/logout")
        {
            return Err(ConsoleError::ChangePassword);
        }
        tracing::Span::current().record("console_user", console.email.as_str());
        Ok(console)
    }
}

/// A urlencoded form body.
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The trimmed value, `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|s| !s.is_empty())
    }

    pub async fn parse(req: Request, state: &AppState) -> Result<Form, ConsoleError> {
        let limit = state.config.server.body_limit_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ConsoleError::BadRequest("the form is too large or incomplete".into()))?;
        serde_urlencoded::from_bytes(&bytes)
            .map(Form)
            .map_err(|e| ConsoleError::BadRequest(format!("the form could not be read: {e}")))
    }
}

/// A POST from a signed-in person whose form carries the session's CSRF token: a handler
/// that takes `Posted` cannot forget the check. Missing or wrong token: 403.
pub struct Posted {
    pub console: Console,
    pub form: Form,
}

impl FromRequest<AppState> for Posted {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let console = Console::from_request_parts(&mut parts, state).await?;
        let form = Form::parse(Request::from_parts(parts, body), state).await?;
        match form.get("csrf_token") {
            Some(t) if same_token(t, &console.csrf) => Ok(Posted { console, form }),
            _ => {
                tracing::warn!(user = %console.email, "console POST without a valid CSRF token");
                Err(ConsoleError::Forbidden(
                    "missing or invalid CSRF token: reload the page and try again".into(),
                ))
            }
        }
    }
}
