//! The HTTP executor: sends one request, reads the response (JSON or SSE) and measures it.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use tokio::time::Instant;

use crate::driver::Exec;
use crate::stats::{CacheStatus, Outcome, Sample, usd_to_nusd};
use crate::workload::Workload;

pub const H_CACHE: &str = "x-optiroute-cache";
pub const H_TIER: &str = "x-optiroute-tier";
pub const H_COST: &str = "x-optiroute-cost-usd";
pub const H_SAVED: &str = "x-optiroute-saved-usd";

pub struct HttpExec {
    pub client: reqwest::Client,
    /// Parsed once: parsing per request shows up in profiles.
    pub url: reqwest::Url,
    pub stream: bool,
    pub workload: Workload,
}

impl Exec for HttpExec {
    fn exec(&self, seq: u64, start: Instant) -> impl Future<Output = Sample> + Send {
        let body = self.workload.body(seq);
        self.send(body, start)
    }
}

/// Gateway metadata about one response, from headers or the body's `optiroute` object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Meta {
    cache: Option<CacheStatus>,
    tier: Option<String>,
    cost_nusd: Option<i64>,
    saved_nusd: Option<i64>,
}

impl Meta {
    fn from_headers(h: &HeaderMap) -> Self {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let usd = |name: &str| {
            text(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .and_then(usd_to_nusd)
        };
        Self {
            cache: text(H_CACHE).and_then(CacheStatus::parse),
            tier: text(H_TIER).map(str::to_owned),
            cost_nusd: usd(H_COST),
            saved_nusd: usd(H_SAVED),
        }
    }

    /// Fills the gaps in `self` from `other`.
    fn fill_from(&mut self, other: Meta) {
        self.cache = self.cache.or(other.cache);
        if self.tier.is_none() {
            self.tier = other.tier;
        }
        self.cost_nusd = self.cost_nusd.or(other.cost_nusd);
        self.saved_nusd = self.saved_nusd.or(other.saved_nusd);
    }

    fn apply(self, s: &mut Sample) {
        s.cache = self.cache;
        s.tier = self.tier;
        s.cost_nusd = self.cost_nusd;
        s.saved_nusd = self.saved_nusd;
    }
}

#[derive(Deserialize)]
struct OptiRouteMeta {
    cache: Option<String>,
    tier: Option<String>,
    cost_usd: Option<f64>,
    saved_usd: Option<f64>,
}

impl From<OptiRouteMeta> for Meta {
    fn from(m: OptiRouteMeta) -> Self {
        Self {
            cache: m.cache.as_deref().and_then(CacheStatus::parse),
            tier: m.tier,
            cost_nusd: m.cost_usd.and_then(usd_to_nusd),
            saved_nusd: m.saved_usd.and_then(usd_to_nusd),
        }
    }
}

#[derive(Deserialize)]
struct Usage {
    completion_tokens: Option<u64>,
}

/// The parts of a JSON response the report uses: OpenAI chat completion or `/generate`.
#[derive(Deserialize)]
struct JsonBody {
    usage: Option<Usage>,
    optiroute: Option<OptiRouteMeta>,
    /// `/generate`
    cached: Option<bool>,
    /// `/generate`
    cost_usd: Option<f64>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<Usage>,
    optiroute: Option<OptiRouteMeta>,
    error: Option<serde::de::IgnoredAny>,
}

fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "other"
    }
}

impl HttpExec {
    async fn send(&self, body: Bytes, start: Instant) -> Sample {
        let resp = match self.client.post(self.url.clone()).body(body).send().await {
            Ok(r) => r,
            Err(e) => return Sample::new(Outcome::Failed(classify(&e)), start.elapsed()),
        };
        let status = resp.status();
        let mut meta = Meta::from_headers(resp.headers());
        if !status.is_success() {
            // Read the error body so the connection can be reused.
            let _ = resp.bytes().await;
            return Sample::new(Outcome::Status(status.as_u16()), start.elapsed());
        }
        if self.stream {
            return read_stream(resp, start, meta).await;
        }
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Sample::new(Outcome::Failed(classify(&e)), start.elapsed()),
        };
        let mut sample = Sample::new(Outcome::Ok, start.elapsed());
        // Always parsed: even when the headers carry the gateway's metadata, the output tokens are
        // only in the body's `usage`.
        if let Ok(b) = serde_json::from_slice::<JsonBody>(&bytes) {
            sample.output_tokens = b.usage.and_then(|u| u.completion_tokens);
            let mut from_body = b.optiroute.map(Meta::from).unwrap_or_default();
            if from_body.cache.is_none() {
                from_body.cache = b.cached.map(|c| if c { CacheStatus::Hit } else { CacheStatus::Miss });
            }
            if from_body.cost_nusd.is_none() {
                from_body.cost_nusd = b.cost_usd.and_then(usd_to_nusd);
            }
            meta.fill_from(from_body);
        }
        meta.apply(&mut sample);
        sample
    }
}

/// Splits a byte stream into lines (without `\n` or `\r\n`).
#[derive(Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    pub fn push(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self
            .buf
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let end = start + pos;
            let mut line = self.buf.get(start..end).unwrap_or_default();
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            on_line(line);
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    /// What is left after the last newline.
    pub fn rest(&self) -> &[u8] {
        &self.buf
    }
}

/// Measurements of one SSE response, fed line by line.
pub struct StreamState {
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Vec<Duration>,
    deltas: u64,
    usage_tokens: Option<u64>,
    meta: Meta,
    done: bool,
    error: bool,
}

impl StreamState {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            first: None,
            last: None,
            gaps: Vec::new(),
            deltas: 0,
            usage_tokens: None,
            meta: Meta::default(),
            done: false,
            error: false,
        }
    }

    /// Handles one SSE line received at `now`.
    pub fn on_line(&mut self, line: &[u8], now: Instant) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return; // comments, `event:`, `id:`, blank separators
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return;
        };
        if chunk.error.is_some() {
            self.error = true;
        }
        let has_content = chunk.choices.iter().any(|c| {
            c.delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .is_some_and(|t| !t.is_empty())
        });
        if has_content {
            self.deltas += 1;
            match self.last {
                None => self.first = Some(now),
                Some(prev) => self.gaps.push(now.saturating_duration_since(prev)),
            }
            self.last = Some(now);
        }
        if let Some(n) = chunk.usage.and_then(|u| u.completion_tokens) {
            self.usage_tokens = Some(n);
        }
        if let Some(m) = chunk.optiroute {
            self.meta.fill_from(m.into());
        }
    }

    pub fn finish(self, header_meta: Meta, transport_error: Option<&'static str>, now: Instant) -> Sample {
        let outcome = if let Some(kind) = transport_error {
            Outcome::Failed(kind)
        } else if self.error {
            Outcome::Failed("stream_error")
        } else if !self.done {
            Outcome::Failed("stream_incomplete")
        } else {
            Outcome::Ok
        };
        let mut s = Sample::new(outcome, now.saturating_duration_since(self.start));
        s.ttft = self.first.map(|f| f.saturating_duration_since(self.start));
        s.decode_time = match (self.first, self.last) {
            (Some(f), Some(l)) => Some(l.saturating_duration_since(f)),
            _ => None,
        };
        s.gaps = self.gaps;
        s.output_tokens = self.usage_tokens.or((self.deltas > 0).then_some(self.deltas));
        let mut meta = header_meta;
        meta.fill_from(self.meta);
        meta.apply(&mut s);
        s
    }
}

async fn read_stream(resp: reqwest::Response, start: Instant, header_meta: Meta) -> Sample {
    let mut lines = LineBuffer::default();
    let mut state = StreamState::new(start);
    let mut body = resp.bytes_stream();
    let mut failure = None;
    while let Some(next) = body.next().await {
        match next {
            Ok(bytes) => {
                let now = Instant::now();
                lines.push(&bytes, |line| state.on_line(line, now));
            }
            Err(e) => {
                failure = Some(classify(&e));
                break;
            }
        }
    }
    if failure.is_none() && !lines.rest().is_empty() {
        let rest = lines.rest().to_vec();
        state.on_line(&rest, Instant::now());
    }
    state.finish(header_meta, failure, Instant::now())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut lb = LineBuffer::default();
        let mut got: Vec<String> = Vec::new();
        for part in [&b"data: a"[..], b"bc\r\n\r\ndata: x\n", b"dat", b"a: [DONE]\n\n"] {
            lb.push(part, |l| got.push(String::from_utf8_lossy(l).into_owned()));
        }
        assert_eq!(got, vec!["data: abc", "", "data: x", "data: [DONE]", ""]);
        assert!(lb.rest().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stream_state_measures_tokens() {
        let t0 = Instant::now();
        let mut st = StreamState::new(t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        st.on_line(br#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#, at(5));
        st.on_line(br#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#, at(40));
        st.on_line(b": keep-alive", at(45));
        st.on_line(br#"data: {"choices":[{"delta":{"content":"lo"}}]}"#, at(50));
        st.on_line(br#"data: {"choices":[{"delta":{"content":""}}]}"#, at(55));
        st.on_line(br#"data: {"choices":[{"delta":{"content":"!"}}]}"#, at(70));
        st.on_line(
            br#"data: {"choices":[],"usage":{"completion_tokens":4},"optiroute":{"cache":"miss","tier":"local","cost_usd":0.0015,"saved_usd":0.25}}"#,
            at(71),
        );
        st.on_line(b"data: [DONE]", at(72));
        let header = Meta {
            tier: Some("cloud".into()),
            ..Meta::default()
        };
        let s = st.finish(header, None, at(73));
        assert_eq!(s.outcome, Outcome::Ok);
        assert_eq!(s.ttft, Some(Duration::from_millis(40)));
        assert_eq!(s.gaps, vec![Duration::from_millis(10), Duration::from_millis(20)]);
        assert_eq!(s.decode_time, Some(Duration::from_millis(30)));
        assert_eq!(s.output_tokens, Some(4));
        assert_eq!(s.latency, Duration::from_millis(73));
        assert_eq!(s.cache, Some(CacheStatus::Miss));
        assert_eq!(s.tier.as_deref(), Some("cloud"), "headers win over the body");
        assert_eq!(s.cost_nusd, Some(1_500_000));
        assert_eq!(s.saved_nusd, Some(250_000_000));
    }

    #[tokio::test(start_paused = true)]
    async fn stream_without_done_or_with_error_fails() {
        let t0 = Instant::now();
        let mut st = StreamState::new(t0);
        st.on_line(br#"data: {"choices":[{"delta":{"content":"x"}}]}"#, t0);
        assert_eq!(
            st.finish(Meta::default(), None, t0).outcome,
            Outcome::Failed("stream_incomplete")
        );
        let mut st = StreamState::new(t0);
        st.on_line(br#"data: {"error":{"message":"boom"}}"#, t0);
        st.on_line(b"data: [DONE]", t0);
        assert_eq!(
            st.finish(Meta::default(), None, t0).outcome,
            Outcome::Failed("stream_error")
        );
    }

    #[test]
    fn header_meta() {
        let mut h = HeaderMap::new();
        h.insert(H_CACHE, "HIT".parse().unwrap());
        h.insert(H_TIER, "local".parse().unwrap());
        h.insert(H_COST, "0.000123".parse().unwrap());
        h.insert(H_SAVED, "0.5".parse().unwrap());
        let m = Meta::from_headers(&h);
        assert_eq!(m.cache, Some(CacheStatus::Hit));
        assert_eq!(m.tier.as_deref(), Some("local"));
        assert_eq!(m.cost_nusd, Some(123_000));
        assert_eq!(m.saved_nusd, Some(500_000_000));
        h.insert(H_COST, "abc".parse().unwrap());
        assert_eq!(Meta::from_headers(&h).cost_nusd, None);
    }
}
