//! `POST /flags/{key}/check`, `POST /flags/check` and `POST /flags/check-bulk`: answered from
//! the in-memory snapshot, never from Postgres. The decision itself is made by
//! `engine::evaluate`; each answer is serialised straight from the evaluation into the
//! response buffer (no per-flag view is built).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::write_answer;
use super::auth::Auth;
use super::extract::{parse_json, read_body, read_limited, Path};
use super::openapi::{Enveloped, Errors};
use super::views::{EntitlementRef, EntitlementView};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::cache::{Catalog, CheckOutcome, Found, KeyMap};
use crate::engine::{self, Evaluation, MetricPeriod};
use crate::metrics;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"company": {"id": "acme"}, "user": {"email": "ada@example.com"}}))]
pub struct CheckBody {
    /// Company keys, e.g. `{"id": "acme"}`; unknown keys evaluate with no company.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    company: Option<Keys>,
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    user: Option<Keys>,
}

/// Identifying keys as a check sends them, `{"id": "acme"}`, read straight into a
/// [`KeyMap`]: a check is the most frequent request, and going through a JSON map and
/// copying out of it cost four allocations a check. Values may be strings or numbers
/// (kept as their text, as everywhere else keys are read); the pairs are in key order,
/// a repeated key keeping its last value, exactly as a JSON object map holds them.
#[derive(Debug, Default)]
struct Keys(KeyMap);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys: KeyMap = Vec::with_capacity(map.size_hint().unwrap_or(1));
                while let Some(k) = map.next_key::<String>()? {
                    let KeyValue(v) = map.next_value()?;
                    keys.push((k, v));
                }
                if keys.len() > 1 {
                    // Sorted, stably, so that of a repeated key the last stands last.
                    keys.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut deduped: KeyMap = Vec::with_capacity(keys.len());
                    for pair in keys {
                        match deduped.last_mut() {
                            Some(last) if last.0 == pair.0 => *last = pair,
                            _ => deduped.push(pair),
                        }
                    }
                    keys = deduped;
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// One key's value: a string, or a number kept as its text.
struct KeyValue(String);

impl<'de> Deserialize<'de> for KeyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = KeyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyValue, E> {
                Ok(KeyValue(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<KeyValue, E> {
                Ok(KeyValue(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KeyValue, E> {
                Ok(KeyValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KeyValue, E> {
                Ok(KeyValue(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<KeyValue, E> {
                Ok(KeyValue(
                    serde_json::Number::from_f64(v)
                        .map_or_else(|| v.to_string(), |n| n.to_string()),
                ))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// `CheckFlagResponseData`: the schema of one flag's answer. Answers are written by
/// [`write_answer`] (REST) and [`FlagAnswer`] (MCP); tests keep all three equal.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CheckView {
    pub flag: String,
    pub flag_id: String,
    pub value: bool,
    pub reason: String,
    pub rule_type: &'static str,
    pub rule_id: Option<String>,
    pub company_id: Option<String>,
    pub user_id: Option<String>,
    pub error: Option<String>,
    pub entitlement: Option<EntitlementView>,
    pub feature_allocation: Option<i64>,
    pub feature_usage: Option<i64>,
    pub feature_usage_event: Option<String>,
    pub feature_usage_period: Option<&'static str>,
    pub feature_usage_reset_at: Option<DateTime<Utc>>,
}

/// One flag's answer (`CheckFlagResponseData`) borrowed from the flag and its evaluation,
/// serialised by serde: the MCP check's answer, and the reference that the REST checks'
/// hand-written [`write_answer`] is tested against, byte for byte.
#[derive(Serialize)]
struct FlagAnswer<'a> {
    flag: &'a str,
    flag_id: &'a str,
    value: bool,
    reason: &'a str,
    rule_type: &'static str,
    rule_id: Option<&'a str>,
    company_id: Option<&'a str>,
    user_id: Option<&'a str>,
    error: Option<&'a str>,
    entitlement: Option<EntitlementRef<'a>>,
    feature_allocation: Option<i64>,
    feature_usage: Option<i64>,
    feature_usage_event: Option<&'a str>,
    feature_usage_period: Option<&'static str>,
    feature_usage_reset_at: Option<DateTime<Utc>>,
}

impl<'a> FlagAnswer<'a> {
    fn new(
        flag: &'a engine::Flag,
        e: &'a Evaluation,
        company_id: Option<&'a str>,
        user_id: Option<&'a str>,
    ) -> Self {
        let report = e.entitlement.as_ref();
        FlagAnswer {
            flag: &flag.key,
            flag_id: &flag.id,
            value: e.value,
            reason: &e.reason,
            rule_type: e.rule_type.as_str(),
            rule_id: e.rule_id.as_deref(),
            company_id,
            user_id,
            error: None,
            entitlement: report.map(EntitlementRef::from),
            feature_allocation: report.and_then(|r| r.allocation),
            feature_usage: report.and_then(|r| r.usage),
            feature_usage_event: report.and_then(|r| r.event_name.as_deref()),
            feature_usage_period: report
                .and_then(|r| r.metric_period)
                .map(MetricPeriod::as_str),
            feature_usage_reset_at: report.and_then(|r| r.metric_reset_at),
        }
    }
}

/// A single check's answer, as the REST and MCP checks return it.
pub struct Checked(CheckOutcome);

impl Serialize for Checked {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = &self.0;
        FlagAnswer::new(
            &o.flag,
            &o.evaluation,
            o.company_id.as_deref(),
            o.user_id.as_deref(),
        )
        .serialize(s)
    }
}

impl CheckBody {
    /// The company and user keys.
    fn keys(self) -> (KeyMap, KeyMap) {
        (
            self.company.map(|k| k.0).unwrap_or_default(),
            self.user.map(|k| k.0).unwrap_or_default(),
        )
    }
}

/// The body, where an empty one means "no company, no user".
fn context(bytes: &[u8]) -> AppResult<(KeyMap, KeyMap)> {
    let body: CheckBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        CheckBody::default()
    } else {
        parse_json(bytes)?
    };
    Ok(body.keys())
}

/// Who asks, and for which company and user: the key, then the body.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> AppResult<(Auth, KeyMap, KeyMap)> {
    let auth = Auth::from_headers(headers, state)?;
    let bytes = read_limited(body, state.config.server.body_limit_bytes).await?;
    let (company, user) = context(&bytes)?;
    Ok((auth, company, user))
}

/// The route of a single check; [`super::front`] answers it without the router.
pub const ONE_PATH: &str = "/flags/{key}/check";
/// The route of an all-flags check; [`super::front`] answers it without the router.
pub const ALL_PATH: &str = "/flags/check";

#[utoipa::path(post, path = "/flags/{key}/check", tag = "checks",
    params(("key" = String, Path, description = "The flag's key")),
    request_body(content = CheckBody, description = "The company and user to check for; may be empty"),
    responses((status = 200, description = "The flag's value and why", body = Enveloped<CheckView>), Errors))]
pub async fn check_one(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Request,
) -> AppResult<Response> {
    let (parts, body) = req.into_parts();
    one(&state, &parts.headers, &key, body).await
}

/// A single check: authenticates, reads the body, evaluates flag `key` and writes the answer.
pub async fn one(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
    body: Body,
) -> AppResult<Response> {
    let (auth, company, user) = caller(state, headers, body).await?;
    let Checked(o) = check_flag(state, &auth, key, &company, &user)?;
    let mut out = Vec::with_capacity(64 + ANSWER_BYTES_PER_FLAG);
    out.extend_from_slice(b"{\"data\":");
    write_answer(
        &mut out,
        &o.flag,
        &o.evaluation,
        o.company_id.as_deref(),
        o.user_id.as_deref(),
    );
    out.extend_from_slice(b",\"params\":{}}");
    Ok(json_response(out))
}

/// Evaluates flag `key` for the company and user the keys identify, from the snapshot,
/// counting it for metrics and insights: the REST and MCP checks.
pub fn check_flag(
    state: &AppState,
    auth: &Auth,
    key: &str,
    company: &KeyMap,
    user: &KeyMap,
) -> AppResult<Checked> {
    let started = Instant::now();
    let catalog = state.cache.catalog();
    let Some(flag) = catalog.flags_by_key.get(key) else {
        metrics::CHECKS.inc("not_found");
        return Err(AppError::NotFound(format!("flag {key:?} not found")));
    };
    let outcome = auth.env.check(&catalog, flag, company, user, Utc::now());
    let value = outcome.evaluation.value;
    metrics::CHECKS.inc(if value { "true" } else { "false" });
    state.checks.record(auth.env_id(), &flag.id, value);
    metrics::CHECK_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(Checked(outcome))
}

/// `CheckFlagsResponseData`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct CheckAllView {
    flags: Vec<CheckView>,
    #[schema(value_type = Vec<Object>)]
    credit_spend_policies: Vec<Value>,
}

/// `CheckFlagsBulkResponseData`: one `CheckFlagsResponseData` per context, in order.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct CheckBulkView {
    data: Vec<CheckAllView>,
}

/// `POST /flags/check-bulk`: `CheckFlagsBulkRequestBody`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"contexts": [{"company": {"id": "acme"}}, {"company": {"id": "globex"}, "user": {"email": "ada@example.com"}}]}))]
pub struct CheckBulkBody {
    /// The companies and users to check every flag for; at most `MAX_BULK_CONTEXTS`.
    contexts: Vec<CheckBody>,
}

/// The most contexts one `/flags/check-bulk` request may name: each answers every flag.
pub const MAX_BULK_CONTEXTS: usize = 100;

/// Bytes reserved per flag for an answer, so an all-flags buffer rarely grows.
const ANSWER_BYTES_PER_FLAG: usize = 768;

#[utoipa::path(post, path = "/flags/check", tag = "checks",
    request_body(content = CheckBody, description = "The company and user to check for; may be empty"),
    responses((status = 200, description = "Every flag's value for the company and user", body = Enveloped<CheckAllView>), Errors))]
pub async fn check_all(State(state): State<AppState>, req: Request) -> AppResult<Response> {
    let (parts, body) = req.into_parts();
    all(&state, &parts.headers, body).await
}

/// An all-flags check: authenticates, reads the body, evaluates every flag and writes them.
pub async fn all(state: &AppState, headers: &HeaderMap, body: Body) -> AppResult<Response> {
    let (auth, company, user) = caller(state, headers, body).await?;
    let started = Instant::now();
    let catalog = state.cache.catalog();
    let found = auth.env.find(&company, &user);
    let mut out = Vec::with_capacity(64 + catalog.flags_sorted.len() * ANSWER_BYTES_PER_FLAG);
    out.extend_from_slice(b"{\"data\":");
    write_flags(&mut out, state, &auth, &catalog, &found, Utc::now());
    out.extend_from_slice(b",\"params\":{}}");
    metrics::CHECK_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(json_response(out))
}

#[utoipa::path(post, path = "/flags/check-bulk", tag = "checks",
    request_body(content = CheckBulkBody, description = "The contexts to check every flag for"),
    responses((status = 200, description = "Every flag's value for each context, in the order sent", body = Enveloped<CheckBulkView>), Errors))]
#[tracing::instrument(skip_all, fields(contexts))]
pub async fn check_bulk(
    State(state): State<AppState>,
    auth: Auth,
    req: Request,
) -> AppResult<Response> {
    let bytes = read_body(req, &state).await?;
    let body: CheckBulkBody = parse_json(&bytes)?;
    tracing::Span::current().record("contexts", body.contexts.len());
    if body.contexts.len() > MAX_BULK_CONTEXTS {
        return Err(AppError::bad_request(format!(
            "contexts: at most {MAX_BULK_CONTEXTS} contexts per request, got {}",
            body.contexts.len()
        )));
    }
    let keys: Vec<_> = body.contexts.into_iter().map(CheckBody::keys).collect();
    let started = Instant::now();
    let catalog = state.cache.catalog();
    let now = Utc::now();
    let mut out = Vec::with_capacity(
        64 + keys.len() * (32 + catalog.flags_sorted.len() * ANSWER_BYTES_PER_FLAG),
    );
    out.extend_from_slice(b"{\"data\":{\"data\":[");
    for (i, (company, user)) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let found = auth.env.find(company, user);
        write_flags(&mut out, &state, &auth, &catalog, &found, now);
    }
    out.extend_from_slice(b"]},\"params\":{}}");
    metrics::CHECK_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(json_response(out))
}

/// Writes one `CheckFlagsResponseData` (every flag, in key order) for what `found` holds
/// into `out`, each answer serialised as it is evaluated; counts them for metrics and
/// insights.
fn write_flags(
    out: &mut Vec<u8>,
    state: &AppState,
    auth: &Auth,
    catalog: &Catalog,
    found: &Found,
    now: DateTime<Utc>,
) {
    let subject = found.subject(&auth.env, catalog);
    let counts = state.checks.env(auth.env_id());
    let mut allowed = 0;
    out.extend_from_slice(b"{\"flags\":[");
    for (i, flag) in catalog.flags_sorted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let e = auth.env.evaluate(catalog, flag, &subject, now);
        write_answer(out, flag, &e, subject.company_id, subject.user_id);
        allowed += u64::from(e.value);
        counts.record(&flag.id, e.value);
    }
    out.extend_from_slice(b"],\"credit_spend_policies\":[]}");
    let total = catalog.flags_sorted.len() as u64;
    metrics::CHECKS.add("true", allowed);
    metrics::CHECKS.add("false", total - allowed);
}

/// Every flag's answer for company `company_id`, in flag key order, evaluated exactly as the
/// check endpoints evaluate it (same snapshot, same subject resolution, fallback plan
/// included). Not counted as checks: the console shows these, no application asked.
pub fn company_answers(
    state: &AppState,
    auth: &Auth,
    company_id: &str,
) -> Vec<(Arc<engine::Flag>, Evaluation)> {
    let catalog = state.cache.catalog();
    let found = Found {
        company: auth
            .env
            .company(company_id)
            .map(|c| (company_id.to_string(), c)),
        user: None,
    };
    let subject = found.subject(&auth.env, &catalog);
    let now = Utc::now();
    catalog
        .flags_sorted
        .iter()
        .map(|flag| {
            (
                flag.clone(),
                auth.env.evaluate(&catalog, flag, &subject, now),
            )
        })
        .collect()
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CreditBalance, EntitlementReport, RuleType};
    use utoipa::PartialSchema;

    /// Keys read straight into pairs are what a JSON object map would have held: in key
    /// order, a repeated key keeping its last value, numbers as their text; a bad value is
    /// named by its path.
    #[test]
    fn keys_read_as_a_json_map_holds_them() {
        let pairs = |json: &str| context(json.as_bytes()).map_err(|e| e.to_string());
        let own = |v: &[(&str, &str)]| -> KeyMap {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            pairs(r#"{"company": {"b": "2", "a": 1, "b": "3"}, "user": {"n": 1.5}}"#),
            Ok((own(&[("a", "1"), ("b", "3")]), own(&[("n", "1.5")])))
        );
        assert_eq!(pairs(r#"{"company": null}"#), Ok((Vec::new(), Vec::new())));
        assert_eq!(pairs("  "), Ok((Vec::new(), Vec::new())));
        let err = pairs(r#"{"company": {"id": [1]}}"#).unwrap_err();
        assert!(
            err.contains("company.id") && err.contains("a string"),
            "{err}"
        );
        let err = pairs(r#"{"user": "ada"}"#).unwrap_err();
        assert!(
            err.contains("user") && err.contains("object of keys"),
            "{err}"
        );
    }

    fn evaluation(entitlement: Option<EntitlementReport>) -> Evaluation {
        Evaluation {
            value: true,
            reason: "Matched plan entitlement rule \"Pro: api\" (pe_1)".into(),
            rule_type: RuleType::PlanEntitlement,
            rule_id: Some("pe_1".into()),
            entitlement,
        }
    }

    fn report() -> EntitlementReport {
        EntitlementReport {
            feature_id: "feat_1".into(),
            feature_key: "api".into(),
            value_type: "numeric",
            allocation: Some(10),
            soft_limit: None,
            usage: Some(3),
            event_name: Some("api_call".into()),
            metric_period: Some(MetricPeriod::CurrentMonth),
            metric_reset_at: Some(Utc::now()),
            credit_id: Some("cred_1".into()),
            credit: Some(CreditBalance {
                total: 5.0,
                used: 1.0,
                remaining: 4.0,
            }),
            month_reset: None,
            expires_at: None,
        }
    }

    fn properties<T: PartialSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).unwrap();
        let mut keys: Vec<String> = schema["properties"]
            .as_object()
            .expect("an object schema")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// What the checks write is what the OpenAPI document (and the SDK) says they write.
    #[test]
    fn borrowed_answers_have_the_documented_fields() {
        let flag = engine::Flag {
            id: "flag_1".into(),
            key: "api".into(),
            default_value: false,
            feature: None,
            rules: Vec::new(),
        };
        let r = report();
        let e = evaluation(Some(r.clone()));
        let answer =
            serde_json::to_value(FlagAnswer::new(&flag, &e, Some("comp_1"), None)).unwrap();
        assert_eq!(keys(&answer), properties::<CheckView>());
        assert_eq!(answer["feature_usage_event"], "api_call");
        assert_eq!(answer["feature_usage_period"], "current_month");
        assert_eq!(answer["company_id"], "comp_1");
        assert_eq!(answer["entitlement"]["credit_remaining"], 4.0);
        let owned = serde_json::to_value(EntitlementView::from(&r)).unwrap();
        assert_eq!(answer["entitlement"], owned);

        let none = serde_json::to_value(FlagAnswer::new(&flag, &evaluation(None), None, None));
        assert_eq!(none.unwrap()["entitlement"], Value::Null);
    }

    /// The hand-written writer of the hot paths writes what the derive writes, byte for byte,
    /// escapes included.
    #[test]
    fn written_answers_equal_the_derived_ones() {
        let flag = engine::Flag {
            id: "flag_1".into(),
            key: "api \"quoted\" \\ and\ncontrol \u{1} é".into(),
            default_value: false,
            feature: None,
            rules: Vec::new(),
        };
        let mut partial = report();
        partial.credit = None;
        partial.credit_id = None;
        partial.metric_reset_at = None;
        partial.event_name = None;
        partial.metric_period = None;
        partial.usage = None;
        // A reset on a whole second (report()'s is now, with nanoseconds).
        let mut whole = report();
        whole.metric_reset_at = chrono::DateTime::from_timestamp(1_764_547_200, 0);
        let cases = [
            (evaluation(Some(report())), Some("comp_1"), Some("user_1")),
            (evaluation(Some(whole)), Some("comp_1"), None),
            (evaluation(Some(partial)), Some("comp_\"2"), None),
            (evaluation(None), None, None),
            (
                Evaluation {
                    value: false,
                    reason: "No rules matched".into(),
                    rule_type: RuleType::Default,
                    rule_id: None,
                    entitlement: None,
                },
                None,
                Some("u"),
            ),
        ];
        for (e, company, user) in &cases {
            let derived = serde_json::to_vec(&FlagAnswer::new(&flag, e, *company, *user)).unwrap();
            let mut written = Vec::new();
            write_answer(&mut written, &flag, e, *company, *user);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(derived).unwrap()
            );
        }
    }
}
