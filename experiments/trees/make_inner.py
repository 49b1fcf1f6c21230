# Writes outer-training-fold files for nested stacking: OUT/inner/{bench}_s{S}_f{f}.jsonl (rows with fold != f,
# original order).
import os
from lib import D, OUT, folds
os.makedirs(f'{OUT}inner', exist_ok=True)
for bench, seeds in [('gsm8k', [1, 2, 3, 4, 5]), ('mmlu', [1, 2, 3])]:
    lines = open(f'{D}{bench}.dev.jsonl').read().rstrip('\n').split('\n')
    for S in seeds:
        fo = folds(len(lines), 5, S)
        for f in range(5):
            with open(f'{OUT}inner/{bench}_s{S}_f{f}.jsonl', 'w') as o:
                for i, l in enumerate(lines):
                    if fo[i] != f:
                        o.write(l + '\n')
