//! Datastream fan-out: how many messages per second one replica pushes to subscribed
//! connections. `benches/datastream.sh` starts the server and runs this against it.
//!
//! Usage: cargo bench --bench datastream_fanout -- <base-url> <api-key> <connections> <seconds>
//!
//! Opens `connections` WebSockets to `/datastream`, each subscribed to the company
//! `{"id": "bench-co"}`, then tracks usage for that company from 4 concurrent writers for
//! `seconds`: every committed event is a partial metric update to every connection. Reports
//! the messages received per second over the whole connection set (from the first change to
//! the last message), and whether every expected message arrived.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [base, key, conns, seconds] = args.as_slice() else {
        // `cargo test --all-targets` runs this without arguments: nothing to measure.
        eprintln!("usage: datastream_fanout <base-url> <api-key> <connections> <seconds> (run by benches/datastream.sh)");
        return Ok(());
    };
    let conns: usize = conns.parse()?;
    let seconds: f64 = seconds.parse()?;
    let ws_url = format!("{}/datastream", base.replacen("http", "ws", 1));
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let counting = Arc::new(AtomicBool::new(false));

    // Connect and subscribe, 50 at a time.
    for chunk in (0..conns).collect::<Vec<_>>().chunks(50) {
        let mut handles = Vec::new();
        for _ in chunk {
            let (url, key) = (ws_url.clone(), key.clone());
            let (received, last, counting) = (received.clone(), last.clone(), counting.clone());
            handles.push(tokio::spawn(async move {
                let mut req = url.into_client_request().unwrap();
                req.headers_mut()
                    .insert("X-Schematic-Api-Key", key.parse().unwrap());
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
                let start = r#"{"data":{"action":"start","entity_type":"rulesengine.Company","keys":{"id":"bench-co"}}}"#;
                ws.send(Message::text(start)).await.unwrap();
                // The full company first.
                loop {
                    if let Some(Ok(Message::Text(t))) = ws.next().await {
                        assert!(t.contains("\"full\""), "{t}");
                        break;
                    }
                }
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if matches!(m, Message::Text(_)) && counting.load(Ordering::Relaxed) {
                            received.fetch_add(1, Ordering::Relaxed);
                            *last.lock().unwrap() = Instant::now();
                        }
                    }
                });
            }));
        }
        for h in handles {
            h.await?;
        }
    }
    eprintln!("{conns} connections subscribed");

    // Track events from 4 writers for `seconds`.
    counting.store(true, Ordering::Relaxed);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (client, base, key, sent) = (client.clone(), base.clone(), key.clone(), sent.clone());
        writers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = client
                    .post(format!("{base}/events"))
                    .header("X-Schematic-Api-Key", &key)
                    .json(&serde_json::json!({"event_type": "track", "body": {"event": "api_call", "company": {"id": "bench-co"}}}))
                    .send()
                    .await
                    .expect("track");
                assert!(r.status().is_success(), "{}", r.status());
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    let events = sent.load(Ordering::Relaxed);
    let expected = events * conns as u64;
    // Drain: wait until every message arrived or nothing came for 2 s.
    let mut quiet_since = Instant::now();
    let mut seen = received.load(Ordering::Relaxed);
    while received.load(Ordering::Relaxed) < expected
        && quiet_since.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let got = received.load(Ordering::Relaxed);
    let span = last.lock().unwrap().duration_since(started).as_secs_f64();
    // Fewer messages than events × connections means pushes coalesced: a connection behind
    // the changes renders the latest state once for several of them.
    println!(
        "fan-out: {conns} connections, {events} events ({:.0}/s), {got} messages (events × connections = {expected}) in {span:.2} s: {:.0} messages/s",
        events as f64 / seconds,
        got as f64 / span
    );
    Ok(())
}
