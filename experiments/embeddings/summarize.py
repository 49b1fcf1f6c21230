import json, sys, numpy as np
r = json.load(open(sys.argv[1]))
for seed, R in r['seeds'].items():
    print('seed', seed, 'baseline apgr %.4f cpt50 %.4f' % tuple(R['baseline']))
    for emb, E in R['emb'].items():
        al = E['alone']; print(' ', emb, 'alone:', ' '.join('%s %.3f/%.3f' % (k, *v) for k, v in al.items()))
        sw = E['sweep']; best = max(sw, key=lambda k: sw[k][0]); bc = min(sw, key=lambda k: sw[k][1])
        print('   sweep best apgr (optimistic):', best, '%.4f/%.4f' % tuple(sw[best]), '| best cpt:', bc, '%.4f/%.4f' % tuple(sw[bc]))
        for k, v in E['nested'].items():
            if k.startswith('any'): print('   nested', k, '%.4f/%.4f' % tuple(v['metrics']), v['chosen'])
