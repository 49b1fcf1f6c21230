#!/usr/bin/env bash
# Reproduces "Gradient-boosted trees on cheap text features: measured, not shipped" in ROUTING.md: sklearn
# experiments on the learned router's out-of-fold scores, the exact folds of `router eval --cv 5`.
# About 40 minutes on 2 cores. Needs numpy, scipy and scikit-learn (pip) and the shared data; run from
# anywhere. Outputs (and logs) go to $OUT (default target/trees).
set -euo pipefail
cd "$(dirname "$0")/../.."
export ROUTELLM_DATA="${ROUTELLM_DATA:-../shared/data/routellm}"
export OUT="${OUT:-target/trees}"
mkdir -p "$OUT/inner" "$OUT/variants"
python3 -c 'import numpy, scipy, sklearn' 2>/dev/null || pip install -q numpy scipy scikit-learn
cargo build -q --release -p optiroute-router --example router_cli
R="$PWD/target/release/examples/router_cli"
E=experiments/trees
# The shipped router's out-of-fold scores (MMLU seeds 1-3, GSM8K 1-5).
for s in 1 2 3; do "$R" eval --data "$ROUTELLM_DATA/mmlu.dev.jsonl" --cv 5 --seed $s --scores-out "$OUT/mmlu_oof_s$s.jsonl" > /dev/null; done
for s in 1 2 3 4 5; do "$R" eval --data "$ROUTELLM_DATA/gsm8k.dev.jsonl" --cv 5 --seed $s --scores-out "$OUT/gsm8k_oof_s$s.jsonl" > /dev/null; done
echo "== the shipped router (checks the out-of-fold files against ROUTING.md)"
python3 $E/baseline.py
# Inner 5-fold CV of the router on each outer training fold: the nested blend weight is chosen on these.
python3 $E/make_inner.py
for f in "$OUT"/inner/*_s*_f?.jsonl; do
  o="${f%.jsonl}.oof.jsonl"
  [ -s "$o" ] || "$R" eval --data "$f" --cv 5 --seed 7 --scores-out "$o" > /dev/null
done
echo "== boosted trees on ~38 text features: alone, stacked, blended with the router (nested weight)"
python3 $E/exp_hgb.py gsm8k | tee "$OUT/hgb_gsm8k.log"
python3 $E/exp_hgb.py mmlu | tee "$OUT/hgb_mmlu.log"
echo "== ensembles of router variants (fixed weights)"
run() { # name bench seed args...
  local n=$1 b=$2 s=$3; shift 3
  local o="$OUT/variants/${b}_${n}_s${s}.jsonl"
  [ -s "$o" ] || "$R" eval --data "$ROUTELLM_DATA/$b.dev.jsonl" --cv 5 --seed "$s" --scores-out "$o" "$@" > /dev/null
}
for b in gsm8k mmlu; do
  if [ $b = mmlu ]; then seeds="1 2 3"; else seeds="1 2 3 4 5"; fi
  for s in $seeds; do
    run gain $b $s --target gain
    run l2lo $b $s --l2 1.0
    run l2hi $b $s --l2 6.0
    run char $b $s --word-max 0
    run word $b $s --char-min 0
  done
done
for v in var:gain var:l2lo var:l2hi var:char,var:word var:gain,var:l2lo,var:l2hi,var:char,var:word; do
  python3 $E/blend.py gsm8k $v
  python3 $E/blend.py mmlu $v
done
echo "== pairwise ranking against pointwise heads (sklearn proxy, GSM8K)"
python3 $E/exp_linear.py gsm8k 1,2,3,4,5 point,pair
python3 $E/blend.py gsm8k lin:point
python3 $E/blend.py gsm8k lin:pair
echo "== a 57-way subject classifier (MMLU, seed 1)"
python3 $E/exp_linear.py mmlu 1 subj
echo "== which features the MMLU trees split on (descriptive)"
python3 $E/imp.py
