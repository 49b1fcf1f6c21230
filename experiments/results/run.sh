#!/usr/bin/env bash
# Regenerates the tables under "Results" in ROUTING.md (and the plots in docs/routing) from
# `router eval --json`: 5-fold cross-validation (MMLU seeds 1-3, GSM8K and MT-Bench seeds 1-5) and
# train-on-the-others. About 20 minutes on 2 cores. Outputs go to $OUT (default target/results);
# the Markdown tables are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
D="${ROUTELLM_DATA:-../shared/data/routellm}"
OUT="${OUT:-target/results}"
mkdir -p "$OUT"
cargo build -q --release -p optiroute-router --example router_cli
R="$PWD/target/release/examples/router_cli"
cv() { # bench file seed
  local o="$OUT/cv_$1_s$3.json"
  local plot=()
  [ "$3" = 1 ] && plot=(--plot "docs/routing/$1_cv.svg")
  [ -s "$o" ] || "$R" eval --data "$D/$2" --cv 5 --seed "$3" --json "${plot[@]}" > "$o"
}
for s in 1 2 3; do cv mmlu mmlu.dev.jsonl $s; done
for s in 1 2 3 4 5; do cv gsm8k gsm8k.dev.jsonl $s; cv mt_bench mt_bench.jsonl $s; done
tr() { # bench file others...
  local b=$1 f=$2; shift 2
  local o="$OUT/transfer_$b.json"
  [ -s "$o" ] || "$R" eval --data "$D/$f" --train "$@" --json --plot "docs/routing/${b}_transfer.svg" > "$o"
}
tr mmlu mmlu.dev.jsonl "$D/gsm8k.dev.jsonl" "$D/mt_bench.jsonl"
tr gsm8k gsm8k.dev.jsonl "$D/mmlu.dev.jsonl" "$D/mt_bench.jsonl"
tr mt_bench mt_bench.jsonl "$D/mmlu.dev.jsonl" "$D/gsm8k.dev.jsonl"
python3 experiments/results/tables.py "$OUT"
