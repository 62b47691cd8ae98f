//! entitled: a self-hosted entitlement layer for B2B SaaS.
//!
//! Where things live: `api/` (HTTP routes, auth, one file per resource), `engine/` (pure
//! evaluation of checks), `cache/` (the in-memory snapshot checks read, and its
//! LISTEN/NOTIFY invalidation), `store/` (SQL per aggregate), `stripe/` (webhooks: signature, inbox, apply, API client),
//! `cli` (the `entitled` command).
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod engine;
pub mod error;
pub mod ids;
pub mod ingest;
pub mod insights;
pub mod jobs;
pub mod mcp;
pub mod metrics;
pub mod seed;
pub mod store;
pub mod stripe;
