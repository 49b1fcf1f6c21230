"""Compact summary: per embedding, nested 'any|prob' (scorer+weight nested) and 'knn50|prob' (weight nested) rows, MMLU and GSM8K.
usage: summary.py  (reads $EMB_DIR/results_*.json)"""
import json, glob, numpy as np
from common import OUT
def merged(pat):
    m = {}
    for fn in sorted(glob.glob(OUT + pat)):
        for sd, R in json.load(open(fn))['seeds'].items():
            d = m.setdefault(sd, {'baseline': R['baseline'], 'emb': {}}); d['emb'].update(R['emb'])
    return m
D = {'mmlu': merged('results_*mmlu_*.json'), 'gsm8k': merged('results_gsm8k_*.json')}
embs = []
for ds in D.values():
    for R in ds.values():
        for e in R['emb']:
            if e not in embs: embs.append(e)
def cell(ds, e, key):
    v = [D[ds][s]['emb'][e]['nested'][key]['metrics'] if key else D[ds][s]['baseline'] for s in D[ds] if key is None or e in D[ds][s]['emb']]
    if not v: return '      -       '
    return '%.4f / %4.1f%%' % (np.mean([x[0] for x in v]), 100 * np.mean([x[1] for x in v]))
print('%-26s | %-15s %-15s | %-15s %-15s' % ('embedding', 'MMLU any|prob', 'MMLU knn50|prob', 'GSM8K any|prob', 'GSM8K knn50|prob'))
print('%-26s | %-31s | %-31s' % ('baseline (router OOF)', cell('mmlu', None, None), cell('gsm8k', None, None)))
for e in embs:
    print('%-26s | %-15s %-15s | %-15s %-15s' % (e, cell('mmlu', e, 'any|prob'), cell('mmlu', e, 'knn50|prob'), cell('gsm8k', e, 'any|prob'), cell('gsm8k', e, 'knn50|prob')))
