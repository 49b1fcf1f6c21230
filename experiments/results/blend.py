"""Fixed tree weights over out-of-fold scores: APGR and CPT(50%) of (1 - a) * heads + a * trees.

usage: blend.py BENCH SEEDS DIR
DIR holds heads_s{seed}.jsonl and trees_s{seed}.jsonl from `router eval --cv 5 --seed S --tree-blend 0|1
--scores-out ...` (the trees-only scores are clamped to [0, 1], as the scorer clamps its blend).
Prints one Markdown row per benchmark: the seed means at weights 0, 0.1, ..., 0.6 and 1."""
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'embeddings'))
from common import metrics  # noqa: E402  (the CLI's metrics, exactly)

bench, seeds, d = sys.argv[1], [int(x) for x in sys.argv[2].split(',')], sys.argv[3]
data = os.environ.get('ROUTELLM_DATA', '../shared/data/routellm').rstrip('/')
name = {'mmlu': 'mmlu.dev', 'gsm8k': 'gsm8k.dev', 'mt_bench': 'mt_bench'}[bench]
rows = [json.loads(line) for line in open(f'{data}/{name}.jsonl')]
s = np.array([float(r['strong_correct']) for r in rows])
w = np.array([float(r['weak_correct']) for r in rows])


def scores(kind, seed):
    return np.array([json.loads(line)['score'] for line in open(f'{d}/{kind}_s{seed}.jsonl')], np.float64)


weights = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]
cells = []
for a in weights:
    m = np.array([metrics((1 - a) * scores('heads', S) + a * scores('trees', S), s, w)[:2] for S in seeds], np.float64)
    cells.append('%.3f / %.1f%%' % (m[:, 0].mean(), 100 * m[:, 1].mean()))
print(f'| {name} APGR / CPT(50%) | ' + ' | '.join(cells) + ' |')
