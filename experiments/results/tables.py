"""Markdown tables for ROUTING.md from the `router eval --json` outputs that run.sh writes."""
import json, os, statistics as st, sys

out = sys.argv[1] if len(sys.argv) > 1 else 'target/results'
SEEDS = {'mmlu': [1, 2, 3], 'gsm8k': [1, 2, 3, 4, 5], 'mt_bench': [1, 2, 3, 4, 5]}
NAME = {'mmlu': 'mmlu.dev', 'gsm8k': 'gsm8k.dev', 'mt_bench': 'mt_bench'}


def load(p):
    with open(os.path.join(out, p)) as f:
        return json.load(f)


def ms(xs, pct=False, d=3):
    m, s = st.mean(xs), (st.stdev(xs) if len(xs) > 1 else 0.0)
    return f'{m * 100:.1f}% ± {s * 100:.1f}' if pct else f'{m:.{d}f} ± {s:.{d}f}'


def p1(x):
    return 'never' if x is None else f'{x * 100:.1f}%'


def margin(m):
    return f"{m['min_margin']:+.3f} ({m['at_share'] * 100:.0f}%)"


print('#### Cross-validated (5-fold, pooled out-of-fold scores; mean ± sd over seeds)\n')
print('| benchmark | n | seeds | APGR | CPT(50%) | CPT(80%) | PGR@20% | PGR@30% | PGR@50% | beats length rule at 1–89% | tree blend (all folds) |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
runs = {b: [load(f'cv_{b}_s{s}.json') for s in seeds] for b, seeds in SEEDS.items()}
for b, rs in runs.items():
    beats = sum(r['vs_length_rule']['beats_below_90'] for r in rs)
    blends = sorted(w for r in rs for w in r.get('tree_blend', []))
    print(f"| {NAME[b]} | {rs[0]['n']} | {len(rs)} | {ms([r['apgr'] for r in rs])} | {ms([r['cpt50'] for r in rs], True)} "
          f"| {ms([r['cpt80'] for r in rs], True)} | {ms([r['pgr_at_20'] for r in rs])} | {ms([r['pgr_at_30'] for r in rs])} "
          f"| {ms([r['pgr_at_50'] for r in rs])} | {beats}/{len(rs)} seeds | {blends[0]:.1f}–{blends[-1]:.1f} |")
print('\n#### Per seed\n')
print('| benchmark | seed | APGR | CPT(50%) | CPT(80%) | min margin vs length rule (at) | min margin vs length ranking (at) |')
print('|---|---|---|---|---|---|---|')
for b, rs in runs.items():
    for s, r in zip(SEEDS[b], rs):
        print(f"| {NAME[b]} | {s} | {r['apgr']:.4f} | {p1(r['cpt50'])} | {p1(r['cpt80'])} | {margin(r['vs_length_rule'])} | {margin(r['vs_length_curve'])} |")
print('\n#### Train on the other benchmarks, test on this one\n')
print('| test | trained on | APGR | CPT(50%) | CPT(80%) | PGR@20% | PGR@30% | PGR@50% |')
print('|---|---|---|---|---|---|---|---|')
for b in SEEDS:
    r = load(f'transfer_{b}.json')
    on = ' + '.join(os.path.basename(t) for t in r['trained_on'])
    print(f"| {NAME[b]} | {on} | {r['apgr']:.4f} | {p1(r['cpt50'])} | {p1(r['cpt80'])} | {r['pgr_at_20']:.3f} | {r['pgr_at_30']:.3f} | {r['pgr_at_50']:.3f} |")
g = runs['gsm8k']
print('\n#### Prompt routing row of the GSM8K cascade table\n')
print(f"| prompt routing (learned, above) | {ms([r['apgr'] for r in g])} | {ms([r['cpt50'] for r in g], True)} | {ms([r['cpt80'] for r in g], True)} "
      f"| {ms([r['pgr_at_20'] for r in g])} | {ms([r['pgr_at_30'] for r in g])} | {ms([r['pgr_at_50'] for r in g])} | |")
