//! `optiroute bench` against the real gateway, and what graceful shutdown leaves behind.

use std::time::Duration;

use clap::Parser;
use optiroute::cli::{Cli, Command};
use optiroute::mock::Behavior;
use serde_json::{Value, json};

use crate::common::*;

/// `optiroute bench ARGS...` as the binary parses it.
fn bench_args(args: &[&str]) -> optiroute_bench::BenchArgs {
    let cli = Cli::try_parse_from(["optiroute", "bench", "--quiet"].iter().chain(args)).unwrap();
    match cli.command {
        Command::Bench(a) => a,
        other => panic!("not a bench command: {other:?}"),
    }
}

/// Against OptiRoute the JSON answers carry every `x-optiroute-*` header; the report must still count
/// the output tokens the body reports (it skipped the body then, and reported none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_json_run_against_the_gateway_counts_output_tokens() {
    let (mock, gw) = openai_setup(|_| {}).await;
    mock.handle.set_default(Behavior {
        text: Some("one two three four five".into()),
        ..Default::default()
    });
    // What one answer's usage says.
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("m", "hi"))
        .send()
        .await
        .unwrap();
    for h in [
        "x-optiroute-cache",
        "x-optiroute-tier",
        "x-optiroute-cost-usd",
        "x-optiroute-saved-usd",
    ] {
        assert!(r.headers().contains_key(h), "{h} missing: {:?}", r.headers());
    }
    let v: Value = r.json().await.unwrap();
    let per_answer = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(per_answer > 0, "{v}");

    let url = gw.url.clone();
    let report = optiroute_bench::run(bench_args(&[
        "--url",
        &url,
        "--model",
        "m",
        "--users",
        "2",
        "--requests",
        "6",
        "--mix",
        "unique",
    ]))
    .await
    .unwrap();
    assert_eq!(report.ok, 6, "{:?}", report.errors_by_status);
    assert_eq!(report.output_tokens, Some(6 * per_answer), "{report:?}");
    assert!(report.output_tokens_per_s.is_some_and(|r| r > 0.0), "{report:?}");
}

/// Durations too large to add to a clock reading (`--run-time 1e19`, `--grace`, `--think-time`, `--timeout`)
/// are "practically forever", not a panic ("overflow when adding duration to instant"); a
/// `--max-in-flight` beyond what a semaphore holds is "no limit", not a panic either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_extreme_flag_values_are_not_a_panic() {
    let (_mock, gw) = openai_setup(|_| {}).await;
    let url = gw.url.clone();
    let huge = "1e19";
    let cases: [&[&str]; 6] = [
        &[
            "--rate",
            "100/s",
            "--requests",
            "2",
            "--max-in-flight",
            "18446744073709551615",
        ],
        &["--users", "1", "--requests", "2", "--run-time", huge],
        &["--users", "1", "--requests", "2", "--timeout", huge],
        &["--rate", "100/s", "--requests", "2", "--run-time", huge],
        &["--users", "1", "--run-time", "300ms", "--grace", huge],
        &["--users", "1", "--run-time", "300ms", "--think-time", huge],
    ];
    for extra in cases {
        let mut args = vec!["--url", url.as_str(), "--model", "m"];
        args.extend_from_slice(extra);
        let args = bench_args(&args);
        // In a task of its own, so that a panic is reported as this case failing.
        let report = tokio::spawn(optiroute_bench::run(args)).await;
        let report = match report {
            Ok(r) => r.unwrap(),
            Err(e) => panic!("bench {extra:?} panicked: {e}"),
        };
        assert!(report.ok >= 1 && report.errors == 0, "{extra:?}: {report:?}");
        if extra.contains(&"--think-time") {
            // One request, then the user thinks until the run time is over.
            assert_eq!(report.requests, 1, "{extra:?}: {report:?}");
            assert!(report.duration_s >= 0.3, "{extra:?}: {report:?}");
        }
    }
}

/// A stream still running when the shutdown grace period ends is closed then (the server does not
/// keep serving it after it says it stopped), and its request-log row is written before the log closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_after_the_grace_period_closes_streams_and_keeps_their_log_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, mut gw) = openai_setup(|cfg| {
        cfg.server.shutdown_grace_secs = 1;
        cfg.store.database_url = Some(format!("sqlite://{}", dir.path().join("log.db").display()));
    })
    .await;
    // 200 words, 100 ms apart: about 20 s, far longer than the grace period.
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    mock.handle.push(Behavior {
        chunk_delay_ms: 100,
        text: Some(words.join(" ")),
        ..Default::default()
    });
    let store = gw.state.request_log.store().cloned().expect("request log on");
    let mut body = chat_body("m", "x");
    body["stream"] = json!(true);
    let mut r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(r.chunk().await.unwrap().is_some());

    gw.signal_shutdown();
    let task = gw.task.take().unwrap();
    let res = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(res.is_ok());

    // The server said it stopped: the stream must be over (cut), not still running.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        while let Ok(Some(c)) = r.chunk().await {
            rest.extend_from_slice(&c);
        }
        rest
    })
    .await
    .expect("the stream went on after the server stopped");
    assert!(!String::from_utf8_lossy(&rest).contains("[DONE]"));

    // Its row is in the store (written by the log's last flush, not lost after it closed).
    let rows = optiroute::request_log::recent(&store, 100).await.unwrap();
    let row = rows.iter().find(|row| row.request_id == request_id);
    let row = row.unwrap_or_else(|| panic!("no request-log row for the cut stream: {rows:?}"));
    assert_eq!(row.status, 499, "{row:?}");
    assert!(row.completion_tokens > 0, "{row:?}");
    assert_eq!(gw.state.metrics.request_log_dropped.get(), 0);
}
