from lib import *
for b in ['mmlu', 'gsm8k']:
    P, s, w, g = load(b)
    r = [metrics(oof(b, S), s, w) for S in SEEDS[b]]
    print(b, [('%.4f' % a, '%.4f' % c) for a, c in r], 'mean %.4f %.4f' % tuple(np.mean(r, 0)))
