#!/usr/bin/env bash
# Measures OptiRoute against the physical limit of this machine and prints the BENCHMARKS.md table.
#
# The gateway is pinned to CPU 0; the mock upstream (`optiroute mock`) and the load generator
# (`optiroute bench`) share CPU 1. Every figure is also measured straight against the mock, so the
# gateway's share of the cost is visible. Needs a release build: cargo build --release -p optiroute
#
#   scripts/bench_gateway.sh                 # ~2 minutes
#   RUN_TIME=30s scripts/bench_gateway.sh    # longer runs
#   HALT_POLL_NS=200000 scripts/bench_gateway.sh
#
# If nginx is installed (apt-get install nginx-light), it is measured too, pinned like the gateway and
# configured as a plain keep-alive reverse proxy in front of the same mock: the cost of one proxy hop
# that does nothing but forward bytes, on this machine.
#       (root, KVM guests with the cpuidle-haltpoll driver) lets an idle vCPU poll up to 200 µs before
#       it halts, for this run only, so a cross-CPU wake-up is not a hypervisor round trip; the setting
#       is restored on exit. Both columns (gateway and direct) run under the same setting.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${OPTIROUTE_BIN:-$ROOT/target/release/optiroute}
RUN_TIME=${RUN_TIME:-10s}
OUT=${OUT_DIR:-$ROOT/target/bench_gateway}
mkdir -p "$OUT"
rm -f "$OUT"/*.json
[ -x "$BIN" ] || { echo "build first: cargo build --release -p optiroute" >&2; exit 1; }

pids=()
HP=/sys/module/haltpoll/parameters
HP_SAVED=()
if [ -n "${HALT_POLL_NS:-}" ]; then
  if [ -w "$HP/guest_halt_poll_ns" ]; then
    HP_SAVED=("$(cat "$HP/guest_halt_poll_ns")" "$(cat "$HP/guest_halt_poll_allow_shrink")")
    echo "$HALT_POLL_NS" >"$HP/guest_halt_poll_ns"
    echo N >"$HP/guest_halt_poll_allow_shrink"
  else
    echo "HALT_POLL_NS ignored: $HP is not writable here (needs root and the haltpoll cpuidle driver)" >&2
  fi
fi
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ ${#HP_SAVED[@]} -eq 2 ]; then
    echo "${HP_SAVED[0]}" >"$HP/guest_halt_poll_ns"
    echo "${HP_SAVED[1]}" >"$HP/guest_halt_poll_allow_shrink"
  fi
}
trap cleanup EXIT

# launch NAME CMD...: starts a server in the background; url_of NAME waits for its
# OPTIROUTE_LISTENING line and prints the URL.
source "$ROOT/scripts/bench_lib.sh"
launch() {
  local name=$1; shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  pids+=($!)
}
url_of() { wait_listening "$OUT/$1.out"; }

launch mock taskset -c 1 "$BIN" mock --port 0
launch mock_slow taskset -c 1 "$BIN" mock --port 0 --chunk-delay-ms 50
MOCK=$(url_of mock)
MOCK_SLOW=$(url_of mock_slow)
{
  printf '[server]\nmax_connections = 20000\n'
  proxy_config "$MOCK"
  cat <<TOML
[[providers]]
name = "mock-slow"
kind = "openai"
base_url = "$MOCK_SLOW/v1"
[[deployments]]
name = "slow"
provider = "mock-slow"
model = "mock-model"
tier = "cloud"
TOML
} >"$OUT/gw.toml"
launch gw taskset -c 0 "$BIN" serve --config "$OUT/gw.toml" --port 0
GW_PID=${pids[2]}
launch demo taskset -c 0 "$BIN" serve --port 0 --demo-latency-ms 0
# The same gateway on the load generator's CPU: no cross-CPU wake-ups, so the added latency is the
# gateway's own work (on this VM a cross-CPU wake-up costs ~100 µs per hop).
launch gw_same taskset -c 1 "$BIN" serve --config "$OUT/gw.toml" --port 0
GW_SAME=$(url_of gw_same)
GW=$(url_of gw)
DEMO=$(url_of demo)

NGINX_URL=""
if command -v nginx >/dev/null 2>&1; then
  NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$OUT/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server ${MOCK#http://}; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGINX
  launch nginx taskset -c 0 nginx -c "$OUT/nginx.conf" -p "$OUT"
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" -H 'content-type: application/json' \
      -d '{"model":"mock-model","messages":[{"role":"user","content":"ready?"}]}' && { NGINX_URL="http://127.0.0.1:$NGINX_PORT"; break; }
    sleep 0.05
  done
fi

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
# RssAnon: the gateway's private memory, without the binary's file pages that VmRSS also counts.
anon_mb() { awk '/RssAnon/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
IDLE_RSS=$(rss_mb "$GW_PID")
IDLE_ANON=$(anon_mb "$GW_PID")

bench() { # name, then bench args
  local name=$1; shift
  taskset -c 1 "$BIN" bench --json --grace 5s "$@" >"$OUT/$name.json"
}

bench direct_64 --url "$MOCK" --model mock-model --users 64 --run-time "$RUN_TIME" --mix unique
# The gateway's own CPU (user and kernel time from /proc) over the 64-connection run.
cpu_ticks() { awk '{print $14, $15}' "/proc/$GW_PID/stat"; }
read -r U0 S0 < <(cpu_ticks)
bench gw_64 --url "$GW" --model m --users 64 --run-time "$RUN_TIME" --mix unique
read -r U1 S1 < <(cpu_ticks)
echo "$((U1 - U0)) $((S1 - S0)) $(getconf CLK_TCK)" >"$OUT/gw_64.cpu"
bench direct_1 --url "$MOCK" --model mock-model --users 1 --run-time "$RUN_TIME" --mix unique
bench gw_1 --url "$GW" --model m --users 1 --run-time "$RUN_TIME" --mix unique
bench gw_same_1 --url "$GW_SAME" --model m --users 1 --run-time "$RUN_TIME" --mix unique
if [ -n "$NGINX_URL" ]; then
  bench nginx_64 --url "$NGINX_URL" --model mock-model --users 64 --run-time "$RUN_TIME" --mix unique
  bench nginx_1 --url "$NGINX_URL" --model mock-model --users 1 --run-time "$RUN_TIME" --mix unique
fi
bench direct_stream_1 --url "$MOCK" --model mock-model --users 1 --run-time "$RUN_TIME" --mix unique --stream
bench gw_stream_1 --url "$GW" --model m --users 1 --run-time "$RUN_TIME" --mix unique --stream
# Cache hits: demo gateway, a pool of 20 prompts, primed first.
bench prime --url "$DEMO" --model local --users 1 --requests 20 --mix repeated
bench cache_64 --url "$DEMO" --model local --users 64 --run-time "$RUN_TIME" --mix repeated
# 1,000 concurrent streams held open by a slow upstream (50 ms per chunk): peak RSS of the gateway.
taskset -c 1 "$BIN" bench --json --grace 5s --url "$GW" --model slow --users 1000 --run-time "$RUN_TIME" \
  --mix unique --stream --timeout 60s >"$OUT/streams_1000.json" &
BPID=$!
PEAK=0
while kill -0 "$BPID" 2>/dev/null; do
  r=$(rss_mb "$GW_PID"); PEAK=$(python3 -c "print(max($PEAK, $r))"); sleep 0.5
done
wait "$BPID" || true

python3 - "$OUT" "$IDLE_RSS" "$PEAK" "$IDLE_ANON" <<'PY'
import json, sys, os
out, idle, peak = sys.argv[1], sys.argv[2], sys.argv[3]
r = {n[:-5]: json.load(open(os.path.join(out, n))) for n in os.listdir(out) if n.endswith(".json")}
user_t, sys_t, hz = (int(x) for x in open(os.path.join(out, "gw_64.cpu")).read().split())
n64 = r["gw_64"]["ok"] + r["gw_64"]["errors"]
cpu_us = lambda ticks: f"{ticks / hz / max(n64, 1) * 1e6:.0f} µs"

def lat(name, k): return r[name]["latency_ms"][k]
def ttft(name, k): return r[name]["ttft_ms"][k]
def throughput(label, name):
    via, direct = r[name]["requests_per_s"], r["direct_64"]["requests_per_s"]
    return (label, f"{via:,.0f} req/s", f"{direct:,.0f} req/s", f"{100 * via / direct:.0f}% of direct")
def added(label, name, k, base="direct_1", of=lat):
    via, direct = of(name, k) * 1000, of(base, k) * 1000
    return (label, f"{via:.0f} µs", f"{direct:.0f} µs", f"+{via - direct:.0f} µs")
rows = [
    throughput("non-streaming throughput, 64 connections", "gw_64"),
    added("latency at 1 connection, p50", "gw_1", "p50"),
    added("latency at 1 connection, p99", "gw_1", "p99"),
    added("latency at 1 connection, p50, all on one CPU", "gw_same_1", "p50"),
    added("latency at 1 connection, p99, all on one CPU", "gw_same_1", "p99"),
    added("streaming time to first token, p50", "gw_stream_1", "p50", base="direct_stream_1", of=ttft),
]
if "nginx_1" in r:
    rows += [
        throughput("reference: nginx reverse proxy, throughput, 64 connections", "nginx_64"),
        added("reference: nginx reverse proxy, latency at 1 connection, p50", "nginx_1", "p50"),
        added("reference: nginx reverse proxy, latency at 1 connection, p99", "nginx_1", "p99"),
    ]
rows += [
    ("gateway CPU per request, 64 connections", f"{cpu_us(user_t)} user + {cpu_us(sys_t)} kernel", "", ""),
    ("cache hits, 64 connections", f'{r["cache_64"]["requests_per_s"]:,.0f} req/s (hit rate {100*(r["cache_64"]["cache"]["hit_rate"] or 0):.0f}%)', "", f'p50 {lat("cache_64","p50")*1000:.0f} µs'),
    ("RSS idle", f"{idle} MB (private: {sys.argv[4]} MB)", "", ""),
    ("RSS peak, 1,000 concurrent streams", f"{peak} MB", "", f'{r["streams_1000"]["ok"]} streams ok, {r["streams_1000"]["errors"]} errors'),
]
print("| measure | through OptiRoute | straight to the mock | gateway's share |")
print("|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
PY
