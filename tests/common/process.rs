//! The `entitled` binary as a child process: CLI runs and `serve` processes. Every child is
//! killed when its handle is dropped, so a failing test leaves no process behind.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The longest a CLI run may take before the test fails (and the child is killed).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a `serve` child may take to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `entitled` on `db_url`, logging at warn (callers may override `ENTITLED_LOG__LEVEL`),
/// ignoring any `RUST_LOG` of the test's environment; killed if dropped.
pub fn entitled(db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_entitled"));
    cmd.env("DATABASE_URL", db_url)
        .env("ENTITLED_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    cmd
}

/// What a finished child printed and how it ended.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, capturing its output; fails the test if it cannot start or
/// runs longer than two minutes (the child is then killed).
pub async fn run(mut cmd: Command) -> Output {
    let what = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Output {
    /// Fails the test, naming `what` ran and showing its output, unless it exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what}: {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `cmd`, which must succeed; returns its standard output.
pub async fn run_ok(cmd: Command) -> String {
    let what = format!("{:?}", cmd.as_std());
    let out = run(cmd).await;
    out.assert_success(&what);
    out.stdout
}

/// An `entitled serve` child listening on `base`; SIGKILLed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

/// Starts `cmd serve` on a free port and waits until `/ready` answers 200.
pub async fn serve(mut cmd: Command) -> Server {
    let port = free_port();
    let child = cmd
        .arg("serve")
        .env("ENTITLED_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn entitled serve");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    super::eventually(READY_TIMEOUT, || async {
        let r = client
            .get(format!("{}/ready", server.base))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    server
}

impl Server {
    /// SIGKILL, as a crash would; returns once the process is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL entitled serve");
    }
}

/// A port nothing listens on right now (the child binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}
