//! The built-in simulated provider, for demo mode and load tests. Its answers are deterministic (the
//! same prompt gives the same text), say that they are simulated, and arrive after a configurable
//! latency at a configurable speed. A configurable share of calls fails with a 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use optiroute_protocol::openai::{ChatChunk, ChatCompletion, ChatRequest, Choice, Extra, Message, Usage};
use optiroute_protocol::usage::approx_prompt_tokens;
use sha2::{Digest, Sha256};

use super::{CallTarget, ChunkStream, completion_id, unix_now};
use crate::config::SimulatedConfig;
use crate::error::{UpstreamError, UpstreamKind};

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "routes",
    "each",
    "request",
    "to",
    "a",
    "model",
    "that",
    "answers",
    "it",
    "well",
    "for",
    "less",
    "money",
    "while",
    "cache",
    "hits",
    "cost",
    "nothing",
    "and",
    "breakers",
    "keep",
    "outages",
    "away",
    "from",
    "users",
    "latency",
    "stays",
    "low",
    "because",
    "tokens",
    "stream",
    "as",
    "they",
    "arrive",
    "simple",
    "prompts",
    "go",
    "local",
    "hard",
    "ones",
    "cloud",
    "so",
    "quality",
    "holds",
    "spend",
    "falls",
    "every",
    "decision",
    "is",
    "explained",
    "measured",
    "logged",
];

pub struct Simulated {
    name: String,
    cfg: SimulatedConfig,
    calls: AtomicU64,
}

impl Simulated {
    pub fn new(name: &str, cfg: SimulatedConfig) -> Self {
        Simulated {
            name: name.to_owned(),
            cfg,
            calls: AtomicU64::new(0),
        }
    }

    /// A number in [0, 1) from the seed and the call counter: reproducible across runs.
    fn draw(&self, salt: u64) -> f64 {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut x = self.cfg.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(17);
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn wait_first_token(&self) -> Result<(), UpstreamError> {
        let failing = self.cfg.failure_rate > 0.0 && self.draw(1) < self.cfg.failure_rate;
        let jitter = if self.cfg.jitter_ms > 0 {
            (self.draw(2) * (self.cfg.jitter_ms + 1) as f64) as u64
        } else {
            0
        };
        let delay = Duration::from_millis(self.cfg.latency_ms + jitter);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if failing {
            return Err(UpstreamError::new(
                UpstreamKind::Status(503),
                &self.name,
                "simulated failure (failure_rate)",
            ));
        }
        Ok(())
    }

    /// Choice `index`'s pieces: a header naming the simulation, then words picked by the prompt's
    /// hash (and the index, so the `n` choices of one request differ).
    fn answer(&self, req: &ChatRequest, model: &str, index: u32) -> Vec<String> {
        let mut h = Sha256::new();
        h.update(model.as_bytes());
        if index > 0 {
            h.update(index.to_le_bytes());
        }
        for m in &req.messages {
            h.update(m.role.as_bytes());
            h.update(m.text().as_bytes());
        }
        let digest = h.finalize();
        let cap = req.output_cap().map_or(usize::MAX, |c| c as usize);
        let n = self.cfg.answer_words.min(cap.saturating_sub(4)).max(1);
        let mut pieces = vec![format!("[simulated {model}]")];
        for i in 0..n {
            let b = usize::from(digest[i % digest.len()]) + i * 7;
            pieces.push(format!(" {}", WORDS[b % WORDS.len()]));
        }
        if let Some(last) = pieces.last_mut() {
            last.push('.');
        }
        pieces
    }

    fn finish_reason(req: &ChatRequest, words: usize, configured: usize) -> &'static str {
        if req
            .output_cap()
            .is_some_and(|c| (c as usize).saturating_sub(4) < configured)
            && words < configured
        {
            "length"
        } else {
            "stop"
        }
    }

    pub async fn chat(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChatCompletion, UpstreamError> {
        self.wait_first_token().await?;
        let answers: Vec<Vec<String>> = (0..choice_count(req))
            .map(|i| self.answer(req, target.model, i))
            .collect();
        // Simulated tokens: one per word piece of each answer, and the prompt approximated (the
        // tokenizer stays unloaded unless a real upstream omits usage).
        let words: usize = answers.iter().map(|p| p.len() - 1).sum();
        if self.cfg.tokens_per_s > 0.0 {
            // The choices are generated side by side, as a server batches them.
            let longest = answers.iter().map(Vec::len).max().unwrap_or(0);
            tokio::time::sleep(Duration::from_secs_f64(longest as f64 / self.cfg.tokens_per_s)).await;
        }
        let usage = Usage::new(approx_prompt_tokens(req), words as u64);
        let choices = answers
            .into_iter()
            .zip(0..)
            .map(|(pieces, index)| Choice {
                index,
                finish_reason: Some(Self::finish_reason(req, pieces.len() - 1, self.cfg.answer_words).into()),
                message: Message::new("assistant", pieces.concat()),
                extra: Extra::new(),
            })
            .collect();
        Ok(ChatCompletion {
            id: completion_id(),
            object: "chat.completion".into(),
            created: unix_now(),
            model: target.model.to_owned(),
            choices,
            usage: Some(usage),
            extra: Extra::new(),
        })
    }

    pub async fn chat_stream(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChunkStream, UpstreamError> {
        self.wait_first_token().await?;
        let prompt_tokens = approx_prompt_tokens(req);
        let id = completion_id();
        let created = unix_now();
        let model = target.model.to_owned();
        let gap = (self.cfg.tokens_per_s > 0.0).then(|| Duration::from_secs_f64(1.0 / self.cfg.tokens_per_s));

        // With `n` > 1 the choices follow one another, each chunk carrying its choice's index.
        let mut chunks = Vec::new();
        let mut completion_tokens = 0;
        for index in 0..choice_count(req) {
            let pieces = self.answer(req, target.model, index);
            completion_tokens += (pieces.len() - 1) as u64;
            let finish = Self::finish_reason(req, pieces.len() - 1, self.cfg.answer_words);
            let of_choice = |mut c: ChatChunk| {
                c.choices[0].index = index;
                c
            };
            let mut first = ChatChunk::content(&id, created, &model, "");
            first.choices[0].delta.role = Some("assistant".into());
            chunks.push(of_choice(first));
            for p in &pieces {
                chunks.push(of_choice(ChatChunk::content(&id, created, &model, p)));
            }
            let mut last = ChatChunk::content(&id, created, &model, "");
            last.choices[0].delta.content = None;
            last.choices[0].finish_reason = Some(finish.into());
            chunks.push(of_choice(last));
        }
        let mut usage = ChatChunk::new(&id, created, &model);
        usage.usage = Some(Usage::new(prompt_tokens, completion_tokens));
        chunks.push(usage);

        let stream = futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| async move {
            // Content pieces are paced; the role chunk and the closing chunks are not.
            if let Some(gap) = gap
                && i >= 2
                && c.choices.first().is_some_and(|ch| ch.delta.content.is_some())
            {
                tokio::time::sleep(gap).await;
            }
            Ok(c)
        });
        Ok(Box::pin(stream))
    }
}

/// How many choices a request asks for (`n`, at least 1; the gateway's validation bounds it).
fn choice_count(req: &ChatRequest) -> u32 {
    req.n.map_or(1, |n| n.max(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use optiroute_protocol::openai::ChunkAccumulator;

    fn req(text: &str) -> ChatRequest {
        ChatRequest {
            model: "x".into(),
            messages: vec![Message::new("user", text)],
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deterministic_and_stream_equals_json() {
        let s = Simulated::new(
            "sim",
            SimulatedConfig {
                latency_ms: 100,
                tokens_per_s: 50.0,
                ..Default::default()
            },
        );
        let t = CallTarget {
            model: "m",
            default_max_tokens: 100,
        };
        let start = tokio::time::Instant::now();
        let a = s.chat(&req("hello"), &t).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
        let b = s.chat(&req("hello"), &t).await.unwrap();
        assert_eq!(a.choices[0].message.text(), b.choices[0].message.text());
        assert!(a.choices[0].message.text().starts_with("[simulated m]"));
        let c = s.chat(&req("something else"), &t).await.unwrap();
        assert_ne!(a.choices[0].message.text(), c.choices[0].message.text());

        let mut acc = ChunkAccumulator::default();
        let mut st = s.chat_stream(&req("hello"), &t).await.unwrap();
        while let Some(chunk) = st.next().await {
            acc.push(&chunk.unwrap());
        }
        assert_eq!(acc.text(), a.choices[0].message.text());
        assert_eq!(acc.usage(), a.usage);
    }

    #[tokio::test]
    async fn n_choices_differ_and_stream_like_the_json_answer() {
        let s = Simulated::new("sim", SimulatedConfig::default());
        let t = CallTarget {
            model: "m",
            default_max_tokens: 100,
        };
        let mut r = req("hello");
        r.n = Some(3);
        let a = s.chat(&r, &t).await.unwrap();
        let idx: Vec<u32> = a.choices.iter().map(|c| c.index).collect();
        assert_eq!(idx, [0, 1, 2]);
        let texts: Vec<String> = a.choices.iter().map(|c| c.message.text()).collect();
        assert_ne!(texts[0], texts[1]);
        assert_ne!(texts[1], texts[2]);
        // Choice 0 is the answer a request without `n` gets.
        assert_eq!(
            texts[0],
            s.chat(&req("hello"), &t).await.unwrap().choices[0].message.text()
        );
        let words: u64 = texts.iter().map(|t| t.split(' ').count() as u64 - 2).sum();
        assert_eq!(a.usage.unwrap().completion_tokens, words);
        let mut streamed = vec![String::new(); 3];
        let mut usage = None;
        let mut st = s.chat_stream(&r, &t).await.unwrap();
        while let Some(chunk) = st.next().await {
            let chunk = chunk.unwrap();
            usage = usage.or(chunk.usage);
            for c in &chunk.choices {
                streamed[c.index as usize].push_str(c.delta.content.as_deref().unwrap_or(""));
            }
        }
        assert_eq!(streamed, texts);
        assert_eq!(usage, a.usage);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_is_honoured() {
        let s = Simulated::new(
            "sim",
            SimulatedConfig {
                latency_ms: 0,
                failure_rate: 0.5,
                ..Default::default()
            },
        );
        let t = CallTarget {
            model: "m",
            default_max_tokens: 100,
        };
        let mut failed = 0;
        for _ in 0..400 {
            if s.chat(&req("x"), &t).await.is_err() {
                failed += 1;
            }
        }
        assert!((120..280).contains(&failed), "{failed}");
    }

    #[tokio::test(start_paused = true)]
    async fn max_tokens_caps_answer() {
        let s = Simulated::new(
            "sim",
            SimulatedConfig {
                latency_ms: 0,
                ..Default::default()
            },
        );
        let t = CallTarget {
            model: "m",
            default_max_tokens: 100,
        };
        let mut r = req("hello");
        r.max_tokens = Some(8);
        let a = s.chat(&r, &t).await.unwrap();
        assert_eq!(a.choices[0].finish_reason.as_deref(), Some("length"));
        assert!(a.usage.unwrap().completion_tokens <= 12);
    }
}
