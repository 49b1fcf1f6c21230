//! Per-request samples, their aggregation into HDR histograms, and the final report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx and (for streams) a complete stream.
    Ok,
    /// A non-2xx HTTP status.
    Status(u16),
    /// No usable response: `connect`, `timeout`, `body`, `stream_error`, `stream_incomplete`, ...
    Failed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hit" => Some(Self::Hit),
            "miss" => Some(Self::Miss),
            "bypass" => Some(Self::Bypass),
            _ => None,
        }
    }
}

/// Everything measured about one request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub outcome: Outcome,
    /// From the start instant given to the executor (the intended send time in open loop)
    /// to the end of the response body.
    pub latency: Duration,
    /// Time to the first content delta (streams only).
    pub ttft: Option<Duration>,
    /// Gaps between consecutive content deltas (streams only).
    pub gaps: Vec<Duration>,
    /// First to last content delta (streams only).
    pub decode_time: Option<Duration>,
    pub output_tokens: Option<u64>,
    pub cache: Option<CacheStatus>,
    pub tier: Option<String>,
    /// Cost and savings in nano-dollars (1e-9 USD).
    pub cost_nusd: Option<i64>,
    pub saved_nusd: Option<i64>,
}

impl Sample {
    pub fn new(outcome: Outcome, latency: Duration) -> Self {
        Self {
            outcome,
            latency,
            ttft: None,
            gaps: Vec::new(),
            decode_time: None,
            output_tokens: None,
            cache: None,
            tier: None,
            cost_nusd: None,
            saved_nusd: None,
        }
    }
}

/// USD (as sent by the gateway, a decimal number) to integer nano-dollars.
pub fn usd_to_nusd(usd: f64) -> Option<i64> {
    if usd.is_finite() {
        Some((usd * 1e9).round() as i64)
    } else {
        None
    }
}

fn nusd_to_usd(n: i64) -> f64 {
    n as f64 / 1e9
}

const HIST_MAX_US: u64 = 3_600_000_000;

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HIST_MAX_US, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Running totals for a benchmark.
pub struct Stats {
    completed: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    output_tokens: u64,
    token_samples: u64,
    hits: u64,
    misses: u64,
    bypass: u64,
    tiers: BTreeMap<String, u64>,
    cost_nusd: i64,
    saved_nusd: i64,
    cost_reports: u64,
}

impl Stats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            completed: 0,
            ok: 0,
            errors: BTreeMap::new(),
            latency: new_hist()?,
            ttft: new_hist()?,
            itl: new_hist()?,
            output_tokens: 0,
            token_samples: 0,
            hits: 0,
            misses: 0,
            bypass: 0,
            tiers: BTreeMap::new(),
            cost_nusd: 0,
            saved_nusd: 0,
            cost_reports: 0,
        })
    }

    pub fn record(&mut self, s: Sample) {
        self.completed += 1;
        match s.outcome {
            Outcome::Ok => {}
            Outcome::Status(code) => {
                *self.errors.entry(code.to_string()).or_default() += 1;
                return;
            }
            Outcome::Failed(kind) => {
                *self.errors.entry(kind.to_owned()).or_default() += 1;
                return;
            }
        }
        self.ok += 1;
        self.latency.saturating_record(micros(s.latency));
        if let Some(t) = s.ttft {
            self.ttft.saturating_record(micros(t));
        }
        for g in &s.gaps {
            self.itl.saturating_record(micros(*g));
        }
        if let Some(n) = s.output_tokens {
            self.output_tokens += n;
            self.token_samples += 1;
        }
        match s.cache {
            Some(CacheStatus::Hit) => self.hits += 1,
            Some(CacheStatus::Miss) => self.misses += 1,
            Some(CacheStatus::Bypass) => self.bypass += 1,
            None => {}
        }
        if let Some(tier) = s.tier {
            *self.tiers.entry(tier).or_default() += 1;
        }
        if s.cost_nusd.is_some() || s.saved_nusd.is_some() {
            self.cost_reports += 1;
        }
        self.cost_nusd += s.cost_nusd.unwrap_or(0);
        self.saved_nusd += s.saved_nusd.unwrap_or(0);
    }

    #[cfg(test)]
    pub fn completed(&self) -> u64 {
        self.completed
    }

    pub fn into_report(self, meta: RunMeta) -> Report {
        let secs = meta.elapsed.as_secs_f64();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let errors = self.completed - self.ok;
        let looked_up = self.hits + self.misses;
        Report {
            url: meta.url,
            endpoint: meta.endpoint,
            model: meta.model,
            mode: meta.mode,
            stream: meta.stream,
            users: meta.users,
            rate_per_s: meta.rate_per_s,
            duration_s: secs,
            requests: self.completed,
            ok: self.ok,
            errors,
            error_rate: if self.completed > 0 {
                errors as f64 / self.completed as f64
            } else {
                0.0
            },
            errors_by_status: self.errors,
            unfinished: meta.unfinished,
            unsent: meta.unsent,
            requests_per_s: per_s(self.completed),
            latency_ms: Percentiles::of(&self.latency),
            ttft_ms: Percentiles::of(&self.ttft),
            inter_token_ms: Percentiles::of(&self.itl),
            output_tokens: (self.token_samples > 0).then_some(self.output_tokens),
            output_tokens_per_s: (self.token_samples > 0).then(|| per_s(self.output_tokens)),
            cache: CacheReport {
                hits: self.hits,
                misses: self.misses,
                bypass: self.bypass,
                hit_rate: (looked_up > 0).then(|| self.hits as f64 / looked_up as f64),
            },
            tiers: self.tiers,
            cost_usd: (self.cost_reports > 0).then(|| nusd_to_usd(self.cost_nusd)),
            saved_usd: (self.cost_reports > 0).then(|| nusd_to_usd(self.saved_nusd)),
            max_schedule_lag_ms: meta.max_lag.map(|d| d.as_secs_f64() * 1e3),
        }
    }
}

/// Facts about the run that the samples do not carry.
pub struct RunMeta {
    pub url: String,
    pub endpoint: String,
    pub model: String,
    pub mode: String,
    pub stream: bool,
    pub users: Option<u32>,
    pub rate_per_s: Option<f64>,
    pub elapsed: Duration,
    pub unfinished: u64,
    pub unsent: u64,
    pub max_lag: Option<Duration>,
}

/// Latency percentiles in milliseconds (microsecond resolution).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1e3;
        Some(Self {
            count: h.len(),
            mean: h.mean() / 1e3,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheReport {
    pub hits: u64,
    pub misses: u64,
    pub bypass: u64,
    /// hits / (hits + misses); `None` when no response carried a cache status.
    pub hit_rate: Option<f64>,
}

/// The result of a benchmark run; `--json` prints it as one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub url: String,
    pub endpoint: String,
    pub model: String,
    /// `closed` (users) or `open` (arrival rate).
    pub mode: String,
    pub stream: bool,
    pub users: Option<u32>,
    pub rate_per_s: Option<f64>,
    /// Wall time from the first request to the last completion.
    pub duration_s: f64,
    /// Completed requests (successes and errors).
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Error counts keyed by HTTP status (`"500"`) or failure kind (`"timeout"`, `"connect"`, ...).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Requests still running when the grace period after the deadline ran out (aborted, not counted).
    pub unfinished: u64,
    /// Open loop only: due before the deadline (or Ctrl-C) but never sent because `--max-in-flight` was full.
    pub unsent: u64,
    pub requests_per_s: f64,
    /// Latency of successful requests (open loop: from the intended send time).
    pub latency_ms: Option<Percentiles>,
    pub ttft_ms: Option<Percentiles>,
    pub inter_token_ms: Option<Percentiles>,
    pub output_tokens: Option<u64>,
    pub output_tokens_per_s: Option<f64>,
    pub cache: CacheReport,
    /// Successful responses by `x-optiroute-tier`.
    pub tiers: BTreeMap<String, u64>,
    /// Sum of `x-optiroute-cost-usd` (or the `optiroute.cost_usd` body field); `None` if never reported.
    pub cost_usd: Option<f64>,
    pub saved_usd: Option<f64>,
    /// Open loop only: the latest any request left after its intended send time.
    pub max_schedule_lag_ms: Option<f64>,
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.3} ms")
    }
}

/// `v` to 4 significant digits, without trailing zeros: `1000`, `16.67`, `0.001`.
fn fmt_sig4(v: f64) -> String {
    let decimals = if v.is_finite() && v > 0.0 {
        usize::try_from(3 - v.log10().floor() as i64).unwrap_or(0)
    } else {
        0
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn pct_row(out: &mut String, name: &str, p: &Option<Percentiles>) {
    if let Some(p) = p {
        let _ = writeln!(
            out,
            "{name:<16} p50 {:>10}  p90 {:>10}  p95 {:>10}  p99 {:>10}  max {:>10}",
            fmt_ms(p.p50),
            fmt_ms(p.p90),
            fmt_ms(p.p95),
            fmt_ms(p.p99),
            fmt_ms(p.max)
        );
    }
}

impl Report {
    /// `500: 3, timeout: 1`
    fn errors_list(&self) -> String {
        let list: Vec<String> = self.errors_by_status.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        list.join(", ")
    }

    /// A one-line summary when requests were sent and none succeeded, else `None`.
    pub fn none_succeeded(&self) -> Option<String> {
        if self.ok > 0 || self.requests + self.unfinished == 0 {
            return None;
        }
        let mut line = format!("no request succeeded: {} errors", self.errors);
        if self.errors > 0 {
            let _ = write!(line, " ({})", self.errors_list());
        }
        if self.unfinished > 0 {
            let _ = write!(line, ", {} unfinished", self.unfinished);
        }
        Some(line)
    }

    /// A human-readable summary table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let load = match (self.users, self.rate_per_s) {
            (_, Some(r)) => format!("open loop, {} req/s", fmt_sig4(r)),
            (Some(u), None) => format!("closed loop, {u} users"),
            (None, None) => self.mode.clone(),
        };
        let _ = writeln!(
            out,
            "optiroute bench: {} ({}), model {}, {}{}",
            self.url,
            self.endpoint,
            self.model,
            load,
            if self.stream { ", streaming" } else { "" }
        );
        let _ = writeln!(out, "{:<16} {:.2} s", "duration", self.duration_s);
        let _ = writeln!(
            out,
            "{:<16} {} ({} ok, {} errors, {:.2}% error rate)",
            "requests",
            self.requests,
            self.ok,
            self.errors,
            self.error_rate * 100.0
        );
        let _ = writeln!(out, "{:<16} {:.2}", "req/s", self.requests_per_s);
        if !self.errors_by_status.is_empty() {
            let _ = writeln!(out, "{:<16} {}", "errors by status", self.errors_list());
        }
        if self.unfinished > 0 {
            let _ = writeln!(
                out,
                "{:<16} {} (aborted after the grace period)",
                "unfinished", self.unfinished
            );
        }
        if self.unsent > 0 {
            let _ = writeln!(out, "{:<16} {} (max in flight reached)", "unsent", self.unsent);
        }
        if let Some(lag) = self.max_schedule_lag_ms {
            let _ = writeln!(out, "{:<16} {}", "max send lag", fmt_ms(lag));
        }
        pct_row(&mut out, "latency", &self.latency_ms);
        pct_row(&mut out, "ttft", &self.ttft_ms);
        pct_row(&mut out, "inter-token", &self.inter_token_ms);
        if let (Some(n), Some(r)) = (self.output_tokens, self.output_tokens_per_s) {
            let _ = writeln!(out, "{:<16} {n} ({r:.1} tokens/s)", "output tokens");
        }
        match self.cache.hit_rate {
            Some(rate) => {
                let _ = writeln!(
                    out,
                    "{:<16} {:.1}% ({} hits, {} misses, {} bypass)",
                    "cache hit rate",
                    rate * 100.0,
                    self.cache.hits,
                    self.cache.misses,
                    self.cache.bypass
                );
            }
            None => {
                let _ = writeln!(out, "{:<16} n/a (no x-optiroute-cache header)", "cache hit rate");
            }
        }
        if !self.tiers.is_empty() {
            let total: u64 = self.tiers.values().sum();
            let list: Vec<String> = self
                .tiers
                .iter()
                .map(|(k, v)| format!("{k} {v} ({:.1}%)", *v as f64 * 100.0 / total.max(1) as f64))
                .collect();
            let _ = writeln!(out, "{:<16} {}", "routing", list.join(", "));
        }
        if let (Some(c), Some(s)) = (self.cost_usd, self.saved_usd) {
            let _ = writeln!(out, "{:<16} ${c:.6} (saved ${s:.6})", "cost");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn meta(elapsed: Duration) -> RunMeta {
        RunMeta {
            url: "http://x".into(),
            endpoint: "chat".into(),
            model: "auto".into(),
            mode: "closed".into(),
            stream: false,
            users: Some(1),
            rate_per_s: None,
            elapsed,
            unfinished: 0,
            unsent: 0,
            max_lag: None,
        }
    }

    #[test]
    fn aggregates_samples() {
        let mut st = Stats::new().unwrap();
        for i in 1..=100u64 {
            let mut s = Sample::new(Outcome::Ok, Duration::from_millis(i));
            s.cache = Some(if i % 4 == 0 {
                CacheStatus::Hit
            } else {
                CacheStatus::Miss
            });
            s.tier = Some(if i % 2 == 0 { "local" } else { "cloud" }.into());
            s.cost_nusd = usd_to_nusd(0.000_001);
            s.saved_nusd = usd_to_nusd(0.000_002);
            st.record(s);
        }
        st.record(Sample::new(Outcome::Status(500), Duration::from_secs(9)));
        st.record(Sample::new(Outcome::Failed("timeout"), Duration::from_secs(9)));
        let r = st.into_report(meta(Duration::from_secs(2)));
        assert_eq!(r.requests, 102);
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors, 2);
        assert_eq!(r.errors_by_status.get("500"), Some(&1));
        assert_eq!(r.errors_by_status.get("timeout"), Some(&1));
        assert!((r.requests_per_s - 51.0).abs() < 1e-9);
        let lat = r.latency_ms.clone().unwrap();
        assert!((lat.p50 - 50.0).abs() < 0.1, "{lat:?}");
        assert!((lat.max - 100.0).abs() < 0.1, "{lat:?}");
        assert_eq!(r.cache.hits, 25);
        assert_eq!(r.cache.hit_rate, Some(0.25));
        assert_eq!(r.tiers.get("local"), Some(&50));
        assert!((r.cost_usd.unwrap() - 0.0001).abs() < 1e-12);
        assert!((r.saved_usd.unwrap() - 0.0002).abs() < 1e-12);
        assert!(r.ttft_ms.is_none());
        let table = r.to_table();
        assert!(table.contains("500: 1"), "{table}");
        assert!(table.contains("25.0%"), "{table}");
    }

    #[test]
    fn slow_rates_keep_four_significant_digits() {
        let cases = [
            (0.001, "0.001"),
            (1.0 / 3600.0, "0.0002778"),
            (2.5, "2.5"),
            (16.666_666, "16.67"),
            (1000.0, "1000"),
            (123_456.0, "123456"),
        ];
        for (rate, shown) in cases {
            assert_eq!(fmt_sig4(rate), shown);
            let r = Stats::new().unwrap().into_report(RunMeta {
                mode: "open".into(),
                users: None,
                rate_per_s: Some(rate),
                ..meta(Duration::from_secs(1))
            });
            let table = r.to_table();
            assert!(table.contains(&format!("open loop, {shown} req/s")), "{table}");
        }
    }

    #[test]
    fn none_succeeded_only_when_nothing_did() {
        let mut st = Stats::new().unwrap();
        st.record(Sample::new(Outcome::Status(401), Duration::from_millis(1)));
        st.record(Sample::new(Outcome::Failed("connect"), Duration::from_millis(1)));
        let r = st.into_report(RunMeta {
            unfinished: 2,
            ..meta(Duration::from_secs(1))
        });
        assert_eq!(
            r.none_succeeded().as_deref(),
            Some("no request succeeded: 2 errors (401: 1, connect: 1), 2 unfinished")
        );
        let r = Stats::new().unwrap().into_report(RunMeta {
            unfinished: 3,
            ..meta(Duration::from_secs(1))
        });
        assert_eq!(
            r.none_succeeded().as_deref(),
            Some("no request succeeded: 0 errors, 3 unfinished")
        );
        // Nothing sent (an immediate Ctrl-C), or one success: not a failure.
        assert_eq!(
            Stats::new().unwrap().into_report(meta(Duration::ZERO)).none_succeeded(),
            None
        );
        let mut st = Stats::new().unwrap();
        st.record(Sample::new(Outcome::Status(500), Duration::from_millis(1)));
        st.record(Sample::new(Outcome::Ok, Duration::from_millis(1)));
        assert_eq!(st.into_report(meta(Duration::from_secs(1))).none_succeeded(), None);
    }

    #[test]
    fn empty_run_has_no_percentiles() {
        let r = Stats::new().unwrap().into_report(meta(Duration::ZERO));
        assert_eq!(r.requests, 0);
        assert!(r.latency_ms.is_none());
        assert_eq!(r.cache.hit_rate, None);
        assert_eq!(r.cost_usd, None);
        assert_eq!(r.requests_per_s, 0.0);
    }
}
