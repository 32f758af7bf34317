"""Mutations of the meta-learners and their estimator kernels (meta.py, reference/meta.py, _core/meta.pyx)."""
from run import Mutation

T_META = ["tests/test_meta.py", "tests/test_meta_kernels.py"]

MUTATIONS = [
    Mutation("meta-ref-loo-includes-own-return", "metarl_fast/reference/meta.py",
             "b = np.where(others > 0, (sums[slot] - returns) / np.maximum(others, 1.0), 0.0)",
             "b = np.where(others > 0, sums[slot] / (others + 1.0), 0.0)", T_META,
             "the baseline counts the episode's own return: mean (1 - 1/N) x gradient"),
    Mutation("meta-ref-no-gamma-t", "metarl_fast/reference/meta.py",
             "coef_out[...] = gamma ** steps.astype(np.float64) * (returns - b) / n_episodes",
             "coef_out[...] = (returns - b) / n_episodes", T_META, "states not discounted"),
    Mutation("meta-ref-hvp-no-score-term", "metarl_fast/reference/meta.py",
             "    _scatter(key, per_step + score, table_out)", "    _scatter(key, per_step, table_out)", T_META,
             "HVP without the score-function term"),
    Mutation("meta-ref-hvp-control-variate-wrong", "metarl_fast/reference/meta.py",
             "kappa = fv - (fv.sum(axis=1, keepdims=True) - fv) / (n_episodes - 1)",
             "kappa = fv - fv.sum(axis=1, keepdims=True) / n_episodes", T_META,
             "control variate includes the episode itself"),
    Mutation("meta-core-loo-includes-own-return", "metarl_fast/_core/meta.pyx",
             "b = (sums[slot] - returns[i]) / others if others > 0 else 0.0",
             "b = sums[slot] / (others + 1.0) if others > 0 else 0.0", T_META),
    Mutation("meta-core-score-sign", "metarl_fast/_core/meta.pyx",
             "            table_out[key[i], actions[i]] += c\n",
             "            table_out[key[i], actions[i]] -= c\n", T_META),
    Mutation("meta-hessian-shared-by-default", "metarl_fast/meta.py",
             'data_h = datas[k] if hessian_data == "shared" else problem.sample(thetas[k], rng)',
             "data_h = datas[k]", T_META, "HVP on the step's own episodes"),
    Mutation("meta-chain-missing-alpha", "metarl_fast/meta.py",
             "v = v + problem.hvp(thetas[k], data_h, inner_lr * v)",
             "v = v + problem.hvp(thetas[k], data_h, v)", T_META),
]
