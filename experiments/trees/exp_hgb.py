"""Idea 1: gradient-boosted trees (sklearn HistGradientBoosting, hyperparameters fixed in advance) on ~38 dense
hand-made features. Variants: alone; stacked with the shipped router's score (HGB sees the router's inner-CV OOF score
on the outer training fold, and the outer OOF score at test); raw-score blend with the router, weight picked by
nested CV (inner folds of the outer training fold, same inner split as the Rust inner CV: folds(n_tr,5,7))."""
import os, sys
from lib import *
from sklearn.ensemble import HistGradientBoostingRegressor
bench = sys.argv[1]
P, s, w, g = load(bench); n = len(P)
X = np.load(f'{OUT}dense_{bench}.npy') if os.path.exists(f'{OUT}dense_{bench}.npy') else None
if X is None:
    X = dense_matrix(P); np.save(f'{OUT}dense_{bench}.npy', X)
def smooth(y, idx):
    out = y[idx].copy()
    if bench == 'mmlu':
        G = g[idx]
        for grp in np.unique(G):
            m = G == grp; out[m] = 0.5 * out[m] + 0.5 * out[m].mean()
    return out
def hgb(tr, te, Xf):
    m = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.04, max_leaf_nodes=15, min_samples_leaf=40,
                                      l2_regularization=1.0, early_stopping=False, random_state=0)
    y = (1 + smooth(s, tr) - smooth(w, tr)) / 2
    return m.fit(Xf[tr], y).predict(Xf[te])
W = [0, .1, .2, .3, .4, .5, .6]
res = {k: [] for k in ['router', 'hgb_dense', 'hgb_stack', 'blend_nested']}
for S in SEEDS[bench]:
    fold = folds(n, 5, S); R = oof(bench, S)
    out = {k: np.zeros(n) for k in res}; picked = []
    for f in range(5):
        tr = np.nonzero(fold != f)[0]; te = np.nonzero(fold == f)[0]
        Ri = inner_oof(bench, S, f, fold)[tr]
        out['router'][te] = R[te]
        out['hgb_dense'][te] = hgb(tr, te, X)
        col = np.zeros(n); col[tr] = Ri; col[te] = R[te]
        out['hgb_stack'][te] = hgb(tr, te, np.c_[X, col])
        # nested blend weight: inner OOF of HGB on tr with inner folds
        ifold = folds(len(tr), 5, 7); Hi = np.zeros(len(tr))
        for j in range(5):
            Hi[ifold == j] = hgb(tr[ifold != j], tr[ifold == j], X)
        best = max(W, key=lambda a: metrics((1 - a) * Ri + a * Hi, s[tr], w[tr])[0])
        picked.append(best)
        out['blend_nested'][te] = (1 - best) * R[te] + best * out['hgb_dense'][te]
    for k in res:
        res[k].append(metrics(out[k], s, w))
    print(bench, S, {k: '%.4f/%.3f' % res[k][-1] for k in res}, 'weights', picked, flush=True)
for k in res:
    a = np.array(res[k]); print(f'{bench} {k:14s} APGR %.4f CPT50 %.4f' % tuple(a.mean(0)), ' per seed', ' '.join('%.4f/%.3f' % tuple(x) for x in a))
