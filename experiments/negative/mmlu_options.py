"""MMLU: features of the answer options and the stem, stacked on the router's out-of-fold score."""
import re, json, math, numpy as np
from common_neg import load, folds, metrics, OUT
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
rows,s,w,g=load('mmlu'); n=len(rows)
def parse(p):
    m=re.split(r'\n(?=[A-D]\. )', p)
    stem=m[0]; opts=[o[3:].replace('\nAnswer:','').strip() for o in m[1:]]
    return stem, opts
def grams(t,k=3):
    t=t.lower(); return set(t[i:i+k] for i in range(max(0,len(t)-k+1)))
def feats(p):
    stem,opts=parse(p)
    G=[grams(o) for o in opts]
    sims=[len(a&b)/max(1,len(a|b)) for i,a in enumerate(G) for b in G[i+1:]]
    L=[len(o) for o in opts] or [0]
    return [max(sims) if sims else 0, np.mean(sims) if sims else 0, math.log1p(max(L)), np.std(L)/(np.mean(L)+1), math.log1p(len(stem)),
            stem.count('\n'), len(re.findall(r'[.?!](\s|$)',stem)), bool(re.search(r'\b(NOT|EXCEPT|LEAST|FALSE)\b',stem)),
            'Statement 1' in stem, sum(bool(re.search(r'\d',o)) for o in opts), sum(o.lower() in ('all of the above','none of the above','both a and b') for o in opts),
            bool(re.search(r'[=+*/^]',stem)), len(re.findall(r'\d+',stem))]
F=np.array([feats(r['prompt']) for r in rows],float)
def logit(p): p=np.clip(p,1e-6,1-1e-6); return np.log(p/(1-p))
for seed in [1,2,3]:
    o=np.array([json.loads(l)['score'] for l in open(f'{OUT}mmlu_oof_s{seed}.jsonl')])
    f=folds(n,5,seed+10); out=np.zeros(n); out2=np.zeros(n)
    y=(1+s-w)/2
    for k in range(5):
        tr=f!=k; te=f==k
        for X,dst in [(np.c_[logit(o)], out),(np.c_[logit(o),F],out2)]:
            sc=StandardScaler().fit(X[tr]); Xt=sc.transform(X[tr])
            XX=np.r_[Xt,Xt]; yy=np.r_[np.ones(tr.sum()),np.zeros(tr.sum())]; ww=np.r_[y[tr],1-y[tr]]
            m=LogisticRegression(C=1,max_iter=2000).fit(XX,yy,sample_weight=ww); dst[te]=m.predict_proba(sc.transform(X[te]))[:,1]
    fmt=lambda m: f'APGR {m[0]:.4f} CPT(50%) {m[1]:.1%}'
    print(f'seed {seed}: router {fmt(metrics(o,s,w))} | restacked alone {fmt(metrics(out,s,w))} | + 13 features {fmt(metrics(out2,s,w))}')
