# Which dense features the MMLU HGB splits on (gain-weighted), one fit on all rows (descriptive only).
from lib import *
from sklearn.ensemble import HistGradientBoostingRegressor
P, s, w, g = load('mmlu'); X = np.load(OUT + 'dense_mmlu.npy')
names = "ln_chars ln_words ln_lines ln_stem numbers distinct_numbers digit_frac longest_num max_num big_nums math_sym dollar pct fractions decimals number_words time_words unit_words step_words reason_words neg_words qmarks sentences commas mean_word_len upper_frac nonascii_frac n_opts opt_len_mean opt_len_sd opt_len_max numeric_opt_frac statement1 which_of_following NOT_EXCEPT underscore type_token long_words".split()
y = np.zeros(len(s)); 
for grp in np.unique(g):
    m = g == grp; y[m] = (1 + 0.5*(s[m]-w[m]) + 0.5*(s[m]-w[m]).mean()) / 2
m = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.04, max_leaf_nodes=15, min_samples_leaf=40, l2_regularization=1.0, early_stopping=False, random_state=0).fit(X, y)
imp = np.zeros(X.shape[1])
for pr in m._predictors:
    for nd in pr[0].nodes:
        if not nd['is_leaf']: imp[nd['feature_idx']] += nd['gain']
o = np.argsort(-imp)
print(' '.join(f'{names[i]}:{imp[i]/imp.sum():.2f}' for i in o[:12]))
