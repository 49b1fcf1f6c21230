//! Hot-path microbenchmarks: request parsing, the routing decision and the cache key for a 2 KB prompt.
//! Run: `cargo bench -p optiroute --bench hot_path`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use optiroute::config::Config;
use optiroute::state::AppState;
use optiroute_protocol::openai::ChatRequest;

fn prompt_2kb() -> String {
    let para = "Our service receives a stream of orders; each order has an id, a customer, a list of items \
                and a total. Explain how to deduplicate them idempotently and why. ";
    let mut s = String::new();
    while s.len() < 2048 {
        s.push_str(para);
    }
    s.truncate(2048);
    s
}

fn body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "auto",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt_2kb()}
        ]
    }))
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let st = rt.block_on(AppState::new(Config::test_default())).unwrap();
    let raw = body();
    let req: ChatRequest = serde_json::from_slice(&raw).unwrap();
    optiroute_protocol::usage::warm_up();

    c.bench_function("parse_chat_request_2kb", |b| {
        b.iter(|| optiroute::http::parse_chat_request(black_box(&raw), 2048).unwrap())
    });
    c.bench_function("routing_decision_2kb", |b| {
        b.iter(|| st.router.plan(&st, black_box(&req), None, "").unwrap())
    });
    c.bench_function("cache_key_2kb", |b| {
        b.iter(|| optiroute::cache::key(black_box(&req), "auto", ""))
    });
    c.bench_function("token_count_2kb", |b| {
        b.iter(|| optiroute_protocol::usage::estimate_prompt_tokens(black_box(&req)))
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
