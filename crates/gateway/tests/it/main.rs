//! The one integration-test binary: real servers on loopback (the gateway in-process, scripted mock
//! upstreams, redis-server), never the internet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod auth;
mod cache;
mod feedback;
mod load;
mod providers;
mod proxy;
mod resilience;
mod scale;
