//! Load generator for the webhook benchmark: `senders` concurrent tasks post signed, distinct,
//! realistic Stripe events for `seconds`, and print how many were acknowledged (2xx).
//! `benches/webhooks.sh` runs it against `entitled serve` and against the baseline server's
//! `/noop` (what the generator itself can drive, signing included).
//!
//! Usage: cargo bench --bench webhook_load -- <url> <secret> <seconds> <senders> <customers>
//!        [<count> <id prefix>]
//!
//! With `count`, it sends exactly `count` events as fast as it can (a burst; `seconds` is
//! ignored), ids `evt_<prefix>_<n>`, and also prints when the last one was acknowledged
//! (`last_ack_epoch`, Unix seconds) so the script can time the last apply after it.
//!
//! Events alternate between `customer.updated` (the company upsert by keys) and
//! `customer.subscription.updated` (a subscription with one item of `prod_bench_pro`, which
//! the script links to a plan, so each one recomputes a membership), over `customers`
//! customers, each with its own event id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entitled::stripe::signature;

const CUSTOMER: &str = include_str!("../fixtures/stripe/customer.updated.json");
const SUBSCRIPTION: &str = include_str!("../fixtures/stripe/customer.subscription.updated.json");

/// A fixture serialised once, with placeholders where an event's own values go, split at
/// them: an event is the parts with its values between them, so the generator spends its
/// time sending rather than cloning and serialising JSON trees (it shares the two cores with
/// the server it measures; pgbench's client costs next to nothing per transaction).
struct Template {
    /// The text between the placeholders: one more than `slots`.
    parts: Vec<String>,
    /// Which value goes between `parts[i]` and `parts[i + 1]`.
    slots: Vec<Slot>,
}

#[derive(Clone, Copy)]
enum Slot {
    EventId,
    Created,
    Customer,
    Quantity,
}

const SLOTS: [(Slot, &str); 4] = [
    (Slot::EventId, "\"@@event@@\""),
    (Slot::Created, "\"@@created@@\""),
    (Slot::Customer, "@@customer@@"),
    (Slot::Quantity, "\"@@quantity@@\""),
];

impl Template {
    /// The fixture with its ids and timestamps replaced by placeholders.
    fn new(fixture: &str) -> Template {
        let mut e: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
        e["id"] = "@@event@@".into();
        e["created"] = "@@created@@".into();
        let object = &mut e["data"]["object"];
        if object["object"] == "customer" {
            object["id"] = "cus_bench_@@customer@@".into();
            object["name"] = "Bench customer @@customer@@".into();
            object["metadata"] = serde_json::json!({ "company_id": "bench-@@customer@@" });
        } else {
            object["id"] = "sub_bench_@@customer@@".into();
            object["customer"] = "cus_bench_@@customer@@".into();
            let items = object["items"]["data"].as_array_mut().expect("items");
            items.truncate(1);
            items[0]["id"] = "si_bench_@@customer@@".into();
            items[0]["price"]["product"] = "prod_bench_pro".into();
            items[0]["quantity"] = "@@quantity@@".into();
        }
        let mut text = serde_json::to_string(&e).expect("serialise");
        let (mut parts, mut slots) = (Vec::new(), Vec::new());
        // Cut at the earliest placeholder until none is left.
        while let Some((at, slot, len)) = SLOTS
            .iter()
            .filter_map(|(slot, p)| text.find(p).map(|at| (at, *slot, p.len())))
            .min_by_key(|(at, _, _)| *at)
        {
            parts.push(text[..at].to_string());
            slots.push(slot);
            text = text[at + len..].to_string();
        }
        parts.push(text);
        Template { parts, slots }
    }

    /// Event `n` about `customer`, created at `created`: the same JSON the fixture with
    /// these values serialises to.
    fn event(&self, prefix: &str, n: u64, customer: u64, created: i64) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.parts.iter().map(String::len).sum::<usize>() + 64);
        for (part, slot) in self.parts.iter().zip(&self.slots) {
            out.push_str(part);
            let _ = match slot {
                Slot::EventId => write!(out, "\"evt_{prefix}_{n}\""),
                Slot::Created => write!(out, "{created}"),
                Slot::Customer => write!(out, "{customer}"),
                Slot::Quantity => write!(out, "{}", 1 + n % 5),
            };
        }
        out.push_str(self.parts.last().expect("parts"));
        out.into_bytes()
    }
}

/// Event `n` built the slow way, by rewriting the parsed fixture: what [`Template::event`]
/// must produce, checked when this runs without arguments (as `cargo test --all-targets` runs
/// it).
fn reference_event(
    template: &serde_json::Value,
    prefix: &str,
    n: u64,
    customer: u64,
    created: i64,
) -> Vec<u8> {
    let mut e = template.clone();
    e["id"] = format!("evt_{prefix}_{n}").into();
    e["created"] = created.into();
    let object = &mut e["data"]["object"];
    if object["object"] == "customer" {
        object["id"] = format!("cus_bench_{customer}").into();
        object["name"] = format!("Bench customer {customer}").into();
        object["metadata"] = serde_json::json!({ "company_id": format!("bench-{customer}") });
    } else {
        object["id"] = format!("sub_bench_{customer}").into();
        object["customer"] = format!("cus_bench_{customer}").into();
        let items = object["items"]["data"].as_array_mut().expect("items");
        items.truncate(1);
        items[0]["id"] = format!("si_bench_{customer}").into();
        items[0]["price"]["product"] = "prod_bench_pro".into();
        items[0]["quantity"] = (1 + n % 5).into();
    }
    serde_json::to_vec(&e).expect("serialise")
}

/// Panics unless the templates produce the events the fixtures do.
fn check_templates() {
    for (fixture, n) in [
        (CUSTOMER, 0u64),
        (SUBSCRIPTION, 1),
        (CUSTOMER, 4242),
        (SUBSCRIPTION, 77),
    ] {
        let template: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
        let want = reference_event(&template, "bench", n, n % 13, 1_790_000_000 + n as i64);
        let got = Template::new(fixture).event("bench", n, n % 13, 1_790_000_000 + n as i64);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 5 {
        // `cargo test --all-targets` runs this without arguments: check the templates.
        check_templates();
        eprintln!("usage: webhook_load <url> <secret> <seconds> <senders> <customers> (run by benches/webhooks.sh)");
        return;
    }
    let url = args[0].clone();
    let secret = args[1].clone();
    let seconds: u64 = args[2].parse().expect("seconds");
    let senders: u64 = args[3].parse().expect("senders");
    let customers: u64 = args[4].parse().expect("customers");
    let count: Option<u64> = args.get(5).map(|c| c.parse().expect("count"));
    let prefix: Arc<str> = args.get(6).map_or("bench", String::as_str).into();
    let templates: Arc<[Template; 2]> =
        Arc::new([Template::new(CUSTOMER), Template::new(SUBSCRIPTION)]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Microseconds since the Unix epoch of the latest acknowledgement.
    let last_ack = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(senders as usize)
            .build()
            .expect("client");
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for sender in 0..senders {
            let (client, url, secret) = (client.clone(), url.clone(), secret.clone());
            let (acked, failed, templates) = (acked.clone(), failed.clone(), templates.clone());
            let (last_ack, prefix) = (last_ack.clone(), prefix.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    let n = sender + i * senders;
                    i += 1;
                    let more = match count {
                        Some(count) => n < count,
                        None => Instant::now() < deadline,
                    };
                    if !more {
                        break;
                    }
                    let customer = n % customers;
                    let now = chrono::Utc::now().timestamp();
                    let body = templates[(n % 2) as usize].event(&prefix, n, customer, now);
                    let header = signature::sign(&body, &secret, now);
                    let sent = client
                        .post(&url)
                        .header("Stripe-Signature", header)
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            let at = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_micros() as u64);
                            last_ack.fetch_max(at, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                            }
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("{e}");
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let acked = acked.load(Ordering::Relaxed);
    println!(
        "acked {acked} failed {} seconds {elapsed:.2} rate {:.0} last_ack_epoch {:.6}",
        failed.load(Ordering::Relaxed),
        acked as f64 / elapsed,
        last_ack.load(Ordering::Relaxed) as f64 / 1e6
    );
}
