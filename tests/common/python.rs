//! The Python SDK scripts of `tests/sdk/`, run with the SDK virtualenv's interpreter.

use super::process;
use super::TestApp;

/// The interpreter: `ENTITLED_SDK_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("ENTITLED_SDK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `script` with `ENTITLED_SDK_PYTHON` (set by `scripts/test.sh`; else `python3`, which
/// must have the SDKs), passing the server's URL and key, then `extra`. The script must exit
/// 0 and print `OK`. The interpreter is killed if the test ends first.
pub async fn run_script(app: &TestApp, script: &str, extra: &[String]) {
    let python = python();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(script).arg(&app.base).arg(&app.key).args(extra);
    let out = process::run(cmd).await;
    assert!(
        out.status.success() && out.stdout.contains("OK"),
        "{script} with {python} (set ENTITLED_SDK_PYTHON or run scripts/test.sh): {}\n\
         stdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Runs `script` with the same interpreter and `args`, and returns the JSON on the last line
/// of its stdout. The script must exit 0.
pub async fn json(script: &str, args: Vec<String>) -> serde_json::Value {
    let python = python();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(script).args(&args);
    let out = process::run(cmd).await;
    out.assert_success(&format!("{script} with {python}"));
    let last = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{script}: last line not JSON ({e}):\n{}\n{}",
            out.stdout, out.stderr
        )
    })
}
