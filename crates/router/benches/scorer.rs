//! Scoring latency on a ~2 KB prompt: `cargo bench -p optiroute-router --bench scorer`.

use criterion::{Criterion, criterion_group, criterion_main};
use optiroute_router::features::{HashConfig, LexicalStats, NumericStats, TextStats, hashed_ngrams};
use optiroute_router::{Conversation, HeuristicScorer, LearnedScorer, Scorer};
use std::hint::black_box;

fn prompt_2kb() -> String {
    let base = "A train leaves the station at 3:15 pm travelling at 72 km/h; a second train follows 40 minutes \
                later at 95 km/h. Explain step by step when and where the second train catches up, and write \
                a short Python function `catch_up(v1, v2, delay)` that returns the answer. ";
    let mut s = String::new();
    while s.len() < 2048 {
        s.push_str(base);
    }
    s.truncate(2048);
    s
}

fn bench(c: &mut Criterion) {
    let conv = Conversation::from_pairs([
        ("system", "You are a helpful assistant.".to_string()),
        ("user", prompt_2kb()),
    ]);
    let learned = match LearnedScorer::embedded() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("embedded weights failed to load: {e}");
            return;
        }
    };
    c.bench_function("learned_score_2kb", |b| b.iter(|| learned.score(black_box(&conv))));
    let text = prompt_2kb();
    c.bench_function("text_stats_2kb", |b| b.iter(|| TextStats::of(black_box(&text))));
    c.bench_function("numeric_stats_2kb", |b| b.iter(|| NumericStats::of(black_box(&text))));
    c.bench_function("lexical_stats_2kb", |b| b.iter(|| LexicalStats::of(black_box(&text))));
    let hash = HashConfig::default();
    c.bench_function("hashed_ngrams_2kb", |b| {
        b.iter(|| hashed_ngrams(black_box(&text), &hash))
    });
    let heuristic = HeuristicScorer::default();
    c.bench_function("heuristic_score_2kb", |b| b.iter(|| heuristic.score(black_box(&conv))));
    // The cascade verifier on a worked GSM8K-style answer (about 600 bytes).
    let verifier = match optiroute_router::verifier::Verifier::embedded() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("embedded verifier failed to load: {e}");
            return;
        }
    };
    let question = "A shop sells 12 boxes of 8 pencils. It gives away 15 pencils and sells the rest for $2 each. \
                    Then it buys 3 more boxes with a quarter of the money. How much money does it have left?";
    let answer = "The shop has 12 * 8 = <<12*8=96>>96 pencils.\nAfter giving away 15 it has 96 - 15 = <<96-15=81>>81 pencils.\n\
                  It sells them for 81 * 2 = $<<81*2=162>>162.\nA quarter of the money is 162 / 4 = $<<162/4=40.5>>40.5.\n\
                  It has 162 - 40.5 = $<<162-40.5=121.5>>121.5 left.\n#### 121.5";
    let opts = optiroute_router::cascade::CheckOptions::MATH;
    c.bench_function("verifier_risk_answer", |b| {
        b.iter(|| verifier.risk(black_box(question), black_box(answer), opts))
    });
    c.bench_function("embedded_weights_load", |b| {
        b.iter(|| LearnedScorer::embedded().map(|m| m.name().len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
