#!/usr/bin/env bash
# Reproduces the negative results quoted in ROUTING.md ("Reading the results honestly"): three quick
# sklearn proxies that did not help the prompt router, and the MMLU subject oracle. About 15 minutes
# on 2 cores (the router's out-of-fold scores come first).
# Needs numpy, scipy and scikit-learn (pip) and the shared data; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
export ROUTELLM_DATA="${ROUTELLM_DATA:-../shared/data/routellm}"
export OUT="${OUT:-target/negative}"
mkdir -p "$OUT"
python3 -c 'import numpy, scipy, sklearn' 2>/dev/null || pip install -q numpy scipy scikit-learn
cargo build -q --release -p optiroute-router --example router_cli
R=target/release/examples/router_cli
for s in 1 2 3 4 5; do
  $R eval --data "$ROUTELLM_DATA/gsm8k.dev.jsonl" --cv 5 --seed "$s" --scores-out "$OUT/gsm8k_oof_s$s.jsonl" > /dev/null
done
for s in 1 2 3; do
  $R eval --data "$ROUTELLM_DATA/mmlu.dev.jsonl" --cv 5 --seed "$s" --scores-out "$OUT/mmlu_oof_s$s.jsonl" > /dev/null
done
echo "== GSM8K: privileged difficulty measures used as rankings (APGR, CPT50; oracle: they read the answers)"
python3 experiments/negative/privileged.py
echo "== GSM8K: weak labels pulled toward the answer verifier's risk (n-gram proxy router)"
python3 experiments/negative/teacher_smoothing.py
echo "== MMLU: option/stem features stacked on the router's out-of-fold score"
python3 experiments/negative/mmlu_options.py
echo "== MMLU: the router blended with each prompt's true subject (an oracle), best weight after the fact"
python3 experiments/negative/subject_oracle.py
