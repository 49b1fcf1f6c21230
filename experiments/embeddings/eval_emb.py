"""Embedding scorers inside the CLI's exact 5-fold split, blended with the router's out-of-fold scores.
With EMB_PER_FOLD=1, fold f of seed S reads $EMB_DIR/{EMB}_{DATASET}_s{S}f{f}.npy (e.g. a table fitted without
fold f; see tokenlearn_folds.py) and results go to results_pf_*.json.
usage: eval_emb.py DATASET SEEDS(comma) EMB1,EMB2,...   (EMB = file prefix: $EMB_DIR/{EMB}_{DATASET}.npy)
Scorers per fold (trained on the other 4 folds only):
  lrC     : two logistic heads on the L2-normalised embedding, standardised on the training folds (P(strong ok), P(weak wrong)), soft labels,
            MMLU labels smoothed 0.5 toward the training-fold subject mean (as the Rust trainer does);
            score = mean of the two probabilities. C = inverse L2 strength (sklearn).
  knnK    : mean gain label (1+s-w)/2 (smoothed as above) of the K most cosine-similar training prompts.
Blends: prob  b = (1-a)*router + a*emb;  rank  b = (1-a)*rank(router) + a*rank(emb) (ranks / n).
Nested weight choice: for outer fold f, (scorer, blend kind, a) maximising APGR on the other 4 folds' rows."""
import sys, json, numpy as np
from sklearn.linear_model import LogisticRegression
from scipy.stats import rankdata
from common import *
name = sys.argv[1]; seeds = [int(x) for x in sys.argv[2].split(',')]; embs = sys.argv[3].split(',')
rows, s, w, g = load(name); n = len(s)
G = np.array([x or '' for x in g]); SMOOTH = 0.5 if any(g) else 0.0
import os
PER_FOLD = os.environ.get('EMB_PER_FOLD') == '1'
Cs = [float(x) for x in os.environ.get('EMB_CS', '0.003,0.01,0.03,0.1,0.3').split(',')]
Ks = [int(x) for x in os.environ.get('EMB_KS', '10,25,50,100,200').split(',')]
A = np.round(np.arange(0, 1.0001, 0.05), 2)
def smooth_labels(tr):
    ss, ww = s.copy(), w.copy()
    if SMOOTH > 0:
        for grp in np.unique(G[tr]):
            m = tr & (G == grp)
            ss[m] = (1 - SMOOTH) * s[m] + SMOOTH * s[m].mean(); ww[m] = (1 - SMOOTH) * w[m] + SMOOTH * w[m].mean()
    return ss, ww
def soft_lr(X, y, C, Xt):
    Xd = np.vstack([X, X]); yd = np.r_[np.ones(len(y)), np.zeros(len(y))]; sw = np.r_[y, 1 - y]
    keep = sw > 0
    m = LogisticRegression(C=C, max_iter=2000).fit(Xd[keep], yd[keep], sample_weight=sw[keep])
    return m.predict_proba(Xt)[:, 1]
def emb_scores(EF, fold):
    out = {}
    for f in range(5):
        E = EF(f)
        te = fold == f; tr = ~te
        ss, ww = smooth_labels(tr)
        mu, sd = E[tr].mean(0), E[tr].std(0) + 1e-9; Ztr, Zte = (E[tr] - mu) / sd, (E[te] - mu) / sd
        for C in Cs:
            p = 0.5 * (soft_lr(Ztr, ss[tr], C, Zte) + soft_lr(Ztr, 1 - ww[tr], C, Zte))
            out.setdefault(f'lr{C}', np.zeros(n))[te] = p
        sim = E[te] @ E[tr].T
        gain = (1 + ss[tr] - ww[tr]) / 2
        top = np.argsort(-sim, axis=1)[:, :max(Ks)]
        for K in Ks:
            out.setdefault(f'knn{K}', np.zeros(n))[te] = gain[top[:, :K]].mean(1)
    return out
def blend(r, e, kind, a):
    if kind == 'prob': return (1 - a) * r + a * e
    return (1 - a) * rankdata(r) / n + a * rankdata(e) / n
res = {'dataset': name, 'seeds': {}}
for seed in seeds:
    fold = folds(n, 5, seed); base = load_oof(name, seed).astype(np.float64)
    rb = metrics(base, s, w); R = {'baseline': rb, 'emb': {}}
    for emb in embs:
        if PER_FOLD:
            sc = emb_scores(lambda f: np.load(f'{OUT}{emb}_{name}_s{seed}f{f}.npy').astype(np.float64), fold)
        else:
            E = np.load(f'{OUT}{emb}_{name}.npy').astype(np.float64)
            sc = emb_scores(lambda f: E, fold)
        ER = {'alone': {k: metrics(v, s, w) for k, v in sc.items()}, 'sweep': {}}
        # full sweep (pooled, NOT nested: optimistic) and nested selection
        cand = [(k, kind, a) for k in sc for kind in ['prob', 'rank'] for a in A]
        B = {c: blend(base, sc[c[0]], c[1], c[2]) for c in cand}
        for c in cand: ER['sweep']['%s|%s|%.2f' % c] = metrics(B[c], s, w)
        # nested: pick (k, kind, a) on the other folds, apply to the held-out fold
        # (scores of different folds are combined into one pooled ranking as the CLI does)
        per_scorer = {}
        for rk in ['prob', 'rank']:
            for restrict in ['any'] + list(sc):
                final = np.zeros(n); chosen = []
                cc = [c for c in cand if c[1] == rk and restrict in ('any', c[0])]
                for f in range(5):
                    inn = fold != f
                    best = max(cc, key=lambda c: metrics(B[c][inn], s[inn], w[inn])[0])
                    chosen.append('%s|%s|%.2f' % best)
                    final[fold == f] = B[best][fold == f]
                per_scorer[restrict + '|' + rk] = {'metrics': metrics(final, s, w), 'chosen': chosen}
        ER['nested'] = per_scorer
        R['emb'][emb] = ER
        print(name, seed, emb, 'baseline %.4f/%.4f' % rb, 'nested prob %.4f/%.4f' % per_scorer['any|prob']['metrics'], per_scorer['any|prob']['chosen'], 'rank %.4f/%.4f' % per_scorer['any|rank']['metrics'], per_scorer['any|rank']['chosen'], flush=True)
    res['seeds'][seed] = R
json.dump(res, open(f'{OUT}results_{"pf_" if PER_FOLD else ""}{name}_{"_".join(embs)}_s{"".join(map(str, seeds))}.json', 'w'), indent=0)
