"""Locust scenario equivalent to `optiroute bench`'s built-in workload.

Run it against OptiRoute (or any OpenAI-compatible server):

    pip install locust
    locust -f examples/locustfile.py --headless --host http://127.0.0.1:8000 \
        --users 50 --spawn-rate 5 --run-time 60s

The same knobs as `optiroute bench`, as environment variables:

    OPTIROUTE_MODEL         model name sent (default "auto")
    OPTIROUTE_MIX           default | unique | repeated (default "default")
    OPTIROUTE_REPEAT_RATIO  share of repeated (cacheable) prompts in the default mix (default 0.5)
    OPTIROUTE_STREAM        1 to send streaming requests; adds rows TTFT (time to first token)
                            and STREAM (whole stream) next to POST (time to headers)
    OPTIROUTE_THINK_TIME    seconds a user waits between requests (default 0)
    OPTIROUTE_API_KEY       bearer token (optional)
    OPTIROUTE_MAX_TOKENS    max_tokens (optional)

The prompt pool is the one built into `optiroute bench` (crates/bench/src/workload.rs): 8 short
easy, 8 short hard and 4 long (about 2 KB) prompts. "Repeated" requests send a pool prompt
verbatim and cycle through the pool; "unique" requests add a per-run, per-request suffix so they
never hit a cache. At the end it prints the cache hit rate, the routing split and the cost and
savings reported in the `x-optiroute-*` headers (or, for streams, in the final chunk's
`optiroute` object). Those totals are per process: in distributed mode each worker prints its own.
"""

import itertools
import json
import os
import random
import threading
import time
import uuid

from locust import HttpUser, constant, events, task

SHORT_EASY = [
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a synonym for 'happy'.",
    "Name the three primary colours.",
    "How many days are in a leap year?",
    "Spell the word 'necessary' backwards.",
    "At what temperature does water boil at sea level, in Celsius?",
]

SHORT_HARD = [
    "Prove that there are infinitely many prime numbers.",
    "Explain the trade-offs between optimistic and pessimistic concurrency control in a database.",
    "Derive a closed form for the n-th Fibonacci number and explain each step.",
    "Design a distributed rate limiter for an API gateway and analyse how it fails under network partitions.",
    "Explain why the halting problem is undecidable, with a proof sketch.",
    "Compare Raft and Paxos for a five-node cluster, including leader election and log compaction.",
    "Write a function that merges k sorted iterators and analyse its time and memory complexity.",
    "Analyse the causes of the 2008 financial crisis and evaluate which policy responses worked.",
]

LONG_CONTEXT = [
    "The quarterly planning meeting covered the roadmap for the storage team. The team agreed to "
    "finish the migration of the metadata service before starting work on tiered storage, because "
    "the old service blocks two other projects. Hiring is on track, with one new engineer joining "
    "next month. The on-call load stayed high, mostly because of noisy disk alerts that nobody acts on.",
    "A web service returns HTTP 502 errors for about one request in fifty under load. The service "
    "runs behind a reverse proxy with a 30 second upstream timeout and keeps a pool of database "
    "connections capped at twenty. Logs show that the failing requests wait for a connection for "
    "several seconds, and that a background job opens long transactions every minute.",
]

LONG_QUESTIONS = [
    ("Summarise the text above in one sentence.", 0),
    ("List the action items in the text above.", 0),
    (
        "Find the most likely root cause of the errors described above, explain your reasoning "
        "step by step, and propose a fix with its risks.",
        1,
    ),
    (
        "Write a detailed incident review for the situation above: timeline, root cause analysis, "
        "contributing factors and follow-up actions.",
        1,
    ),
]

LONG_REPEAT = 5


def builtin_pool():
    pool = SHORT_EASY + SHORT_HARD
    for question, ctx in LONG_QUESTIONS:
        context = LONG_CONTEXT[ctx]
        parts = "".join(f"Part {i}: {context}\n" for i in range(1, LONG_REPEAT + 1))
        pool.append(parts + "\n" + question)
    return pool


POOL = builtin_pool()
MODEL = os.environ.get("OPTIROUTE_MODEL", "auto")
MIX = os.environ.get("OPTIROUTE_MIX", "default")
REPEAT_RATIO = float(os.environ.get("OPTIROUTE_REPEAT_RATIO", "0.5"))
STREAM = os.environ.get("OPTIROUTE_STREAM", "0") not in ("", "0", "false", "no")
THINK_TIME = float(os.environ.get("OPTIROUTE_THINK_TIME", "0"))
API_KEY = os.environ.get("OPTIROUTE_API_KEY")
MAX_TOKENS = os.environ.get("OPTIROUTE_MAX_TOKENS")
RUN_ID = uuid.uuid4().hex[:16]

if MIX not in ("default", "unique", "repeated"):
    raise SystemExit(f"OPTIROUTE_MIX must be default, unique or repeated, not {MIX!r}")

_seq = itertools.count()
_lock = threading.Lock()
_totals = {"hits": 0, "misses": 0, "bypass": 0, "cost_usd": 0.0, "saved_usd": 0.0, "tiers": {}}


def next_prompt():
    seq = next(_seq)
    if MIX == "repeated":
        return POOL[seq % len(POOL)]
    base = random.choice(POOL)
    if MIX == "default" and random.random() < REPEAT_RATIO:
        return base
    return f"{base} (request {RUN_ID}-{seq})"


def request_body(prompt):
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    if MAX_TOKENS:
        body["max_tokens"] = int(MAX_TOKENS)
    if STREAM:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def record(cache, tier, cost, saved):
    with _lock:
        if cache in ("hit", "miss", "bypass"):
            key = {"hit": "hits", "miss": "misses", "bypass": "bypass"}[cache]
            _totals[key] += 1
        if tier:
            _totals["tiers"][tier] = _totals["tiers"].get(tier, 0) + 1
        _totals["cost_usd"] += float(cost or 0)
        _totals["saved_usd"] += float(saved or 0)


class GatewayUser(HttpUser):
    wait_time = constant(THINK_TIME)

    def on_start(self):
        self.headers = {"content-type": "application/json"}
        if API_KEY:
            self.headers["authorization"] = f"Bearer {API_KEY}"
        if STREAM:
            self.headers["accept"] = "text/event-stream"

    @task
    def chat_completion(self):
        body = json.dumps(request_body(next_prompt()))
        if STREAM:
            self._stream(body)
            return
        with self.client.post(
            "/v1/chat/completions", data=body, headers=self.headers, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            h = resp.headers
            record(
                h.get("x-optiroute-cache"),
                h.get("x-optiroute-tier"),
                h.get("x-optiroute-cost-usd"),
                h.get("x-optiroute-saved-usd"),
            )
            resp.success()

    def _stream(self, body):
        start = time.perf_counter()
        first = None
        meta = {}
        done = False
        with self.client.post(
            "/v1/chat/completions",
            data=body,
            headers=self.headers,
            stream=True,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            for raw in resp.iter_lines():
                line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if "error" in chunk:
                    resp.failure("stream_error")
                    return
                for choice in chunk.get("choices") or []:
                    if first is None and (choice.get("delta") or {}).get("content"):
                        first = time.perf_counter()
                if chunk.get("optiroute"):
                    meta = chunk["optiroute"]
            if not done:
                resp.failure("stream_incomplete")
                return
            h = resp.headers
            record(
                h.get("x-optiroute-cache") or meta.get("cache"),
                h.get("x-optiroute-tier") or meta.get("tier"),
                meta.get("cost_usd"),
                meta.get("saved_usd"),
            )
            resp.success()
        end = time.perf_counter()
        # Locust times a streamed request to its headers; record the first token and the
        # whole stream as extra rows.
        timings = [("STREAM", end - start)]
        if first is not None:
            timings.append(("TTFT", first - start))
        for kind, seconds in timings:
            events.request.fire(
                request_type=kind,
                name="/v1/chat/completions",
                response_time=seconds * 1000.0,
                response_length=0,
                exception=None,
                context={},
            )


@events.test_stop.add_listener
def print_gateway_totals(environment, **_kwargs):
    with _lock:
        t = dict(_totals)
    looked_up = t["hits"] + t["misses"]
    rate = f"{100.0 * t['hits'] / looked_up:.1f}%" if looked_up else "n/a"
    split = ", ".join(f"{k} {v}" for k, v in sorted(t["tiers"].items())) or "n/a"
    print(
        f"optiroute: cache hit rate {rate} ({t['hits']} hits, {t['misses']} misses, "
        f"{t['bypass']} bypass); routing {split}; cost ${t['cost_usd']:.6f} "
        f"(saved ${t['saved_usd']:.6f})"
    )
