"""Exploratory: kNN variants on MiniLM (MMLU) blended (prob) with the router, weight chosen by nested CV."""
import sys, numpy as np
from common import *
name = sys.argv[1]; seeds = [int(x) for x in sys.argv[2].split(',')]
rows, s, w, g = load(name); n = len(s); G = np.array([x or '' for x in g]); SM = 0.5 if any(g) else 0.0
E = np.load(f'{OUT}minilm_{name}.npy').astype(np.float64)
A = np.round(np.arange(0, 1.0001, 0.05), 2)
def variants(fold):
    out = {}
    for f in range(5):
        te = fold == f; tr = ~te; ss, ww = s.copy(), w.copy()
        if SM:
            for grp in np.unique(G[tr]):
                m = tr & (G == grp); ss[m] = (1 - SM) * s[m] + SM * s[m].mean(); ww[m] = (1 - SM) * w[m] + SM * w[m].mean()
        sim = E[te] @ E[tr].T; top = np.argsort(-sim, axis=1)[:, :200]; ts = np.take_along_axis(sim, top, 1)
        gs = ((1 + ss[tr] - ww[tr]) / 2)[top]; gr = ((1 + s[tr] - w[tr]) / 2)[top]
        out.setdefault('knn50_smoothed', np.zeros(n))[te] = gs[:, :50].mean(1)
        out.setdefault('knn50_raw', np.zeros(n))[te] = gr[:, :50].mean(1)
        for tau in [0.02, 0.05]:
            wt = np.exp((ts - ts[:, :1]) / tau)
            out.setdefault(f'soft200_tau{tau}', np.zeros(n))[te] = (wt * gs).sum(1) / wt.sum(1)
    return out
for seed in seeds:
    fold = folds(n, 5, seed); base = load_oof(name, seed).astype(float)
    line = [f'{name} s{seed} base %.4f/%.4f' % metrics(base, s, w)]
    for k, v in variants(fold).items():
        final = np.zeros(n); ch = []
        for f in range(5):
            inn = fold != f
            a = max(A, key=lambda a: metrics(((1 - a) * base + a * v)[inn], s[inn], w[inn])[0]); ch.append(a)
            final[fold == f] = ((1 - a) * base + a * v)[fold == f]
        line.append('%s alone %.4f nested %.4f/%.4f a=%s' % (k, metrics(v, s, w)[0], *metrics(final, s, w), ch))
    print('\n  '.join(line), flush=True)
