//! OptiRoute: a cost-aware, resilient LLM gateway. See the README for the tour.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod histogram;
pub mod http;
pub mod key_events;
pub mod ledger;
pub mod limits;
pub mod limits_redis;
pub mod mock;
pub mod providers;
pub mod request_log;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
