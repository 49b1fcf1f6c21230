import json, sys, numpy as np
from common import *
for name, seeds in [('mmlu', [1, 2, 3]), ('gsm8k', [1, 2, 3, 4, 5])]:
    rows, s, w, g = load(name)
    for seed in seeds:
        try: sc = load_oof(name, seed); rep = json.load(open(f'{OUT}{name}_rep_s{seed}.json'))
        except Exception as e: print(name, seed, 'missing'); continue
        oo = [json.loads(l) for l in open(f'{OUT}{name}_oof_s{seed}.jsonl')]
        assert all(o['prompt'] == r['prompt'] and o['strong'] == float(r['strong_correct']) for o, r in zip(oo, rows))
        a, c = metrics(sc, s, w)
        f = folds(len(s), 5, seed)
        fa = [metrics(sc[f == i], s[f == i], w[f == i])[0] for i in range(5)]
        print(name, seed, 'py apgr %.6f cpt50 %.6f | cli apgr %.6f cpt50 %.6f | fold apgr maxdiff %.2e' % (a, c, rep['apgr'], rep['cpt50'], max(abs(x - y) for x, y in zip(fa, rep['fold_apgr']))))
