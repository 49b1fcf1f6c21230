#!/usr/bin/env bash
# User-space instructions per proxied request of the gateway, counted by callgrind (repeatable on a
# shared machine, unlike timings). The gateway runs under valgrind in front of `optiroute mock`;
# after 200 warm-up requests the counters are zeroed, N requests are sent at one connection, and
# the counters are dumped.
#
#   cargo build --release -p optiroute && scripts/callgrind_request.sh [N=2000]
#   OPTIROUTE_BIN=/path/to/other/optiroute scripts/callgrind_request.sh     # compare builds
#   STREAM=1 scripts/callgrind_request.sh 500      # streaming requests (SSE), per stream and per chunk
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${OPTIROUTE_BIN:-$ROOT/target/release/optiroute}
N=${1:-2000}
OUT=$ROOT/target/callgrind
mkdir -p "$OUT"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
source "$ROOT/scripts/bench_lib.sh"
"$BIN" mock --port 0 >"$OUT/mock.out" 2>"$OUT/mock.err" &
pids+=($!)
MOCK=$(wait_listening "$OUT/mock.out")
proxy_config "$MOCK" >"$OUT/gw.toml"
rm -f "$OUT"/cg.out.*
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out.%p" "$BIN" serve --config "$OUT/gw.toml" --port 0 \
  >"$OUT/gw.out" 2>"$OUT/gw.err" &
VPID=$!
pids+=($VPID)
GW=$(wait_listening "$OUT/gw.out")
STREAM_ARGS=()
[ -n "${STREAM:-}" ] && STREAM_ARGS=(--stream)
"$BIN" bench --url "$GW" --model m --users 1 --requests 200 --mix unique "${STREAM_ARGS[@]}" >/dev/null 2>&1
callgrind_control -z "$VPID" >/dev/null
"$BIN" bench --url "$GW" --model m --users 1 --requests "$N" --mix unique "${STREAM_ARGS[@]}" --json >"$OUT/bench.json" 2>/dev/null
callgrind_control -d "$VPID" >/dev/null
DUMP=$(ls -t "$OUT"/cg.out.*.* | head -1)
TOTAL=$(awk '/^(summary|totals):/ {print $2; exit}' "$DUMP")
echo "$TOTAL instructions for $N requests: $((TOTAL / N)) per request ($DUMP; callgrind_annotate it for the breakdown)"
if [ -n "${STREAM:-}" ]; then
  CHUNKS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["output_tokens"])' "$OUT/bench.json")
  echo "$CHUNKS content chunks streamed: $((TOTAL / CHUNKS)) instructions per chunk"
fi
