//! A webhook receiver for tests: an HTTP server on 127.0.0.1 that records every request
//! (headers, raw body, arrival time, what it answered) and answers as the test programs it:
//! a script of statuses taken one per request (then a default status), an optional delay
//! before each answer, and connections refused until it is opened ([`Receiver::reserve`]).
//! It tracks requests in flight, per `webhook-id` and in total, and notes every request that
//! arrived while another with the same `webhook-id` was still in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `webhook-id` header ("" when absent).
    pub webhook_id: String,
    /// Header names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub arrived: Instant,
    /// The status the receiver chose for it.
    pub status: u16,
    /// Whether the answer was sent (false while delayed, or when the sender went away first).
    pub answered: bool,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Recorder {
    script: VecDeque<u16>,
    default_status: Option<u16>,
    delay: Duration,
    deliveries: Vec<Delivery>,
    in_flight: HashMap<String, usize>,
    in_flight_total: usize,
    max_in_flight_total: usize,
    overlaps: Vec<String>,
}

type Shared = Arc<Mutex<Recorder>>;

pub struct Receiver {
    /// Where to point a webhook: `http://127.0.0.1:<port>/hook`.
    pub url: String,
    shared: Shared,
    socket: Mutex<Option<TcpSocket>>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Receiver {
    /// A receiver answering 200 at once.
    pub async fn start() -> Receiver {
        let r = Receiver::reserve();
        r.open();
        r
    }

    /// A receiver whose port is bound but not listening: connections are refused until
    /// [`Receiver::open`].
    pub fn reserve() -> Receiver {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().unwrap().port();
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            shared: Arc::default(),
            socket: Mutex::new(Some(socket)),
            server: Mutex::new(None),
        }
    }

    /// Starts accepting connections.
    pub fn open(&self) {
        let socket = self
            .socket
            .lock()
            .unwrap()
            .take()
            .expect("the receiver is not open yet");
        let listener = socket.listen(1024).expect("listen");
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().unwrap() = Some(server);
    }

    fn lock(&self) -> MutexGuard<'_, Recorder> {
        self.shared.lock().unwrap()
    }

    /// The next requests get these statuses, one each, before the default.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.lock().script.extend(statuses);
    }

    /// The status once the script is used up (200 unless set).
    pub fn answer_by_default(&self, status: u16) {
        self.lock().default_status = Some(status);
    }

    /// Waits this long before answering each request.
    pub fn delay_each(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// Requests whose handling has begun and not ended.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight_total
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight_total
    }

    /// The `webhook-id`s of requests that arrived while another with the same id was in
    /// flight.
    pub fn overlaps(&self) -> Vec<String> {
        self.lock().overlaps.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.server.lock().unwrap().take() {
            s.abort();
        }
    }
}

/// Ends a request's time in flight however its handling ends (answered, or dropped when the
/// sender goes away).
struct InFlight {
    shared: Shared,
    webhook_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut r = self.shared.lock().unwrap();
        r.in_flight_total -= 1;
        if let Some(n) = r.in_flight.get_mut(&self.webhook_id) {
            *n -= 1;
        }
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (index, status, delay, _guard) = {
        let mut r = shared.lock().unwrap();
        let status = match r.script.pop_front() {
            Some(s) => s,
            None => r.default_status.unwrap_or(200),
        };
        let n = r.in_flight.entry(webhook_id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            r.overlaps.push(webhook_id.clone());
        }
        r.in_flight_total += 1;
        r.max_in_flight_total = r.max_in_flight_total.max(r.in_flight_total);
        r.deliveries.push(Delivery {
            webhook_id: webhook_id.clone(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            arrived: Instant::now(),
            status,
            answered: false,
        });
        let guard = InFlight {
            shared: shared.clone(),
            webhook_id,
        };
        (r.deliveries.len() - 1, status, r.delay, guard)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.lock().unwrap().deliveries[index].answered = true;
    StatusCode::from_u16(status).unwrap()
}

/// Verifies deliveries with the official libraries, in Python (`tests/sdk/verify_webhooks.py`):
/// `schematic.webhook_utils.verify_webhook_signature` with each of `schematic_secrets` and
/// `standardwebhooks.Webhook(secret).verify` with each of `standard_secrets`. Returns, per
/// delivery and in order, `{"webhook_id", "schematic": [bool…], "standard": [bool…],
/// "errors": [..]}`.
pub async fn verify_in_python(
    deliveries: &[Delivery],
    schematic_secrets: &[&str],
    standard_secrets: &[&str],
) -> Vec<Value> {
    use base64::Engine;
    let items: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            json!({
                "headers": d.headers,
                "body_b64": base64::engine::general_purpose::STANDARD.encode(&d.body),
                "schematic_secrets": schematic_secrets,
                "standard_secrets": standard_secrets,
            })
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "entitled-deliveries-{}.json",
        entitled::ids::new_id("f")
    ));
    std::fs::write(&path, serde_json::to_vec(&items).unwrap()).unwrap();
    let out = super::python::json(
        "tests/sdk/verify_webhooks.py",
        vec![path.display().to_string()],
    )
    .await;
    let _ = std::fs::remove_file(&path);
    let results = out.as_array().expect("a list of results").clone();
    assert_eq!(results.len(), deliveries.len(), "{out}");
    results
}
