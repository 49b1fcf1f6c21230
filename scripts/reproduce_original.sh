#!/usr/bin/env bash
# Reproduces the load test of the system OptiRoute replaces, with `optiroute bench`.
#
# The original: Locust, 50 concurrent users for 1 minute against a simulated local model that
# slept 2 s: 1,085 requests, 18.26 req/s, 3 ms median latency with a warm cache.
#
# This script starts `optiroute serve` in demo mode with the simulated local model at 2 s latency,
# then runs three phases against it:
#   1. cold cache: USERS users for RUN_TIME, every prompt unique (every request is a cache miss
#      and waits for the model), so throughput is bounded by USERS / latency (25 req/s for 50 / 2 s);
#   2. priming: each of the 20 prompts of the built-in pool once;
#   3. warm cache: USERS users for RUN_TIME cycling through the pool (every request a cache hit).
# and prints median latency, throughput, cost, hit rate and error rate next to the original's.
#
# Usage: scripts/reproduce_original.sh
# Environment (all optional):
#   OPTIROUTE_BIN  the optiroute binary (default: target/release/optiroute, else target/debug/optiroute)
#   USERS=50  RUN_TIME=60s  SPAWN_RATE=$USERS (users started per second; 5 mimics Locust's ramp)
#   LATENCY_MS=2000  MODEL=local (model sent in requests; "auto" lets the router choose)
#   PIN=1          pin the gateway to CPU 0 and the load generator to CPU 1 (taskset)
#   OUT_DIR        where the JSON reports and the gateway log go (default target/reproduce_original)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USERS=${USERS:-50}
RUN_TIME=${RUN_TIME:-60s}
SPAWN_RATE=${SPAWN_RATE:-$USERS}
LATENCY_MS=${LATENCY_MS:-2000}
MODEL=${MODEL:-local}
OUT_DIR=${OUT_DIR:-$ROOT/target/reproduce_original}
POOL_SIZE=20 # prompts in the built-in pool (crates/bench/src/workload.rs)

BIN=${OPTIROUTE_BIN:-}
if [[ -z "$BIN" ]]; then
  for candidate in "$ROOT/target/release/optiroute" "$ROOT/target/debug/optiroute"; do
    if [[ -x "$candidate" ]]; then
      BIN=$candidate
      break
    fi
  done
fi
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
  echo "optiroute binary not found; build it first: cargo build --release -p optiroute" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "python3 is needed to print the table" >&2; exit 1; }

GW_PIN=()
BENCH_PIN=()
if [[ "${PIN:-0}" == 1 ]]; then
  GW_PIN=(taskset -c 0)
  BENCH_PIN=(taskset -c 1)
fi

mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gateway.log"
: >"$LOG"

echo "starting $BIN serve (demo mode, simulated model latency ${LATENCY_MS} ms)" >&2
"${GW_PIN[@]}" "$BIN" serve --demo-latency-ms "$LATENCY_MS" --host 127.0.0.1 --port 0 >"$LOG" 2>&1 &
GW_PID=$!
cleanup() {
  if kill -0 "$GW_PID" 2>/dev/null; then
    kill "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

URL=""
for _ in $(seq 1 300); do
  URL=$(awk '$1 == "OPTIROUTE_LISTENING" { print $2; exit }' "$LOG")
  [[ -n "$URL" ]] && break
  if ! kill -0 "$GW_PID" 2>/dev/null; then
    echo "the gateway exited early; its log:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  sleep 0.1 # waiting for the gateway to print its address (not a test synchronisation)
done
if [[ -z "$URL" ]]; then
  echo "the gateway did not print OPTIROUTE_LISTENING within 30 s; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi
echo "gateway at $URL" >&2

bench() {
  "${BENCH_PIN[@]}" "$BIN" bench --url "$URL" --model "$MODEL" --json "$@"
}

echo "phase 1/3: cold cache, $USERS users, $RUN_TIME, unique prompts" >&2
bench --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$RUN_TIME" --mix unique >"$OUT_DIR/cold.json"

echo "phase 2/3: priming the cache with the $POOL_SIZE pool prompts" >&2
bench --users "$POOL_SIZE" --requests "$POOL_SIZE" --mix repeated >"$OUT_DIR/prime.json"

echo "phase 3/3: warm cache, $USERS users, $RUN_TIME, repeated prompts" >&2
bench --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$RUN_TIME" --mix repeated >"$OUT_DIR/warm.json"

python3 - "$OUT_DIR/cold.json" "$OUT_DIR/warm.json" "$USERS" "$LATENCY_MS" "$RUN_TIME" <<'PY'
import json
import sys

cold = json.load(open(sys.argv[1]))
warm = json.load(open(sys.argv[2]))
users, latency_ms, run_time = int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
limit = users / (latency_ms / 1000.0)


def med(r):
    lat = r.get("latency_ms")
    return f"{lat['p50']:,.1f} ms" if lat else "n/a"


def p95(r):
    lat = r.get("latency_ms")
    return f"{lat['p95']:,.1f} ms" if lat else "n/a"


def money(v):
    return "n/a" if v is None else f"${v:.6f}"


def rate(r):
    hr = r["cache"]["hit_rate"]
    return "n/a" if hr is None else f"{hr * 100:.1f}%"


rows = [
    ("Requests", "1,085", f"{cold['requests']:,}", f"{warm['requests']:,}"),
    ("Throughput", "18.26 req/s", f"{cold['requests_per_s']:,.2f} req/s", f"{warm['requests_per_s']:,.2f} req/s"),
    ("Median latency", "3 ms (warm)", med(cold), med(warm)),
    ("p95 latency", "n/a", p95(cold), p95(warm)),
    ("Cache hit rate", "n/a", rate(cold), rate(warm)),
    ("Error rate", "n/a", f"{cold['error_rate'] * 100:.2f}%", f"{warm['error_rate'] * 100:.2f}%"),
    ("Cost", "n/a", money(cold.get("cost_usd")), money(warm.get("cost_usd"))),
    ("Saved", "n/a", money(cold.get("saved_usd")), money(warm.get("saved_usd"))),
]
print()
print(f"Original experiment vs OptiRoute ({users} users, {run_time}, simulated model at {latency_ms:.0f} ms)")
print()
widths = [16, 22, 22, 22]
header = ("", "Original (Locust)", "OptiRoute cold cache", "OptiRoute warm cache")
line = "-+-".join("-" * w for w in widths)
print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
print(line)
for row in rows:
    print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
print()
cold_rps, warm_rps = cold["requests_per_s"], warm["requests_per_s"]
print(f"cold throughput: {cold_rps:.2f} req/s = {100 * cold_rps / limit:.1f}% of the users/latency limit ({limit:.1f} req/s)")
if cold_rps > 0:
    print(f"warm/cold throughput: {warm_rps / cold_rps:,.0f}x (target: at least 1,000x)")
for name, r in (("cold", cold), ("warm", warm)):
    if r["errors_by_status"]:
        print(f"{name} errors by status: {r['errors_by_status']}")
PY
echo "JSON reports and gateway log: $OUT_DIR" >&2
