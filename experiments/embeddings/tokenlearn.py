"""'tokenlearn'-style refinement of the distilled static table (label-free): fit per-token vectors T (V x 384) so that the
SIF-weighted mean of a prompt's token vectors regresses onto the full MiniLM sentence embedding of that prompt:
    min_T ||A T - Y||^2 + lam ||T - c T0||^2        A = row-normalised SIF-weighted bag of WordPieces, Y = MiniLM embeddings,
    T0 = static_mean.npy (distill.py), c = best global scale.  Solved by block conjugate gradients.
CAVEAT: the corpus here is the evaluation prompts themselves (mmlu+gsm8k, no labels used), so this is a transductive
upper bound on what a table distilled on a generic corpus would do.
usage: tokenlearn.py val   (held-out 10% cosine fidelity for several lam)
       tokenlearn.py fit LAM   -> $EMB_DIR/static_tl{LAM}.npy   (then embed_static.py tl{LAM}_128_sif_c etc.)
       tokenlearn.py fitmmlu LAM -> $EMB_DIR/static_tlm{LAM}.npy  (corpus = MMLU prompts only: inductive for GSM8K)
       (tokenlearn_folds.py: per-CV-fold tables, inductive for MMLU)"""
import sys, json, numpy as np, scipy.sparse as sp
from tokenizers import Tokenizer
from common import DATA, OUT
tok = Tokenizer.from_file(OUT + 'pkgs/minilm/model/tokenizer.json'); tok.no_truncation(); tok.no_padding()
V = tok.get_vocab_size()
names = ['mmlu', 'gsm8k']
texts = [json.loads(l)['prompt'] for n in names for l in open(f'{DATA}{n}.dev.jsonl')]
Y = np.vstack([np.load(f'{OUT}minilm_{n}.npy') for n in names]).astype(np.float64)
ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
cnt = np.bincount(np.concatenate(ids), minlength=V).astype(float)
mt = [json.loads(l) for l in open(f'{DATA}mt_bench.jsonl')]  # same counts as embed_static.py 'sif'
for e in tok.encode_batch([str(r.get('prompt') or ' '.join(r.get('turns', []))) for r in mt], add_special_tokens=False): cnt += np.bincount(e.ids, minlength=V)
wt = 1e-3 / (1e-3 + cnt / cnt.sum())
r = np.repeat(np.arange(len(ids)), [len(x) for x in ids]); c = np.concatenate(ids)
A = sp.csr_matrix((wt[c], (r, c)), shape=(len(ids), V))
A = sp.diags(1 / np.maximum(np.asarray(A.sum(1)).ravel(), 1e-12)) @ A
T0 = np.load(OUT + 'static_mean.npy').astype(np.float64)
def fit(Atr, Ytr, lam, iters=200):
    P0 = Atr @ T0; scale = (P0 * Ytr).sum() / (P0 * P0).sum(); Tp = scale * T0
    # solve (A'A + lam I) X = A'Y + lam Tp, starting from Tp
    mv = lambda X: Atr.T @ (Atr @ X) + lam * X
    X = Tp.copy(); R = Atr.T @ Ytr + lam * Tp - mv(X); P = R.copy(); rs = (R * R).sum(0)
    for it in range(iters):
        AP = mv(P); al = rs / np.maximum((P * AP).sum(0), 1e-30)
        X += P * al; R -= AP * al; rn = (R * R).sum(0)
        if np.sqrt(rn.max()) < 1e-6: break
        P = R + P * (rn / rs); rs = rn
    return X, Tp, it
def cos(P, Q):
    P = P / np.linalg.norm(P, axis=1, keepdims=True); Q = Q / np.linalg.norm(Q, axis=1, keepdims=True); return (P * Q).sum(1).mean()
if __name__ != '__main__': pass
elif sys.argv[1] == 'val':
    rng = np.random.default_rng(0); te = rng.random(len(ids)) < 0.1; tr = ~te
    for lam in [float(x) for x in (sys.argv[2] if len(sys.argv) > 2 else '1e-4,1e-3,1e-2').split(',')]:
        X, Tp, it = fit(A[tr], Y[tr], lam)
        print('lam %g iters %d  held-out cos(static, MiniLM): distilled %.4f  tokenlearn %.4f | train %.4f' % (lam, it, cos(A[te] @ Tp, Y[te]), cos(A[te] @ X, Y[te]), cos(A[tr] @ X, Y[tr])), flush=True)
elif sys.argv[1] == 'fit':
    lam = float(sys.argv[2]); X, Tp, it = fit(A, Y, lam)
    print('fit lam %g iters %d train cos %.4f (distilled %.4f)' % (lam, it, cos(A @ X, Y), cos(A @ Tp, Y)))
    np.save(f'{OUT}static_tl{sys.argv[2]}.npy', X.astype(np.float32))
elif sys.argv[1] == 'fitmmlu':   # inductive for GSM8K: corpus = MMLU prompts only -> static_tlm{LAM}.npy
    lam = float(sys.argv[2]); m = np.arange(len(ids)) < 9984; X, Tp, it = fit(A[m], Y[m], lam)
    print('fit(mmlu only) lam %g iters %d; cos on gsm8k prompts (unseen): tokenlearn %.4f distilled %.4f' % (lam, it, cos(A[~m] @ X, Y[~m]), cos(A[~m] @ Tp, Y[~m])))
    np.save(f'{OUT}static_tlm{sys.argv[2]}.npy', X.astype(np.float32))
