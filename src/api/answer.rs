//! Writes a check's answer (`CheckFlagResponseData`) straight into the response buffer.
//!
//! serde's derive writes every field name through serde_json's escape scan and each value
//! through a `Serializer` call; an all-flags answer is ≈30 fields × 50 flags, and a profile
//! of `POST /flags/check` (`PERF_DIR=… benches/checks.sh`) put the escape scan alone at 11%
//! of the server's time. Here the field names are literal bytes, strings are copied whole
//! when a (vectorised) scan finds nothing to escape, and numbers and timestamps go through
//! serde_json, so the output is byte for byte what `FlagAnswer`'s derive writes: a test in
//! `checks.rs` holds the two equal.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::{self, Evaluation, MetricPeriod};

/// Appends one flag's answer as a JSON object.
pub fn write_answer(
    out: &mut Vec<u8>,
    flag: &engine::Flag,
    e: &Evaluation,
    company_id: Option<&str>,
    user_id: Option<&str>,
) {
    let report = e.entitlement.as_ref();
    out.extend_from_slice(b"{\"flag\":");
    string(out, &flag.key);
    out.extend_from_slice(b",\"flag_id\":");
    string(out, &flag.id);
    out.extend_from_slice(if e.value {
        b",\"value\":true,\"reason\":"
    } else {
        b",\"value\":false,\"reason\":"
    });
    string(out, &e.reason);
    out.extend_from_slice(b",\"rule_type\":");
    string(out, e.rule_type.as_str());
    out.extend_from_slice(b",\"rule_id\":");
    opt_string(out, e.rule_id.as_deref());
    out.extend_from_slice(b",\"company_id\":");
    opt_string(out, company_id);
    out.extend_from_slice(b",\"user_id\":");
    opt_string(out, user_id);
    out.extend_from_slice(b",\"error\":null,\"entitlement\":");
    match report {
        None => out.extend_from_slice(b"null"),
        Some(r) => entitlement(out, r),
    }
    out.extend_from_slice(b",\"feature_allocation\":");
    value(out, &report.and_then(|r| r.allocation));
    out.extend_from_slice(b",\"feature_usage\":");
    value(out, &report.and_then(|r| r.usage));
    out.extend_from_slice(b",\"feature_usage_event\":");
    opt_string(out, report.and_then(|r| r.event_name.as_deref()));
    out.extend_from_slice(b",\"feature_usage_period\":");
    opt_string(
        out,
        report
            .and_then(|r| r.metric_period)
            .map(MetricPeriod::as_str),
    );
    out.extend_from_slice(b",\"feature_usage_reset_at\":");
    timestamp(out, report.and_then(|r| r.metric_reset_at));
    out.push(b'}');
}

/// `EntitlementView`'s fields, in its order.
fn entitlement(out: &mut Vec<u8>, r: &engine::EntitlementReport) {
    out.extend_from_slice(b"{\"feature_id\":");
    string(out, &r.feature_id);
    out.extend_from_slice(b",\"feature_key\":");
    string(out, &r.feature_key);
    out.extend_from_slice(b",\"value_type\":");
    string(out, r.value_type);
    out.extend_from_slice(b",\"allocation\":");
    value(out, &r.allocation);
    out.extend_from_slice(b",\"usage\":");
    value(out, &r.usage);
    out.extend_from_slice(b",\"event_name\":");
    opt_string(out, r.event_name.as_deref());
    out.extend_from_slice(b",\"metric_period\":");
    opt_string(out, r.metric_period.map(MetricPeriod::as_str));
    out.extend_from_slice(b",\"metric_reset_at\":");
    timestamp(out, r.metric_reset_at);
    out.extend_from_slice(b",\"credit_id\":");
    opt_string(out, r.credit_id.as_deref());
    out.extend_from_slice(b",\"credit_total\":");
    value(out, &r.credit.map(|c| c.total));
    out.extend_from_slice(b",\"credit_used\":");
    value(out, &r.credit.map(|c| c.used));
    out.extend_from_slice(b",\"credit_remaining\":");
    value(out, &r.credit.map(|c| c.remaining));
    out.push(b'}');
}

/// A JSON string. Ids, keys and reasons rarely hold anything to escape: one pass without
/// early exit (which the compiler vectorises) decides, then the bytes are copied whole.
fn string(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        value(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A timestamp as chrono's `Serialize` writes it (its `Debug` form, RFC 3339 with `Z`),
/// without serde_json's escape scan over text that never needs escaping.
fn timestamp(out: &mut Vec<u8>, t: Option<DateTime<Utc>>) {
    use std::io::Write;
    match t {
        // Writing into a `Vec` cannot fail.
        Some(t) => {
            let _ = write!(out, "\"{t:?}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Numbers and `null`: what serde_json writes without an escape scan of ours.
fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a `Vec` cannot fail, and these types always serialise.
    let _ = serde_json::to_writer(out, v);
}
