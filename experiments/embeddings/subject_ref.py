"""Reference: what if an embedding recovered the MMLU subject perfectly? Score = training-fold subject mean gain."""
import numpy as np
from common import *
rows, s, w, g = load('mmlu'); G = np.array(g); n = len(s)
for seed in [1, 2, 3]:
    fold = folds(n, 5, seed); base = load_oof('mmlu', seed).astype(float); sub = np.zeros(n)
    for f in range(5):
        tr = fold != f
        for grp in np.unique(G):
            m = tr & (G == grp); sub[(fold == f) & (G == grp)] = ((1 + s[m] - w[m]) / 2).mean()
    print(seed, 'base %.4f/%.4f' % metrics(base, s, w), 'subject alone %.4f/%.4f' % metrics(sub, s, w),
          ' '.join('a=%.1f %.4f/%.4f' % (a, *metrics((1 - a) * base + a * sub, s, w)) for a in [0.1, 0.2, 0.3, 0.4, 0.5]))
