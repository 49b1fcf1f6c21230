"""Per-prompt latency of the static embedding path in Python (single prompt at a time, 1 thread):
tokenize with the MiniLM WordPiece tokenizer (HF tokenizers, Rust) + gather/weighted-mean over a V x D float32 table
+ centre + L2 normalise. Usage: bench_static.py [DIMS]"""
import sys, json, time, numpy as np
from tokenizers import Tokenizer
from common import DATA, OUT
tok = Tokenizer.from_file(OUT + 'pkgs/minilm/model/tokenizer.json'); tok.no_truncation(); tok.no_padding()
D = int(sys.argv[1]) if len(sys.argv) > 1 else 128
T = np.random.default_rng(0).standard_normal((tok.get_vocab_size(), D)).astype(np.float32); mu = T.mean(0)
for name in ['mmlu', 'gsm8k']:
    texts = [json.loads(l)['prompt'] for l in open(f'{DATA}{name}.dev.jsonl')][:2000]
    t0 = time.perf_counter(); ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]; t1 = time.perf_counter()
    for x in ids:
        e = T[x].mean(0) - mu; e /= np.linalg.norm(e)
    t2 = time.perf_counter(); n = len(texts)
    print('%s D=%d: %.1f tokens/prompt, tokenize %.1f us, pool+norm %.1f us, total %.1f us per prompt' % (name, D, np.mean([len(x) for x in ids]), (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, (t2 - t0) / n * 1e6))
