"""Inductive check of tokenlearn on MMLU: for each seed and each CLI fold f, fit the table on the MiniLM embeddings of
the prompts NOT in MMLU fold f (other MMLU folds + all GSM8K), then embed all MMLU prompts with it
(PCA 128 over the vocab table, SIF weights baked in, centre, L2) -> $EMB_DIR/tlcv_128_sif_c_mmlu_s{seed}f{f}.npy.
Evaluate with EMB_PER_FOLD=1 eval_emb.py (fold f's scorer uses the fold-f table).
usage: tokenlearn_folds.py SEEDS LAM"""
import sys, numpy as np
sys.argv = [sys.argv[0]] + sys.argv[1:]
import tokenlearn as TL
from common import folds, OUT
seeds = [int(x) for x in sys.argv[1].split(',')]; lam = float(sys.argv[2])
n = 9984; ismmlu = np.arange(TL.A.shape[0]) < n
Am = TL.A[:n]; wt = TL.wt
for seed in seeds:
    fo = folds(n, 5, seed)
    for f in range(5):
        tr = ~ismmlu.copy(); tr[:n] = fo != f
        X, Tp, it = TL.fit(TL.A[tr], TL.Y[tr], lam)
        te = np.nonzero(fo == f)[0]
        mu = X.mean(0); Vt = np.linalg.svd(X - mu, full_matrices=False)[2]; T = ((X - mu) @ Vt[:128].T) * wt[:, None]
        # same pooling as embed_static.py: mean of the baked rows
        E = np.vstack([T[x].mean(0) if len(x) else np.zeros(128) for x in TL.ids[:n]])
        E -= E.mean(0); E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-9)
        np.save(f'{OUT}tlcv_128_sif_c_mmlu_s{seed}f{f}.npy', E.astype(np.float32))
        print('seed %d fold %d iters %d held-out-fold cos %.4f (distilled %.4f)' % (seed, f, it, TL.cos(TL.A[te] @ X, TL.Y[te]), TL.cos(TL.A[te] @ Tp, TL.Y[te])), flush=True)
