//! Our own extractors, so malformed input gets our JSON error naming the field.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::error::AppError;
use crate::api::AppState;

/// A JSON body. Size over the limit → 413; bad JSON or a wrong field → 400 naming the field.
pub struct Json<T>(pub T);

impl<T> FromRequest<AppState> for Json<T>
where
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_body(req, state)
            .await
            .and_then(|b| parse_json(&b))
            .map(Json)
    }
}

/// The raw body, with the configured size limit turned into a 413 naming it.
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, AppError> {
    read_limited(req.into_body(), state.config.server.body_limit_bytes).await
}

/// A body of at most `limit` bytes; a longer one is a 413 naming the limit.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, AppError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(AppError::PayloadTooLarge(limit))
        }
        Err(e) => Err(AppError::bad_request(format!(
            "cannot read request body: {e}"
        ))),
    }
}

/// Parses JSON, naming the offending field on error (`rules[0].priority: invalid type …`).
///
/// Tracking the path costs on every value (3% of a flag check's server time), so a body is
/// parsed plainly first; only a body that fails is parsed again, path tracked, to word the
/// error. Both parses accept the same bodies.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(AppError::bad_request(
            "request body is empty; send a JSON object",
        ));
    }
    if let Ok(parsed) = T::deserialize(&mut serde_json::Deserializer::from_slice(bytes)) {
        return Ok(parsed);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = strip_position(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() {
            AppError::bad_request(format!("malformed JSON: {msg}"))
        } else if path == "." {
            AppError::bad_request(format!("invalid request body: {msg}"))
        } else {
            AppError::bad_request(format!("{path}: {msg}"))
        }
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The raw query string as ordered pairs, with typed accessors that name the parameter.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| AppError::bad_request(format!("malformed query string: {e}")))?;
        // Postgres text cannot hold NUL; say so here rather than fail in SQL.
        if let Some((k, _)) = pairs
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(AppError::bad_request(format!(
                "query parameter {k}: must not contain NUL (%00) characters"
            )));
        }
        Ok(Query { pairs })
    }
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

impl Query {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Query { pairs }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The parameter's value, unless absent or empty.
    pub fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|s| !s.is_empty()).map(str::to_string)
    }

    /// A single-valued parameter `one` (e.g. `plan_id`) and a many-valued `many` (e.g.
    /// `plan_ids`, as [`Query::get_all`] reads it), together.
    pub fn get_one_and_all(&self, one: &str, many: &str) -> Vec<String> {
        let mut all = self.get_all(many);
        all.extend(self.non_empty(one));
        all
    }

    /// Repeated (`ids=a&ids=b`), bracketed (`ids[]=a`) or comma-separated values.
    pub fn get_all(&self, name: &str) -> Vec<String> {
        let bracket = format!("{name}[]");
        self.pairs
            .iter()
            .filter(|(k, _)| k == name || *k == bracket)
            .flat_map(|(_, v)| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A parameter that must be one of `allowed` when given (empty: not given).
    pub fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<&str>, AppError> {
        match self.get(name).filter(|s| !s.is_empty()) {
            Some(v) if !allowed.contains(&v) => Err(AppError::bad_request(format!(
                "query parameter {name}: {v:?} is not one of {}",
                allowed.join(", ")
            ))),
            v => Ok(v),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, AppError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(AppError::bad_request(format!(
                "query parameter {name}: expected true or false, got {v:?}"
            ))),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, AppError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                AppError::bad_request(format!(
                    "query parameter {name}: expected an integer, got {v:?}"
                ))
            }),
        }
    }

    /// `limit` (default 100, at most 1000) and `offset` (default 0).
    pub fn page(&self) -> Result<Page, AppError> {
        Page::new(self.int("limit")?, self.int("offset")?, "query parameter ")
    }

    /// Identifying keys: `keys[k]=v` pairs, or one JSON-encoded `keys={"k":"v"}`.
    pub fn key_map(&self, name: &str) -> Result<Vec<(String, String)>, AppError> {
        let prefix = format!("{name}[");
        let mut out = Vec::new();
        for (k, v) in &self.pairs {
            if let Some(rest) = k.strip_prefix(&prefix) {
                let Some(key) = rest.strip_suffix(']') else {
                    return Err(AppError::bad_request(format!(
                        "query parameter {k}: expected {name}[<key>]=<value>"
                    )));
                };
                if key.is_empty() || v.is_empty() {
                    return Err(AppError::bad_request(format!(
                        "query parameter {k}: key and value must not be empty"
                    )));
                }
                out.push((key.to_string(), v.clone()));
            } else if k == name {
                let map: Map<String, Value> = serde_json::from_str(v).map_err(|_| {
                    AppError::bad_request(format!(
                        "query parameter {name}: expected {name}[<key>]=<value> or a JSON object"
                    ))
                })?;
                for (key, value) in map {
                    let value = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        _ => {
                            return Err(AppError::bad_request(format!(
                                "query parameter {name}: value of {key:?} must be a string"
                            )))
                        }
                    };
                    out.push((key, value));
                }
            }
        }
        Ok(out)
    }

    /// Echo of the query for the response's `params`, with the page applied.
    pub fn params(&self, page: Option<Page>) -> Value {
        let mut map = Map::new();
        for (k, v) in &self.pairs {
            match map.get_mut(k) {
                Some(Value::Array(items)) => items.push(Value::String(v.clone())),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, Value::String(v.clone())]);
                }
                None => {
                    map.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        if let Some(p) = page {
            map.insert("limit".into(), p.limit.into());
            map.insert("offset".into(), p.offset.into());
        }
        Value::Object(map)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    /// Validates a page; `prefix` starts the error message (`"query parameter "`).
    pub fn new(limit: Option<i64>, offset: Option<i64>, prefix: &str) -> Result<Page, AppError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(AppError::bad_request(format!(
                "{prefix}limit: must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        let offset = offset.unwrap_or(0);
        if offset < 0 {
            return Err(AppError::bad_request(format!(
                "{prefix}offset: must not be negative"
            )));
        }
        Ok(Page { limit, offset })
    }
}

/// A path segment, with our error on failure.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| AppError::bad_request(format!("invalid path: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::from_pairs(serde_urlencoded::from_str(s).unwrap())
    }

    #[test]
    fn key_maps_in_both_forms() {
        assert_eq!(
            q("keys%5Bid%5D=c1&keys%5Bslug%5D=acme")
                .key_map("keys")
                .unwrap(),
            vec![("id".into(), "c1".into()), ("slug".into(), "acme".into())]
        );
        assert_eq!(
            q("keys=%7B%22id%22%3A%22c1%22%7D").key_map("keys").unwrap(),
            vec![("id".to_string(), "c1".to_string())]
        );
        assert!(q("keys=nope").key_map("keys").is_err());
        assert!(q("company_keys[id]=").key_map("company_keys").is_err());
    }

    #[tokio::test]
    async fn nul_characters_are_refused_by_name() {
        let (mut parts, _) = axum::http::Request::builder()
            .uri("/companies?q=a%00b")
            .body(())
            .unwrap()
            .into_parts();
        let err = Query::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "query parameter q: must not contain NUL (%00) characters"
        );
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(
            q("").page().unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            q("limit=1000&offset=5").page().unwrap(),
            Page {
                limit: 1000,
                offset: 5
            }
        );
        assert!(q("limit=1001")
            .page()
            .unwrap_err()
            .to_string()
            .contains("limit"));
        assert!(q("limit=abc")
            .page()
            .unwrap_err()
            .to_string()
            .contains("limit"));
        assert!(q("offset=-1")
            .page()
            .unwrap_err()
            .to_string()
            .contains("offset"));
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Rule {
            priority: i32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            rules: Vec<Rule>,
        }
        let err = parse_json::<Body>(br#"{"rules":[{"priority":"x"}]}"#).unwrap_err();
        assert!(err.to_string().starts_with("rules[0].priority:"), "{err}");
        let err = parse_json::<Body>(br#"{"rules":[{}]}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `priority`"),
            "{err}"
        );
        let err = parse_json::<Body>(br#"{"rules":["#).unwrap_err();
        assert!(err.to_string().starts_with("malformed JSON"), "{err}");
        let err = parse_json::<Body>(b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
