"""GSM8K: do sizes of the stored solutions rank prompts by need for the strong model? They are only
known after answering, so this is an oracle bound for a router that would predict them."""
import re, numpy as np
from common_neg import load, metrics
rows, s, w, _ = load('gsm8k')
def nums(t): return len(re.findall(r'\d+(?:\.\d+)?', t))
tie = np.random.RandomState(0).rand(len(rows)) * 1e-3
for name, v in {
    "GPT-4 solution length (chars)": [len(r['strong_response']) for r in rows],
    "GPT-4 solution: '=' signs": [r['strong_response'].count('=') for r in rows],
    "GPT-4 solution: numbers": [nums(r['strong_response']) for r in rows],
    "prompt length (chars), for reference": [len(r['prompt']) for r in rows],
}.items():
    apgr, cpt = metrics(np.array(v, float) + tie, s, w)
    print(f"{name:40s} APGR {apgr:.3f}  CPT(50%) {cpt:.1%}")
