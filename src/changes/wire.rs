//! The notification wire format: `origin|kind|…`, one Postgres `NOTIFY` payload each.
//!
//! Postgres refuses payloads of 8,000 bytes or more, and a refused `NOTIFY` fails the whole
//! transaction: payloads are therefore capped by bytes, never by a count. A usage change
//! whose counters do not fit one payload is split over several (each counter carries its
//! own absolute value and version, so the parts apply independently and in any order).

use chrono::DateTime;

use super::Change;
use crate::engine::{MetricPeriod, MonthReset, UsageCounter};

/// Postgres's limit is 8,000 bytes; stay clear of it.
pub const MAX_PAYLOAD_BYTES: usize = 7_900;

/// `[event, period, month_reset, window_start (unix seconds), count, version]`
type WireCounter = (String, MetricPeriod, MonthReset, i64, i64, i64);

#[derive(serde::Serialize, serde::Deserialize)]
struct UsagePayload {
    e: String,
    c: String,
    u: Vec<WireCounter>,
}

/// The payloads announcing `change`; each is under `MAX_PAYLOAD_BYTES`.
pub fn encode(origin: &str, change: &Change) -> Vec<String> {
    match change {
        Change::Catalog => vec![format!("{origin}|catalog")],
        Change::ApiKeys => vec![format!("{origin}|api_keys")],
        Change::Outbox => vec![format!("{origin}|outbox")],
        Change::Webhooks => vec![format!("{origin}|webhooks")],
        Change::Company { environment_id, id } => {
            vec![format!("{origin}|company|{environment_id}|{id}")]
        }
        Change::User { environment_id, id } => vec![format!("{origin}|user|{environment_id}|{id}")],
        Change::Credits {
            environment_id,
            company_id,
        } => vec![format!("{origin}|credits|{environment_id}|{company_id}")],
        Change::Usage {
            environment_id,
            company_id,
            counters,
        } => encode_usage(origin, environment_id, company_id, counters),
    }
}

fn encode_usage(origin: &str, env: &str, company: &str, counters: &[UsageCounter]) -> Vec<String> {
    let head = |u: &[String]| {
        format!(
            r#"{origin}|usage|{{"e":{},"c":{},"u":[{}]}}"#,
            json(env),
            json(company),
            u.join(",")
        )
    };
    let mut out = Vec::new();
    let mut part: Vec<String> = Vec::new();
    let empty = head(&[]).len();
    let mut size = empty;
    for c in counters {
        let wire: WireCounter = (
            c.event.to_string(),
            c.period,
            c.month_reset,
            c.window_start.timestamp(),
            c.count,
            c.version,
        );
        let item = serde_json::to_string(&wire).unwrap_or_default();
        // +1 for the comma. One counter always fits: event names are at most 255 characters.
        if !part.is_empty() && size + item.len() + 1 > MAX_PAYLOAD_BYTES {
            out.push(head(&part));
            part.clear();
            size = empty;
        }
        size += item.len() + 1;
        part.push(item);
    }
    if !part.is_empty() || out.is_empty() {
        out.push(head(&part));
    }
    out
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The origin and the change of one payload; `None` for a payload this version cannot read.
pub fn decode(payload: &str) -> Option<(&str, Change)> {
    let (origin, rest) = payload.split_once('|')?;
    if let Some(json) = rest.strip_prefix("usage|") {
        let p: UsagePayload = serde_json::from_str(json).ok()?;
        let counters =
            p.u.into_iter()
                .filter_map(|(event, period, month_reset, start, count, version)| {
                    Some(UsageCounter {
                        event: event.into(),
                        period,
                        month_reset,
                        window_start: DateTime::from_timestamp(start, 0)?,
                        count,
                        version,
                    })
                })
                .collect();
        return Some((
            origin,
            Change::Usage {
                environment_id: p.e,
                company_id: p.c,
                counters,
            },
        ));
    }
    let mut parts = rest.split('|');
    let change = match (parts.next()?, parts.next(), parts.next(), parts.next()) {
        ("catalog", None, None, None) => Change::Catalog,
        ("api_keys", None, None, None) => Change::ApiKeys,
        ("outbox", None, None, None) => Change::Outbox,
        ("webhooks", None, None, None) => Change::Webhooks,
        ("company", Some(env), Some(id), None) => Change::Company {
            environment_id: env.into(),
            id: id.into(),
        },
        ("user", Some(env), Some(id), None) => Change::User {
            environment_id: env.into(),
            id: id.into(),
        },
        ("credits", Some(env), Some(id), None) => Change::Credits {
            environment_id: env.into(),
            company_id: id.into(),
        },
        _ => return None,
    };
    Some((origin, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(event: &str, start: i64, count: i64, version: i64) -> UsageCounter {
        UsageCounter {
            event: event.into(),
            period: MetricPeriod::CurrentMonth,
            month_reset: MonthReset::FirstOfMonth,
            window_start: DateTime::from_timestamp(start, 0).unwrap(),
            count,
            version,
        }
    }

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::Catalog,
            Change::ApiKeys,
            Change::Outbox,
            Change::Webhooks,
            Change::Company {
                environment_id: "env_1".into(),
                id: "comp_1".into(),
            },
            Change::Credits {
                environment_id: "env_1".into(),
                company_id: "comp_1".into(),
            },
            Change::User {
                environment_id: "env_1".into(),
                id: "user_1".into(),
            },
            Change::Usage {
                environment_id: "env_1".into(),
                company_id: "comp_1".into(),
                counters: vec![counter("api|call \"quoted\"", 0, 5, 2)],
            },
        ] {
            let encoded = encode("inst_a", &c);
            assert_eq!(encoded.len(), 1);
            assert_eq!(decode(&encoded[0]), Some(("inst_a", c)));
        }
        assert_eq!(decode("inst|bogus"), None);
        assert_eq!(decode("inst|company|env"), None);
    }

    #[test]
    fn long_event_names_are_split_by_bytes_and_lose_nothing() {
        // A dozen 255-character event names, five windows each: far over 8,000 bytes.
        let counters: Vec<UsageCounter> = (0..60)
            .map(|i| counter(&format!("{i:02}{}", "x".repeat(253)), i, i + 1, 1))
            .collect();
        let change = Change::Usage {
            environment_id: "env_1".into(),
            company_id: "comp_1".into(),
            counters: counters.clone(),
        };
        let payloads = encode("inst", &change);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() < MAX_PAYLOAD_BYTES, "{} bytes", p.len());
            match decode(p) {
                Some(("inst", Change::Usage { counters, .. })) => back.extend(counters),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, counters);
    }

    #[test]
    fn an_empty_usage_change_still_encodes() {
        let change = Change::Usage {
            environment_id: "e".into(),
            company_id: "c".into(),
            counters: vec![],
        };
        let payloads = encode("i", &change);
        assert_eq!(payloads.len(), 1);
        assert_eq!(decode(&payloads[0]), Some(("i", change)));
    }
}
