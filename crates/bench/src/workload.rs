//! What each simulated request sends: the prompt mix and the request bodies.
//!
//! The built-in pool has short and long prompts, each easy or hard, so a run exercises both
//! routing tiers. "Repeated" requests send a pool prompt verbatim (cacheable across runs);
//! "unique" requests append a per-run, per-request suffix, so they never hit a cache.
//! `examples/locustfile.py` carries the same pool and mix.

use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{Endpoint, Mix};

const SHORT_EASY: [&str; 8] = [
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a synonym for 'happy'.",
    "Name the three primary colours.",
    "How many days are in a leap year?",
    "Spell the word 'necessary' backwards.",
    "At what temperature does water boil at sea level, in Celsius?",
];

const SHORT_HARD: [&str; 8] = [
    "Prove that there are infinitely many prime numbers.",
    "Explain the trade-offs between optimistic and pessimistic concurrency control in a database.",
    "Derive a closed form for the n-th Fibonacci number and explain each step.",
    "Design a distributed rate limiter for an API gateway and analyse how it fails under network partitions.",
    "Explain why the halting problem is undecidable, with a proof sketch.",
    "Compare Raft and Paxos for a five-node cluster, including leader election and log compaction.",
    "Write a function that merges k sorted iterators and analyse its time and memory complexity.",
    "Analyse the causes of the 2008 financial crisis and evaluate which policy responses worked.",
];

const LONG_CONTEXT: [&str; 2] = [
    "The quarterly planning meeting covered the roadmap for the storage team. The team agreed to \
     finish the migration of the metadata service before starting work on tiered storage, because \
     the old service blocks two other projects. Hiring is on track, with one new engineer joining \
     next month. The on-call load stayed high, mostly because of noisy disk alerts that nobody acts on.",
    "A web service returns HTTP 502 errors for about one request in fifty under load. The service \
     runs behind a reverse proxy with a 30 second upstream timeout and keeps a pool of database \
     connections capped at twenty. Logs show that the failing requests wait for a connection for \
     several seconds, and that a background job opens long transactions every minute.",
];

const LONG_QUESTIONS: [(&str, usize); 4] = [
    ("Summarise the text above in one sentence.", 0),
    ("List the action items in the text above.", 0),
    (
        "Find the most likely root cause of the errors described above, explain your reasoning step by step, and propose a fix with its risks.",
        1,
    ),
    (
        "Write a detailed incident review for the situation above: timeline, root cause analysis, contributing factors and follow-up actions.",
        1,
    ),
];

/// Number of times a long prompt repeats its context paragraph (makes it roughly 2 KB).
const LONG_REPEAT: usize = 5;

/// The built-in prompt pool, in a fixed order: 8 short easy, 8 short hard, 2 long easy, 2 long hard.
pub fn builtin_pool() -> Vec<String> {
    let mut pool: Vec<String> = SHORT_EASY
        .iter()
        .chain(SHORT_HARD.iter())
        .map(|s| (*s).to_owned())
        .collect();
    for (question, ctx) in LONG_QUESTIONS {
        let context = LONG_CONTEXT.get(ctx).copied().unwrap_or_default();
        let mut prompt = String::new();
        for i in 1..=LONG_REPEAT {
            prompt.push_str(&format!("Part {i}: {context}\n"));
        }
        prompt.push('\n');
        prompt.push_str(question);
        pool.push(prompt);
    }
    pool
}

/// One prompt from a JSONL file: a bare prompt or a full message list.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptEntry {
    Text(String),
    Messages(Vec<Value>),
}

/// Reads a JSONL prompt file: one object per line with `"prompt": "..."` or `"messages": [...]`.
pub fn load_prompt_file(path: &Path) -> anyhow::Result<Vec<PromptEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading prompt file {}", path.display()))?;
    parse_prompt_lines(&text).with_context(|| format!("in prompt file {}", path.display()))
}

pub fn parse_prompt_lines(text: &str) -> anyhow::Result<Vec<PromptEntry>> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value: Value = serde_json::from_str(line).with_context(|| format!("line {}: invalid JSON", n + 1))?;
        if let Some(messages) = value.get("messages").and_then(Value::as_array) {
            if messages.is_empty() {
                bail!("line {}: `messages` is empty", n + 1);
            }
            entries.push(PromptEntry::Messages(messages.clone()));
        } else if let Some(prompt) = value.get("prompt").and_then(Value::as_str) {
            entries.push(PromptEntry::Text(prompt.to_owned()));
        } else {
            bail!("line {}: expected a \"prompt\" string or a \"messages\" array", n + 1);
        }
    }
    if entries.is_empty() {
        bail!("no prompts found");
    }
    Ok(entries)
}

/// How request bodies are shaped.
#[derive(Debug, Clone)]
pub struct BodyShape {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub max_tokens: Option<u32>,
}

impl BodyShape {
    fn body(&self, entry: &PromptEntry) -> Bytes {
        let mut value = match self.endpoint {
            Endpoint::Generate => json!({ "model": self.model, "prompt": entry_text(entry) }),
            Endpoint::Chat => {
                let messages = match entry {
                    PromptEntry::Text(t) => vec![json!({"role": "user", "content": t})],
                    PromptEntry::Messages(m) => m.clone(),
                };
                let mut body = json!({ "model": self.model, "messages": messages });
                if let (true, Some(obj)) = (self.stream, body.as_object_mut()) {
                    obj.insert("stream".into(), json!(true));
                    obj.insert("stream_options".into(), json!({"include_usage": true}));
                }
                body
            }
        };
        // both endpoints take `max_tokens`
        if let (Some(max), Some(obj)) = (self.max_tokens, value.as_object_mut()) {
            obj.insert("max_tokens".into(), json!(max));
        }
        Bytes::from(value.to_string())
    }
}

/// The text of an entry, for endpoints that take a single prompt string.
fn entry_text(entry: &PromptEntry) -> String {
    match entry {
        PromptEntry::Text(t) => t.clone(),
        PromptEntry::Messages(m) => m
            .iter()
            .filter_map(|msg| msg.get("content").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// splitmix64: a tiny, good-enough mixer for deterministic choices.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit_interval(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

enum Source {
    Builtin {
        prompts: Vec<String>,
        bodies: Vec<Bytes>,
        mix: Mix,
        repeat_ratio: f64,
        seed: u64,
        run_id: String,
    },
    File {
        bodies: Vec<Bytes>,
    },
}

/// Produces the body of request number `seq`.
pub struct Workload {
    shape: BodyShape,
    source: Source,
}

impl Workload {
    pub fn builtin(shape: BodyShape, mix: Mix, repeat_ratio: f64, seed: u64, run_id: String) -> Self {
        let prompts = builtin_pool();
        let bodies = prompts
            .iter()
            .map(|p| shape.body(&PromptEntry::Text(p.clone())))
            .collect();
        Self {
            shape,
            source: Source::Builtin {
                prompts,
                bodies,
                mix,
                repeat_ratio,
                seed,
                run_id,
            },
        }
    }

    pub fn from_entries(shape: BodyShape, entries: &[PromptEntry]) -> Self {
        let bodies = entries.iter().map(|e| shape.body(e)).collect();
        Self {
            shape,
            source: Source::File { bodies },
        }
    }

    /// The body for request `seq` (0-based, in issue order).
    pub fn body(&self, seq: u64) -> Bytes {
        match &self.source {
            Source::File { bodies } => pick(bodies, seq),
            Source::Builtin {
                prompts,
                bodies,
                mix,
                repeat_ratio,
                seed,
                run_id,
            } => {
                let n = prompts.len().max(1) as u64;
                let h = mix64(seed ^ mix64(seq));
                let repeated = match mix {
                    Mix::Repeated => return pick(bodies, seq),
                    Mix::Unique => false,
                    Mix::Default => unit_interval(h) < *repeat_ratio,
                };
                let idx = mix64(h) % n;
                if repeated {
                    return pick(bodies, idx);
                }
                let base = prompts.get(idx as usize).map(String::as_str).unwrap_or_default();
                let text = format!("{base} (request {run_id}-{seq})");
                self.shape.body(&PromptEntry::Text(text))
            }
        }
    }
}

fn pick(bodies: &[Bytes], seq: u64) -> Bytes {
    if bodies.is_empty() {
        return Bytes::new();
    }
    let i = (seq % bodies.len() as u64) as usize;
    bodies.get(i).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashSet;

    fn shape(stream: bool) -> BodyShape {
        BodyShape {
            endpoint: Endpoint::Chat,
            model: "auto".into(),
            stream,
            max_tokens: None,
        }
    }

    fn prompt_of(body: &Bytes) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["messages"][0]["content"].as_str().unwrap().to_owned()
    }

    #[test]
    fn pool_has_short_and_long_prompts() {
        let pool = builtin_pool();
        assert_eq!(pool.len(), 20);
        assert!(pool.iter().filter(|p| p.len() < 200).count() == 16);
        assert!(pool.iter().filter(|p| p.len() > 1500).count() == 4);
        assert_eq!(pool.iter().collect::<HashSet<_>>().len(), pool.len());
    }

    #[test]
    fn repeated_cycles_the_pool_and_unique_never_repeats() {
        let rep = Workload::builtin(shape(false), Mix::Repeated, 0.5, 1, "r".into());
        let pool = builtin_pool();
        for seq in 0..45u64 {
            assert_eq!(prompt_of(&rep.body(seq)), pool[(seq % 20) as usize]);
        }
        let uni = Workload::builtin(shape(false), Mix::Unique, 0.5, 1, "run1".into());
        let seen: HashSet<String> = (0..500).map(|s| prompt_of(&uni.body(s))).collect();
        assert_eq!(seen.len(), 500);
        assert!(seen.iter().all(|p| !pool.contains(p)));
    }

    #[test]
    fn default_mix_follows_repeat_ratio() {
        let pool: HashSet<String> = builtin_pool().into_iter().collect();
        for ratio in [0.0, 0.3, 0.8, 1.0] {
            let w = Workload::builtin(shape(false), Mix::Default, ratio, 42, "x".into());
            let repeated = (0..10_000).filter(|&s| pool.contains(&prompt_of(&w.body(s)))).count();
            let got = repeated as f64 / 10_000.0;
            assert!((got - ratio).abs() < 0.03, "ratio {ratio}: got {got}");
        }
    }

    #[test]
    fn max_tokens_goes_to_both_endpoints() {
        for endpoint in [Endpoint::Chat, Endpoint::Generate] {
            let mut sh = shape(false);
            sh.endpoint = endpoint;
            let none: Value =
                serde_json::from_slice(&Workload::builtin(sh.clone(), Mix::Repeated, 0.5, 1, "r".into()).body(0))
                    .unwrap();
            assert!(none.get("max_tokens").is_none(), "{endpoint:?}");
            sh.max_tokens = Some(17);
            let v: Value =
                serde_json::from_slice(&Workload::builtin(sh, Mix::Repeated, 0.5, 1, "r".into()).body(0)).unwrap();
            assert_eq!(v["max_tokens"], json!(17), "{endpoint:?}");
        }
    }

    #[test]
    fn stream_bodies_ask_for_usage() {
        let w = Workload::builtin(shape(true), Mix::Repeated, 0.5, 1, "r".into());
        let v: Value = serde_json::from_slice(&w.body(0)).unwrap();
        assert_eq!(v["stream"], json!(true));
        assert_eq!(v["stream_options"]["include_usage"], json!(true));
        assert_eq!(v["model"], json!("auto"));
    }

    #[test]
    fn prompt_files() {
        let text = "{\"prompt\": \"hi\"}\n\n# comment\n{\"messages\": [{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"yo\"}]}\n";
        let entries = parse_prompt_lines(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], PromptEntry::Text("hi".into()));
        let w = Workload::from_entries(shape(false), &entries);
        assert_eq!(prompt_of(&w.body(2)), "hi");
        let v: Value = serde_json::from_slice(&w.body(1)).unwrap();
        assert_eq!(v["messages"][1]["content"], json!("yo"));
        let gen_shape = BodyShape {
            endpoint: Endpoint::Generate,
            ..shape(false)
        };
        let g = Workload::from_entries(gen_shape, &entries);
        let v: Value = serde_json::from_slice(&g.body(1)).unwrap();
        assert_eq!(v, json!({"model": "auto", "prompt": "be brief\nyo"}));
        assert!(parse_prompt_lines("{\"nope\": 1}").is_err());
        assert!(parse_prompt_lines("not json").is_err());
        assert!(parse_prompt_lines("\n").is_err());
    }
}
