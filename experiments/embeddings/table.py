"""Mean over seeds (and per seed) of baseline vs nested-CV blends, plus fixed-weight sweeps for chosen scorers."""
import json, sys, numpy as np
files = sys.argv[1:]
merged = {}
for fn in files:
    x = json.load(open(fn)); dst = merged.setdefault(x['dataset'], {'dataset': x['dataset'], 'seeds': {}})['seeds']
    for sd, R in x['seeds'].items():   # merge embeddings per seed (a plain update would keep only the last file's)
        dst.setdefault(sd, {'baseline': R['baseline'], 'emb': {}})['emb'].update(R['emb'])
for r in merged.values():
    seeds = list(r['seeds'])
    print('==', r['dataset'], 'seeds', seeds)
    def row(label, vals):
        a = np.array([v[0] for v in vals]); c = np.array([v[1] for v in vals])
        print('%-38s APGR %.4f (%s)  CPT50 %.4f (%s)' % (label, a.mean(), ' '.join('%.3f' % x for x in a), c.mean(), ' '.join('%.3f' % x for x in c)))
    row('baseline (router oof)', [r['seeds'][s]['baseline'] for s in seeds])
    embs = list(r['seeds'][seeds[0]]['emb'])
    for e in embs:
        E = {s: r['seeds'][s]['emb'][e] for s in seeds}
        for key in E[seeds[0]]['nested']:
            if key.startswith('any') or key.split('|')[0] in ('knn25', 'knn50', 'knn100', 'lr0.003', 'lr0.01'):
                row(f'{e} nested {key}', [E[s]['nested'][key]['metrics'] for s in seeds])
        # best standalone (by mean APGR) and sweep for knn50/prob
        al = E[seeds[0]]['alone']
        bk = max(al, key=lambda k: np.mean([E[s]['alone'][k][0] for s in seeds]))
        row(f'{e} alone best ({bk})', [E[s]['alone'][bk] for s in seeds])
        for sc in ['knn50', bk]:
            for kind in ['prob', 'rank']:
                line = []
                for a in np.round(np.arange(0, 0.75, 0.05), 2):
                    k = '%s|%s|%.2f' % (sc, kind, a)
                    line.append('%.2f:%.4f/%.3f' % (a, np.mean([E[s]['sweep'][k][0] for s in seeds]), np.mean([E[s]['sweep'][k][1] for s in seeds])))
                print(f'   sweep {e} {sc} {kind} (mean over seeds, not nested):', ' '.join(line))
