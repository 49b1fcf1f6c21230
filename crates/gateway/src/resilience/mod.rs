//! Resilience: circuit breakers and the one place that retries and falls back.

pub mod breaker;
pub mod retry;
