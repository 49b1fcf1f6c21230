import os, sys, json, re, math, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'embeddings'))
from common import folds, metrics  # noqa: E402  (the CLI's fold split and metrics, exactly)
D = os.environ.get('ROUTELLM_DATA', '../shared/data/routellm').rstrip('/') + '/'
# Outputs and the router's out-of-fold scores (written by run.sh).
OUT = os.environ.get('OUT', 'target/trees').rstrip('/') + '/'
SEEDS = {'mmlu': [1, 2, 3], 'gsm8k': [1, 2, 3, 4, 5]}
def load(b):
    rows = [json.loads(l) for l in open(f'{D}{b}.dev.jsonl')]
    s = np.array([float(r['strong_correct']) for r in rows]); w = np.array([float(r['weak_correct']) for r in rows])
    g = np.array([r.get('subject') or '' for r in rows])
    return [r['prompt'] for r in rows], s, w, g
def oof(b, S):
    p = f'{OUT}{b}_oof_s{S}.jsonl'
    return np.array([json.loads(l)['score'] for l in open(p)], np.float64)
def inner_oof(b, S, f, fold):
    """Shipped router's inner-CV OOF scores on outer training fold f (rows with fold != f, in order)."""
    sc = np.array([json.loads(l)['score'] for l in open(f'{OUT}inner/{b}_s{S}_f{f}.oof.jsonl')])
    out = np.full(len(fold), np.nan); out[fold != f] = sc; return out
def rank01(x):
    from scipy.stats import rankdata
    return (rankdata(x) - 0.5) / len(x)

NUMW = "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty hundred thousand million dozen half third quarter twice triple double".split()
TIMEW = "hour minute second day week month year".split()
UNITW = "mile km meter feet foot inch pound kg gram liter gallon cup cent dollar".split()
STEPW = "if then after before remaining left rest instead until each per every".split()
REASON = "why explain prove derive compare analyze analyse evaluate justify reason step implies therefore because which of the following".split()
NEG = "not no never none except false incorrect least cannot".split()
MATHS = set('+-*/=^<>%√∑∫πθ')
def dense(t):
    lw = t.lower(); words = re.findall(r"[A-Za-z']+", t); toks = lw.split()
    nums = re.findall(r'\d+(?:[.,]\d+)*', t)
    vals = []
    for x in nums:
        try: vals.append(float(x.replace(',', '')))
        except: pass
    lines = t.split('\n')
    opts = [l for l in lines if re.match(r'^[A-D][.)] ', l)]
    stem = '\n'.join(l for l in lines if not re.match(r'^[A-D][.)] ', l) and l.strip() != 'Answer:')
    optlen = [len(o) for o in opts] or [0]
    wc = lambda lst: sum(lw.count(' ' + x) + lw.startswith(x) for x in lst)
    f = [
        math.log1p(len(t)), math.log1p(len(toks)), math.log1p(len(lines)), math.log1p(len(stem)),
        math.log1p(len(nums)), math.log1p(len(set(nums))), sum(c.isdigit() for c in t) / max(1, len(t)),
        math.log1p(max([len(x) for x in nums] or [0])), math.log1p(max(vals or [0])), math.log1p(sum(v >= 100 for v in vals)),
        math.log1p(sum(c in MATHS for c in t)), math.log1p(t.count('$')), math.log1p(t.count('%')),
        math.log1p(len(re.findall(r'\d+/\d+', t))), math.log1p(len(re.findall(r'\d\.\d', t))),
        math.log1p(wc(NUMW)), math.log1p(wc(TIMEW)), math.log1p(wc(UNITW)), math.log1p(wc(STEPW)),
        math.log1p(wc(REASON)), math.log1p(wc(NEG)), math.log1p(t.count('?')),
        math.log1p(len(re.findall(r'[.?!](\s|$)', t))), math.log1p(t.count(',')),
        np.mean([len(x) for x in words]) if words else 0, sum(c.isupper() for c in t) / max(1, len(t)),
        sum(ord(c) > 127 for c in t) / max(1, len(t)),
        len(opts), math.log1p(np.mean(optlen)), math.log1p(np.std(optlen)), math.log1p(max(optlen)),
        sum(bool(re.match(r'^[A-D][.)] [-\d.,$% /]+$', o)) for o in opts) / max(1, len(opts)),
        float('Statement 1' in t), float('which of the following' in lw), float(bool(re.search(r'\b(NOT|EXCEPT|LEAST)\b', t))),
        float('_' in t), math.log1p(len(set(toks)) / max(1, len(toks)) * 10),
        math.log1p(sum(1 for x in toks if len(x) > 10)),
    ]
    return f
def dense_matrix(prompts):
    return np.array([dense(t) for t in prompts], np.float64)
