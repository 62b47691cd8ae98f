//! The baseline for the check benchmarks: axum handlers that return fixed bodies of the same
//! size as entitled's answers (one check, all flags, check-bulk), parsing the request body as
//! JSON just as a real handler must. `benches/checks.sh` runs it beside `entitled serve`
//! under the same load.
//!
//! Usage: cargo bench --bench baseline_server -- <port> <check-body> [<all-flags-body>
//! [<check-bulk-body>]]

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(port), Some(body_file)) = (args.first(), args.get(1)) else {
        // `cargo test --all-targets` runs this without arguments: nothing to serve.
        eprintln!("usage: baseline_server <port> <body-file> (run by benches/checks.sh)");
        return;
    };
    let body = leak(body_file);
    // Without their files, the all-flags and bulk routes answer the single check's body.
    let all_body = args.get(2).map_or(body, |f| leak(f));
    let bulk_body = args.get(3).map_or(all_body, |f| leak(f));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = Router::new()
            .route("/flags/{key}/check", fixed(body))
            .route("/flags/check", fixed(all_body))
            .route("/flags/check-bulk", fixed(bulk_body))
            .route("/noop", post(|| async { "" }));
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .await
            .expect("bind");
        axum::serve(listener, app).await.expect("serve");
    });
}

fn leak(file: &str) -> &'static str {
    Box::leak(
        std::fs::read_to_string(file)
            .expect("read body file")
            .into_boxed_str(),
    )
}

/// A POST handler that parses the request like a real handler would, then answers `body`.
fn fixed(body: &'static str) -> axum::routing::MethodRouter {
    post(move |req: Bytes| async move {
        let _: serde_json::Value = serde_json::from_slice(&req).unwrap_or_default();
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    })
}
