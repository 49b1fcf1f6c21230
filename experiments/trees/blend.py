"""Fixed-weight blends (weights declared before looking at test folds) of the shipped router's OOF score with other OOF
scores.  usage: blend.py BENCH name1[,name2..] ; names: lin:MODEL (OUT/lin), var:NAME (OUT/variants)"""
import sys
from lib import *
bench = sys.argv[1]; names = sys.argv[2].split(',')
P, s, w, g = load(bench)
def get(nm, S):
    kind, m = nm.split(':')
    if kind == 'lin': return np.load(f'{OUT}lin/{bench}_{m}_s{S}.npy')
    return np.array([json.loads(l)['score'] for l in open(f'{OUT}variants/{bench}_{m}_s{S}.jsonl')])
rows = {}
for S in SEEDS[bench]:
    R = oof(bench, S); O = [get(nm, S) for nm in names]
    cand = {'router': R}
    for nm, o in zip(names, O): cand[nm + ' alone'] = o
    M = np.mean(O, 0)
    for a in (0.3, 0.5):
        cand[f'raw blend w={a}'] = (1 - a) * R + a * M
    cand['rank-avg equal (all)'] = np.mean([rank01(R)] + [rank01(o) for o in O], 0)
    cand['raw mean equal (all)'] = np.mean([R] + O, 0)
    for k, v in cand.items(): rows.setdefault(k, []).append(metrics(v, s, w))
print(bench, names)
for k, v in rows.items():
    a = np.array(v)
    print(f'  {k:28s} APGR %.4f CPT50 %.4f | ' % tuple(a.mean(0)) + ' '.join('%.4f/%.3f' % tuple(x) for x in a))
