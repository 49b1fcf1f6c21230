#!/usr/bin/env bash
# Static (model2vec-style) token embeddings distilled from all-MiniLM-L6-v2, evaluated like run.sh's `minilm`
# row (ROUTING.md, "Static embeddings distilled from MiniLM"). Runs run.sh first if its outputs are missing.
# About 45 minutes on one core, 17 of them the full MiniLM pass over MMLU (for the reference row and for
# the refined tables).
#
#   experiments/embeddings/run_static.sh      (from anywhere; outputs under target/embeddings)
set -euo pipefail
cd "$(dirname "$0")/../.."
export EMB_DIR=${EMB_DIR:-target/embeddings}
export ROUTELLM_DATA=${ROUTELLM_DATA:-../shared/data/routellm}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
X=experiments/embeddings
[ -f "$EMB_DIR/minilm_mmlu.npy" ] && [ -f "$EMB_DIR/minilm_gsm8k.npy" ] && [ -f "$EMB_DIR/mmlu_oof_s1.jsonl" ] ||
  "$X/run.sh"
PY="$EMB_DIR/venv/bin/python"
# 1. Distil: [CLS] t [SEP] through MiniLM for all 30,522 WordPieces (~3 min) -> static_{mean,tok,input}.npy
"$PY" $X/distill.py
# 2. Plain variants, named SOURCE_DIMS_WEIGHT[_c][_f16|_q8] (see embed_static.py)
S1=m2v_mean_384_uni,m2v_mean_128_sif,m2v_tok_128_sif,m2v_input_128_sif,m2v_mean_128_zipf,m2v_mean_128_sif_c
S2=m2v_mean_64_sif_c,m2v_mean_256_sif_c,m2v_mean_384_sif_c,m2v_tok_128_sif_c,m2v_mean_128_sif2_c,m2v_mean_128_sif4_c
S3=m2v_mean_128_sif_c_q8,m2v_mean_128_sif_c_f16
"$PY" $X/embed_static.py $(echo $S1,$S2,$S3 | tr , '\n' | sed 's/^m2v_//')
for S in $S1 $S2 $S3; do
  "$PY" $X/eval_emb.py mmlu 1,2,3 $S
  "$PY" $X/eval_emb.py gsm8k 1,2,3,4,5 $S
done
# 3. Refined tables: token vectors fitted so a prompt's weighted mean matches its full MiniLM embedding
"$PY" $X/tokenlearn.py val 1e-4,1e-3,1e-2,1e-1      # held-out cosine to MiniLM for each regularisation
"$PY" $X/tokenlearn.py fit 0.03                     # all prompts (no labels): transductive
"$PY" $X/tokenlearn.py fitmmlu 0.03                 # MMLU prompts only: GSM8K unseen
"$PY" $X/embed_static.py tl0.03_128_sif_c tl0.03_384_sif_c tlm0.03_128_sif_c
"$PY" $X/tokenlearn_folds.py 1,2,3 0.03             # one table per outer fold, fitted without that fold (~7 min)
"$PY" $X/eval_emb.py mmlu 1,2,3 minilm,m2v_tl0.03_128_sif_c,m2v_tl0.03_384_sif_c
"$PY" $X/eval_emb.py gsm8k 1,2,3,4,5 minilm,m2v_tl0.03_128_sif_c,m2v_tl0.03_384_sif_c,m2v_tlm0.03_128_sif_c
EMB_PER_FOLD=1 "$PY" $X/eval_emb.py mmlu 1,2,3 tlcv_128_sif_c
# 4. Tables and the cost per prompt
"$PY" $X/table.py "$EMB_DIR"/results_mmlu_*.json "$EMB_DIR"/results_pf_mmlu_*.json
"$PY" $X/table.py "$EMB_DIR"/results_gsm8k_*.json
"$PY" $X/summary.py
"$PY" $X/bench_static.py 128
