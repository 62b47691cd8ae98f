//! A TCP proxy in front of the test Postgres that a test can cut, for the outage tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to the test Postgres while up. [`PgProxy::cut`] drops every open
/// connection and refuses new ones until [`PgProxy::restore`]. Dropping it cuts everything
/// and stops listening.
pub struct PgProxy {
    /// The Postgres address connections go to (`host:port`).
    target: String,
    /// Where the proxy listens (`127.0.0.1:port`).
    addr: String,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    /// A proxy on `127.0.0.1:0` to the Postgres of [`super::server_url`].
    pub async fn start() -> PgProxy {
        let target = authority(&super::server_url()).to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, cut_rx) = watch::channel(0u64);
        let accept = tokio::spawn({
            let (up, target) = (up.clone(), target.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let mut cut = cut_rx.clone();
                    cut.borrow_and_update(); // only a cut after this connection opened ends it
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            }
        });
        PgProxy {
            target,
            addr,
            up,
            cuts,
            accept,
        }
    }

    /// `db_url` (a database of the test Postgres) reached through the proxy.
    pub fn url(&self, db_url: &str) -> String {
        assert_eq!(
            authority(db_url),
            self.target,
            "{db_url} is not on the test Postgres"
        );
        db_url.replacen(&self.target, &self.addr, 1)
    }

    /// Postgres goes away: open connections are dropped, new ones refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Postgres is back: new connections are forwarded again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `host:port` of a `postgres://[user@]host:port[/db]` URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// Asserts the answer to a write sent at `started` while Postgres is cut off: 503 with our
/// error body naming the database, within six seconds.
pub fn assert_database_unavailable(
    status: reqwest::StatusCode,
    body: &serde_json::Value,
    started: std::time::Instant,
) {
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}
