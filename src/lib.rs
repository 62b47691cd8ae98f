//! entitled: a self-hosted entitlement layer for B2B SaaS.
#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
pub mod error;
pub mod ids;
