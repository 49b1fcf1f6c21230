import json, os, numpy as np
# Run from the repository root; EMB_DIR holds downloads, embeddings and results (see run.sh).
DATA = os.environ.get('ROUTELLM_DATA', '../shared/data/routellm/').rstrip('/') + '/'
OUT = os.environ.get('EMB_DIR', 'target/embeddings').rstrip('/') + '/'
M64 = (1 << 64) - 1
def permutation(n, seed):
    idx = list(range(n)); state = (seed ^ 0x9e3779b97f4a7c15) & M64
    for i in range(n - 1, 0, -1):
        state = (state * 6364136223846793005 + 1442695040888963407) & M64
        j = (state >> 33) % (i + 1)
        idx[i], idx[j] = idx[j], idx[i]
    return idx
def folds(n, k, seed):
    f = np.zeros(n, int)
    for pos, i in enumerate(permutation(n, seed)): f[i] = pos % k
    return f
def load(name):
    rows = [json.loads(l) for l in open(f'{DATA}{name}.dev.jsonl')]
    s = np.array([float(r['strong_correct']) for r in rows]); w = np.array([float(r['weak_correct']) for r in rows])
    g = [r.get('subject') for r in rows]
    return rows, s, w, g
def load_oof(name, seed):
    return np.array([json.loads(l)['score'] for l in open(f'{OUT}{name}_oof_s{seed}.jsonl')], np.float32)
def curve(scores, s, w):
    """Quality at k = 0..n strong calls; ties averaged (like metrics.rs), f32 keys."""
    key = np.asarray(scores, np.float32).astype(np.float64)
    key = np.where(np.isnan(key), -np.inf, key)
    order = np.argsort(-key, kind='stable')
    ks = key[order]; gain = (s - w)[order]
    n = len(s)
    # tie groups
    starts = np.r_[0, np.nonzero(ks[1:] != ks[:-1])[0] + 1]; ends = np.r_[starts[1:], n]
    gs = np.add.reduceat(gain, starts) / (ends - starts)
    step = np.repeat(gs, ends - starts)
    q = np.r_[w.sum(), w.sum() + np.cumsum(step)] / n
    return q
def metrics(scores, s, w):
    q = curve(scores, s, w); n = len(s)
    qs, qw = s.mean(), w.mean()
    pgr = (q - qw) / (qs - qw)
    apgr = ((pgr[:-1] + pgr[1:]) / 2).sum() / n
    k = np.nonzero(pgr >= 0.5 - 1e-12)[0]
    return apgr, (k[0] / n if len(k) else None)
