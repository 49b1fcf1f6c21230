//! `optiroute bench`: a load generator for OptiRoute or any OpenAI-compatible endpoint.
//!
//! ```text
//! optiroute bench --users 50 --spawn-rate 5 --run-time 60s          # closed loop (Locust-like)
//! optiroute bench --rate 1000/s --run-time 30s --max-in-flight 512   # open loop, no coordinated omission
//! optiroute bench --stream --requests 200 --json                     # streams: TTFT, inter-token gaps
//! ```
//!
//! The binary mounts [`BenchArgs`] as a subcommand and calls [`run`] then [`print_report`]
//! (or [`run_and_print`]).

mod driver;
mod http;
mod parse;
mod stats;
mod workload;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

pub use parse::{parse_duration, parse_rate};
pub use stats::{CacheReport, Percentiles, Report};
pub use workload::builtin_pool;

use driver::{Load, Plan, Shared};
use http::HttpExec;
use stats::{RunMeta, Stats};
use workload::{BodyShape, Workload};

/// Which API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    /// POST {url}/v1/chat/completions (OpenAI-compatible)
    Chat,
    /// POST {url}/generate {"model": ..., "prompt": ...} (OptiRoute's simple API)
    Generate,
}

/// The built-in prompt mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Pool prompts with probability --repeat-ratio, otherwise unique prompts.
    Default,
    /// Every prompt unique (never a cache hit).
    Unique,
    /// Pool prompts only, cycled in order (cache hits once warm).
    Repeated,
}

/// Load-test an OptiRoute gateway or any OpenAI-compatible endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL; requests go to {url}/v1/chat/completions (or {url}/generate). A URL ending in
    /// /v1 or /chat/completions is used as given.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// Model name sent in each request.
    #[arg(long, default_value = "auto")]
    pub model: String,

    /// Bearer token sent as `Authorization: Bearer ...`.
    #[arg(long, env = "OPTIROUTE_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Extra request header, `Name: value` (repeatable). It replaces the generator's own header
    /// of that name (`Authorization` from --api-key, `Content-Type`, `User-Agent`, ...); a name
    /// given twice keeps the last.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,

    /// Closed loop: number of concurrent users.
    #[arg(long, default_value_t = 50)]
    pub users: u32,

    /// Closed loop: users started per second (default: all at once).
    #[arg(long, value_parser = parse::parse_spawn_rate)]
    pub spawn_rate: Option<f64>,

    /// Closed loop: pause between a user's requests (e.g. 500ms).
    #[arg(long, value_parser = parse::parse_duration, default_value = "0ms")]
    pub think_time: Duration,

    /// Open loop: fixed arrival rate, e.g. 1000/s, 600/m. Latency is measured from each
    /// request's intended send time.
    #[arg(long, value_parser = parse::parse_rate, conflicts_with_all = ["users", "spawn_rate", "think_time"])]
    pub rate: Option<f64>,

    /// Open loop: most requests in flight at once.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,

    /// How long to send requests (e.g. 30s, 2m). Default 60s, or unlimited with --requests.
    #[arg(long, value_parser = parse::parse_duration)]
    pub run_time: Option<Duration>,

    /// Stop after exactly this many requests.
    #[arg(long)]
    pub requests: Option<u64>,

    /// After the run time, how long requests in flight may finish before they are aborted.
    #[arg(long, value_parser = parse::parse_duration, default_value = "30s")]
    pub grace: Duration,

    /// Per-request timeout (whole response, including the stream).
    #[arg(long, value_parser = parse::parse_duration, default_value = "120s")]
    pub timeout: Duration,

    /// Send streaming requests (SSE) and measure time to first token and inter-token gaps.
    #[arg(long)]
    pub stream: bool,

    /// JSONL prompt file: one {"prompt": "..."} or {"messages": [...]} per line, used in order.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,

    /// Built-in prompt mix (ignored with --prompts).
    #[arg(long, value_enum, default_value_t = Mix::Default)]
    pub mix: Mix,

    /// Share of repeated (cacheable) prompts in the default mix.
    #[arg(long, value_parser = parse::parse_ratio, default_value = "0.5")]
    pub repeat_ratio: f64,

    /// `max_tokens` sent with every request (chat and generate).
    #[arg(long)]
    pub max_tokens: Option<u32>,

    /// Seed for the prompt mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Use HTTP/2 without TLS negotiation (h2c prior knowledge).
    #[arg(long)]
    pub http2: bool,

    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Print one JSON object instead of the table (implies --quiet).
    #[arg(long)]
    pub json: bool,
}

/// The URL requests are posted to.
pub fn endpoint_url(base: &str, endpoint: Endpoint) -> String {
    let base = base.trim_end_matches('/');
    match endpoint {
        Endpoint::Chat if base.ends_with("/chat/completions") => base.to_owned(),
        Endpoint::Chat if base.ends_with("/v1") => format!("{base}/chat/completions"),
        Endpoint::Chat => format!("{base}/v1/chat/completions"),
        Endpoint::Generate if base.ends_with("/generate") => base.to_owned(),
        Endpoint::Generate => format!("{base}/generate"),
    }
}

/// Checks `--url` (an http or https URL with a host) and returns the URL requests are posted to.
fn target_url(base: &str, endpoint: Endpoint) -> anyhow::Result<reqwest::Url> {
    let ok = reqwest::Url::parse(base.trim())
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()));
    let shown = without_userinfo(base);
    if !ok {
        bail!("invalid --url `{shown}`: expected an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000");
    }
    let url = endpoint_url(base, endpoint);
    reqwest::Url::parse(&url).with_context(|| format!("invalid --url `{shown}`"))
}

/// `base` with any `user:password@` before the host replaced by `***@`, for error messages.
fn without_userinfo(base: &str) -> String {
    let rest_at = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[rest_at..]
        .find(['/', '?', '#'])
        .map_or(base.len(), |i| rest_at + i);
    match base[rest_at..host_end].rfind('@') {
        Some(at) => format!("{}***{}", &base[..rest_at], &base[rest_at + at..]),
        None => base.to_string(),
    }
}

fn plan_of(args: &BenchArgs) -> anyhow::Result<Plan> {
    let load = match args.rate {
        Some(rate) => {
            if args.max_in_flight == 0 {
                bail!("--max-in-flight must be at least 1");
            }
            Load::Open {
                rate,
                max_in_flight: args.max_in_flight,
            }
        }
        None => {
            if args.users == 0 {
                bail!("--users must be at least 1");
            }
            Load::Closed {
                users: args.users,
                spawn_rate: args.spawn_rate,
                think: args.think_time,
            }
        }
    };
    let run_time = match (args.run_time, args.requests) {
        (None, None) => Some(Duration::from_secs(60)),
        (rt, _) => rt,
    };
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    Ok(Plan {
        load,
        run_time,
        requests: args.requests,
        grace: args.grace,
    })
}

fn headers_of(args: &BenchArgs) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if args.stream {
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    if let Some(key) = &args.api_key {
        let mut v = HeaderValue::from_str(&format!("Bearer {key}")).context("invalid --api-key")?;
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
    }
    // Errors never quote the argument or the value: they may hold a secret.
    for (i, raw) in args.headers.iter().enumerate() {
        let n = i + 1;
        let Some((name, value)) = raw.split_once(':') else {
            bail!("--header #{n}: expected `Name: value`, found no `:` (the argument is not shown)");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("--header #{n}: invalid header name (not shown)"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("--header #{n} `{name}`: invalid value (not shown)"))?;
        // `insert`, not `append`: reqwest's default headers keep one value per name anyway.
        h.insert(name, value);
    }
    Ok(h)
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = workload::mix64((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32));
    format!("{mixed:016x}")
}

fn build_client(args: &BenchArgs, pool: usize) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a bundled crypto provider (as in the gateway); make sure one is
    // installed so building the client cannot panic. Fails harmlessly if one already is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
        .timeout(args.timeout)
        // Before the headers, so that a --header User-Agent replaces it.
        .user_agent(concat!("optiroute-bench/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers_of(args)?);
    if args.http2 {
        builder = builder.http2_prior_knowledge();
    }
    builder.build().context("building the HTTP client")
}

fn progress_bar(plan: &Plan) -> anyhow::Result<ProgressBar> {
    let (len, template) = match (plan.run_time, plan.requests) {
        (Some(rt), _) => (
            u64::try_from(rt.as_millis()).unwrap_or(u64::MAX).max(1),
            "{spinner} {elapsed_precise} [{bar:30}] {percent:>3}%  {msg}",
        ),
        (None, Some(n)) => (n, "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len}  {msg}"),
        (None, None) => (1, "{spinner} {elapsed_precise} {msg}"),
    };
    let style = ProgressStyle::with_template(template)?.progress_chars("=> ");
    Ok(ProgressBar::new(len).with_style(style))
}

/// Runs the benchmark described by `args` and returns its report (prints nothing but the
/// progress bar; see [`print_report`]). Ctrl-C stops early and reports what was measured.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let plan = plan_of(&args)?;
    let target = target_url(&args.url, args.endpoint)?;
    if args.stream && args.endpoint == Endpoint::Generate {
        bail!("--stream needs --endpoint chat");
    }
    let shape = BodyShape {
        endpoint: args.endpoint,
        model: args.model.clone(),
        stream: args.stream,
        max_tokens: args.max_tokens,
    };
    let workload = match &args.prompts {
        Some(path) => Workload::from_entries(shape, &workload::load_prompt_file(path)?),
        None => Workload::builtin(shape, args.mix, args.repeat_ratio, args.seed, run_id()),
    };
    let pool = match plan.load {
        Load::Closed { users, .. } => users as usize,
        Load::Open { max_in_flight, .. } => max_in_flight,
    };
    let url = endpoint_url(&args.url, args.endpoint);
    let exec = Arc::new(HttpExec {
        client: build_client(&args, pool)?,
        url: target,
        stream: args.stream,
        workload,
    });
    let shared = Arc::new(Shared::new(Stats::new()?));

    let bar = if args.quiet || args.json {
        None
    } else {
        Some(progress_bar(&plan)?)
    };
    let started = Instant::now();
    let ticker = bar.clone().map(|bar| {
        let (shared, plan) = (shared.clone(), plan.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let elapsed = started.elapsed();
                let done = shared.completed.load(Ordering::Relaxed);
                let pos = match (plan.run_time, plan.requests) {
                    (Some(_), _) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    (None, _) => done,
                };
                bar.set_position(pos.min(bar.length().unwrap_or(u64::MAX)));
                let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{done} req  {rate:.1} req/s  {} errors  {} in flight",
                    shared.errors.load(Ordering::Relaxed),
                    shared.in_flight.load(Ordering::Relaxed)
                ));
            }
        })
    });

    let interrupted = async {
        // Without a signal driver, never report an interruption.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let summary = driver::drive(exec, &plan, shared.clone(), interrupted).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let (mode, users, rate_per_s) = match plan.load {
        Load::Closed { users, .. } => ("closed", Some(users), None),
        Load::Open { rate, .. } => ("open", None, Some(rate)),
    };
    let meta = RunMeta {
        url,
        endpoint: match args.endpoint {
            Endpoint::Chat => "chat",
            Endpoint::Generate => "generate",
        }
        .to_owned(),
        model: args.model.clone(),
        mode: mode.to_owned(),
        stream: args.stream,
        users,
        rate_per_s,
        elapsed: summary.elapsed,
        unfinished: summary.unfinished,
        unsent: summary.unsent,
        max_lag: summary.max_lag,
    };
    Ok(shared.take_stats()?.into_report(meta))
}

/// Prints the report to stdout: one JSON object with `json`, else the table.
pub fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_table())?;
    }
    out.flush()?;
    Ok(())
}

/// [`run`] then [`print_report`], as `optiroute bench` does. Fails after printing when
/// requests were sent and none succeeded ([`Report::none_succeeded`]), so that the exit status shows it.
pub async fn run_and_print(args: BenchArgs) -> anyhow::Result<Report> {
    let json = args.json;
    let report = run(args).await?;
    print_report(&report, json)?;
    if let Some(line) = report.none_succeeded() {
        bail!(line);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn cli_defaults_and_plans() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.url, "http://127.0.0.1:8000");
        let p = plan_of(&a).unwrap();
        assert_eq!(
            p.load,
            Load::Closed {
                users: 50,
                spawn_rate: None,
                think: Duration::ZERO
            }
        );
        assert_eq!(p.run_time, Some(Duration::from_secs(60)));

        let a = parse(&[
            "--users",
            "50",
            "--spawn-rate",
            "5",
            "--run-time",
            "2m",
            "--think-time",
            "500ms",
        ])
        .unwrap();
        let p = plan_of(&a).unwrap();
        assert_eq!(
            p.load,
            Load::Closed {
                users: 50,
                spawn_rate: Some(5.0),
                think: Duration::from_millis(500)
            }
        );
        assert_eq!(p.run_time, Some(Duration::from_secs(120)));

        let a = parse(&["--rate", "1000/s", "--requests", "10"]).unwrap();
        let p = plan_of(&a).unwrap();
        assert_eq!(
            p.load,
            Load::Open {
                rate: 1000.0,
                max_in_flight: 1000
            }
        );
        assert_eq!((p.run_time, p.requests), (None, Some(10)));

        assert!(parse(&["--rate", "10/s", "--users", "5"]).is_err());
        assert!(parse(&["--run-time", "forever"]).is_err());
        assert!(plan_of(&parse(&["--users", "0"]).unwrap()).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            endpoint_url("http://h:1", Endpoint::Chat),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://h:1/", Endpoint::Chat),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("https://api.x.com/v1", Endpoint::Chat),
            "https://api.x.com/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://h/v1/chat/completions", Endpoint::Chat),
            "http://h/v1/chat/completions"
        );
        assert_eq!(endpoint_url("http://h:1", Endpoint::Generate), "http://h:1/generate");
    }

    #[test]
    fn url_must_be_http_with_a_host() {
        let ok = target_url("https://api.x.com/v1", Endpoint::Chat).unwrap();
        assert_eq!(ok.as_str(), "https://api.x.com/v1/chat/completions");
        assert!(target_url("http://127.0.0.1:8000/", Endpoint::Generate).is_ok());
        for bad in ["ftp://x", "localhost:8080", "http://", "https://", "not a url", ""] {
            let err = target_url(bad, Endpoint::Chat).unwrap_err().to_string();
            assert!(
                err.contains("expected an http:// or https:// URL with a host"),
                "{bad}: {err}"
            );
        }
        // a password in a rejected URL is not repeated in the error
        let err = target_url("ftp://alice:s3cret@host/x", Endpoint::Chat)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret") && err.contains("ftp://***@host/x"), "{err}");
        assert_eq!(without_userinfo("http://a@b@c:1/p?q=@"), "http://***@c:1/p?q=@");
        assert_eq!(without_userinfo("localhost:8080"), "localhost:8080");
    }

    #[test]
    fn headers() {
        let a = parse(&["--api-key", "sk-1", "-H", "x-team: blue", "--stream"]).unwrap();
        let h = headers_of(&a).unwrap();
        assert_eq!(h.get(AUTHORIZATION).unwrap(), "Bearer sk-1");
        assert_eq!(h.get("x-team").unwrap(), "blue");
        assert_eq!(h.get(ACCEPT).unwrap(), "text/event-stream");
        assert!(headers_of(&parse(&["-H", "nocolon"]).unwrap()).is_err());

        // A --header replaces the generator's header of that name, and the last one of a name wins.
        let a = parse(&[
            "--api-key",
            "sk-1",
            "-H",
            "authorization: Bearer sk-2",
            "-H",
            "content-type: text/plain",
            "-H",
            "x-a: 1",
            "-H",
            "X-A: 2",
        ])
        .unwrap();
        let h = headers_of(&a).unwrap();
        let all = |name| h.get_all(name).iter().collect::<Vec<_>>();
        assert_eq!(all(AUTHORIZATION.as_str()), ["Bearer sk-2"]);
        assert_eq!(all(CONTENT_TYPE.as_str()), ["text/plain"]);
        assert_eq!(all("x-a"), ["2"]);
    }

    #[test]
    fn header_errors_do_not_show_the_value() {
        let err = |h: &str| {
            format!(
                "{:#}",
                headers_of(&parse(&["-H", "x-ok: 1", "-H", h]).unwrap()).unwrap_err()
            )
        };
        let e = err("Authorization Bearer sk-secret");
        assert!(e.contains("--header #2") && e.contains("Name: value"), "{e}");
        let e = err("Bearer sk-secret: x");
        assert!(e.contains("--header #2: invalid header name"), "{e}");
        let e = err("X-Token: sk-secret\u{1}");
        assert!(e.contains("--header #2 `x-token`: invalid value"), "{e}");
        for h in [
            "Authorization Bearer sk-secret",
            "Bearer sk-secret: x",
            "X-Token: sk-secret\u{1}",
        ] {
            assert!(!err(h).contains("secret"), "{}", err(h));
        }
    }
}
