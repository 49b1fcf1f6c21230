"""A semantic teacher used at training time only: each training prompt's outcomes are pulled toward the
mean outcomes of its K nearest training prompts by MiniLM embedding (found inside the training folds, the
prompt itself excluded), then an n-gram two-head router is fitted on the prompt text. At run time the
router would need no embedding model. The router here is an sklearn proxy of the shipped scorer (tf-idf
char 3-5 + word 1-2 grams, two logistic heads, MMLU labels group-smoothed by subject as in training).

  teacher_knn.py NAME SEEDS K:B[,K:B...] [ngram]     e.g. teacher_knn.py mmlu 1,2,3 50:0.5

With `ngram` the neighbours come from the proxy's own tf-idf n-gram vectors (cosine) instead of MiniLM,
so no embeddings are needed (ROUTING.md, "Reading the results honestly": the n-gram teacher).
"""
import sys, numpy as np
from scipy.sparse import hstack, vstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize
from common import load, folds, metrics, OUT

name, seeds = sys.argv[1], [int(x) for x in sys.argv[2].split(',')]
variants = [(0, 0.0)] + [(int(k), float(b)) for k, b in (v.split(':') for v in sys.argv[3].split(','))]
rows, s, w, g = load(name); n = len(rows); G = np.array([x or '' for x in g])
prompts = [r['prompt'] for r in rows]
NGRAM = sys.argv[4:] == ['ngram']
E = None if NGRAM else np.load(f'{OUT}minilm_{name}.npy').astype(np.float32)

def soft_lr(A, y, B):
    m = A.shape[0]
    fit = LogisticRegression(C=1.0, max_iter=2000).fit(
        vstack([A, A]), np.r_[np.ones(m), np.zeros(m)], sample_weight=np.r_[y, 1 - y])
    return fit.predict_proba(B)[:, 1]

def group_smooth(y, tr):
    out = y[tr].copy()
    if not G.any():
        return out
    for grp in np.unique(G[tr]):
        m = G[tr] == grp; out[m] = 0.5 * out[m] + 0.5 * out[m].mean()
    return out

def similarities(tr, A):
    """Cosine similarities between the training prompts, themselves excluded."""
    if NGRAM:
        An = normalize(A); sim = (An @ An.T).toarray()
    else:
        sim = E[tr] @ E[tr].T
    np.fill_diagonal(sim, -np.inf)
    return sim

res = {}
for seed in seeds:
    fold = folds(n, 5, seed); out = {v: np.zeros(n) for v in variants}
    for f in range(5):
        tr = np.nonzero(fold != f)[0]; te = np.nonzero(fold == f)[0]
        v1 = TfidfVectorizer(analyzer='char_wb', ngram_range=(3, 5), min_df=2, sublinear_tf=True)
        v2 = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        A = hstack([v1.fit_transform([prompts[i] for i in tr]), v2.fit_transform([prompts[i] for i in tr])]).tocsr()
        B = hstack([v1.transform([prompts[i] for i in te]), v2.transform([prompts[i] for i in te])]).tocsr()
        sim = similarities(tr, A) if any(b > 0 for _, b in variants) else None
        for k, b in variants:
            ss, ww = group_smooth(s, tr), group_smooth(w, tr)
            if b > 0:
                top = np.argpartition(-sim, k, axis=1)[:, :k]
                ss = (1 - b) * ss + b * s[tr][top].mean(1)
                ww = (1 - b) * ww + b * w[tr][top].mean(1)
            out[(k, b)][te] = (soft_lr(A, ss, B) + soft_lr(A, 1 - ww, B)) / 2
    for (k, b), sc in out.items():
        label = 'no teacher' if b == 0 else f'teacher K={k} weight {b}'
        a, c = metrics(sc, s, w); res.setdefault(label, []).append((a, c))
        print(f'{name} seed {seed} {label}: APGR %.4f CPT(50%%) %.4f' % (a, c), flush=True)
for label, v in res.items():
    print(f'{name} mean {label}: APGR %.4f CPT(50%%) %.4f' % tuple(np.mean(v, 0)))
