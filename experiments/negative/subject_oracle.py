"""MMLU: how far could the prompt router go if it knew each prompt's subject exactly? The subject is
an oracle here (the router never sees it): its score is the training folds' mean gain of the prompt's
subject. Blended with the router's out-of-fold score at every weight, the best weight picked after the
fact (optimistic). Reads OUT/mmlu_oof_s{1,2,3}.jsonl from run.sh."""
import json, numpy as np
from common_neg import load, folds, metrics, OUT
rows, s, w, g = load('mmlu'); G = np.array(g); n = len(s)
WEIGHTS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
best = []
for seed in [1, 2, 3]:
    base = np.array([json.loads(l)['score'] for l in open(f'{OUT}mmlu_oof_s{seed}.jsonl')], float)
    fold = folds(n, 5, seed); sub = np.zeros(n)
    for f in range(5):
        tr = fold != f
        for grp in np.unique(G):
            m = tr & (G == grp); sub[(fold == f) & (G == grp)] = ((1 + s[m] - w[m]) / 2).mean()
    blends = {a: metrics((1 - a) * base + a * sub, s, w) for a in WEIGHTS}
    a_cpt = min(blends, key=lambda a: blends[a][1])
    best.append(blends[a_cpt][1])
    print(f'seed {seed}: router %.4f / %.1f%%, subject alone %.4f / %.1f%%' % (
        metrics(base, s, w)[0], 100 * metrics(base, s, w)[1], metrics(sub, s, w)[0], 100 * metrics(sub, s, w)[1]))
    print('  blends (APGR / CPT50): ' + ', '.join('%.1f: %.4f / %.1f%%' % (a, x, 100 * c) for a, (x, c) in blends.items()))
print('best CPT(50%%) of any blend, per seed: %s; mean %.1f%% (target 25%%)' % (
    ' / '.join('%.1f%%' % (100 * b) for b in best), 100 * np.mean(best)))
