//! entitled: a self-hosted entitlement layer for B2B SaaS.
//!
//! Where things live (see `docs/architecture.md`; imports point down this list only):
//! - `app` — the composition root: builds the state, starts background tasks, serves.
//! - `cli` — the `entitled` command; `seed` loads catalog files.
//! - `api/` — HTTP: the route table, auth extractor, one module per resource, errors mapped
//!   to statuses (`api/error.rs`), MCP (`api/mcp.rs`).
//! - services: `stripe/` (webhook signature, inbox, apply, API client, reconcile),
//!   `jobs/` (the scheduler and its jobs), `ingest` (event group commit), `insights`,
//!   `outbound/` (outbound webhooks: emitting into the outbox, signing, delivery),
//!   `outbox` (the claim-lease-deliver loop every outbox drains with).
//! - `datastream/` — `GET /datastream`: the SDKs' local evaluation, the snapshot in the rules
//!   engine's model, pushed as it changes.
//! - `changes` — what a write changed: notify inside the transaction, commit, refresh.
//! - `cache/` — the in-memory snapshot checks read (`cache/check.rs` evaluates a check).
//! - `store/` — all SQL, the pool and migrations, and the store's error type.
//! - `engine/` — pure evaluation: rules, most-generous merge, metric periods.
//! - leaves: `config`, `ids`, `metrics`, `group` (the group-commit queue `ingest` and the
//!   Stripe inbox write through).
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cache;
pub mod changes;
pub mod cli;
pub mod config;
pub mod console;
pub mod datastream;
pub mod engine;
pub mod group;
pub mod ids;
pub mod ingest;
pub mod insights;
pub mod jobs;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod seed;
pub mod store;
pub mod stripe;
