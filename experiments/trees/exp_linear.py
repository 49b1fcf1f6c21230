"""Ideas 2 and 4 with an sklearn proxy of the shipped features (tf-idf char_wb 3-5 + word 1-2 grams, + standardised
dense features): pointwise two heads (reference), pairwise logistic ranking on gain differences, and (MMLU) a
57-way subject classifier whose score is sum_subj P(subj|x) * out-of-fold-free mean gain of subj in the training fold.
Saves OOF scores to OUT/lin/{bench}_{model}_s{S}.npy.   usage: exp_linear.py BENCH SEEDS MODELS"""
import sys, os, time
from lib import *
from scipy.sparse import hstack, csr_matrix
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
bench = sys.argv[1]; seeds = [int(x) for x in sys.argv[2].split(',')]; models = sys.argv[3].split(',')
P, s, w, g = load(bench); n = len(P)
Xd = np.load(f'{OUT}dense_{bench}.npy')
os.makedirs(OUT + 'lin', exist_ok=True)
def smooth(y, idx):
    out = y[idx].copy()
    if bench == 'mmlu':
        for grp in np.unique(g[idx]):
            m = g[idx] == grp; out[m] = 0.5 * out[m] + 0.5 * out[m].mean()
    return out
def soft_lr(A, y, B, C=1.0):
    m = A.shape[0]
    from scipy.sparse import vstack
    fit = LogisticRegression(C=C, max_iter=1000).fit(vstack([A, A]), np.r_[np.ones(m), np.zeros(m)], sample_weight=np.r_[y, 1 - y])
    return fit.predict_proba(B)[:, 1]
rng = np.random.default_rng(0)
for S in seeds:
    fold = folds(n, 5, S); out = {m: np.zeros(n) for m in models}; t0 = time.time()
    for f in range(5):
        tr = np.nonzero(fold != f)[0]; te = np.nonzero(fold == f)[0]
        v1 = TfidfVectorizer(analyzer='char_wb', ngram_range=(3, 5), min_df=2, sublinear_tf=True, max_features=200000)
        v2 = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b|[^\w\s]")
        mu, sd = Xd[tr].mean(0), Xd[tr].std(0) + 1e-9
        Dtr = np.clip((Xd[tr] - mu) / sd, -4, 4) * 0.1; Dte = np.clip((Xd[te] - mu) / sd, -4, 4) * 0.1
        Wtr = v2.fit_transform([P[i] for i in tr]); Wte = v2.transform([P[i] for i in te])
        A = hstack([v1.fit_transform([P[i] for i in tr]), Wtr, csr_matrix(Dtr)]).tocsr()
        B = hstack([v1.transform([P[i] for i in te]), Wte, csr_matrix(Dte)]).tocsr()
        ss, ww = smooth(s, tr), smooth(w, tr)
        if 'point' in models:
            out['point'][te] = (soft_lr(A, ss, B) + soft_lr(A, 1 - ww, B)) / 2
        if 'pair' in models:
            gain = ss - ww; m = len(tr)
            i = rng.integers(0, m, 12 * m); j = rng.integers(0, m, 12 * m)
            d = gain[i] - gain[j]; keep = np.abs(d) > 1e-9; i, j, d = i[keep], j[keep], d[keep]
            Xp = A[i] - A[j]
            fit = LogisticRegression(C=1.0, max_iter=1000, fit_intercept=False).fit(Xp, (d > 0).astype(int), sample_weight=np.abs(d))
            out['pair'][te] = 1 / (1 + np.exp(-(B @ fit.coef_.ravel())))
        if 'subj' in models:
            subs, yi = np.unique(g[tr], return_inverse=True)
            rate = np.array([((1 + s[tr] - w[tr]) / 2)[yi == k].mean() for k in range(len(subs))])
            clf = LogisticRegression(C=10.0, max_iter=300).fit(Wtr, yi)
            out['subj'][te] = clf.predict_proba(Wte) @ rate
            if f == 0: print('subject accuracy fold0 %.3f' % (subs[clf.predict(Wte)] == g[te]).mean(), flush=True)
    for m in models:
        np.save(f'{OUT}lin/{bench}_{m}_s{S}.npy', out[m])
        print(bench, S, m, 'APGR %.4f CPT50 %.4f' % metrics(out[m], s, w), '%.0fs' % (time.time() - t0), flush=True)
