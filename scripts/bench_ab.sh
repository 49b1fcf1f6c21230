#!/usr/bin/env bash
# Throughput A/B of two builds at 64 connections: one mock (CPU 1), both gateways up at once (CPU 0),
# 5 s runs alternating between them. Usage: scripts/bench_ab.sh OLD_BIN NEW_BIN [ROUNDS=5]
set -euo pipefail
source "$(dirname "$0")/bench_lib.sh"
A=$1; B=$2; R=${3:-5}; O=${OUT_DIR:-$(dirname "$0")/../target/bench_ab}; rm -rf "$O"; mkdir -p "$O"
pids=(); trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done' EXIT
taskset -c 1 $B mock --port 0 > $O/mock.out 2>/dev/null & pids+=($!)
MOCK=$(wait_listening $O/mock.out)
proxy_config "$MOCK" > $O/gw.toml
taskset -c 0 $A serve --config $O/gw.toml --port 0 > $O/a.out 2>/dev/null & pids+=($!)
taskset -c 0 $B serve --config $O/gw.toml --port 0 > $O/b.out 2>/dev/null & pids+=($!)
GA=$(wait_listening $O/a.out); GB=$(wait_listening $O/b.out)
rps() { taskset -c 1 $B bench --json --grace 2s --url $1 --model m --users 64 --run-time 5s --mix unique | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["requests_per_s"]))'; }
for i in $(seq 1 $R); do echo "A $(rps $GA)  B $(rps $GB)"; done
