//! The baseline for the check benchmark: an axum handler that returns a fixed check body of
//! the same size as entitled's answer, parsing the request body as JSON just as a real
//! handler must. `benches/checks.sh` runs it beside `entitled serve` under the same load.
//!
//! Usage: cargo bench --bench baseline_server -- <port> <body-file>

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
    let body: &'static str = Box::leak(
        std::fs::read_to_string(body_file)
            .expect("read body file")
            .into_boxed_str(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = Router::new()
            .route(
                "/flags/{key}/check",
                post(move |req: Bytes| async move {
                    // Parse the request like a real handler would, then answer the fixed body.
                    let _: serde_json::Value = serde_json::from_slice(&req).unwrap_or_default();
                    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
                }),
            )
            .route("/noop", post(|| async { "" }));
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .await
            .expect("bind");
        axum::serve(listener, app).await.expect("serve");
    });
}
