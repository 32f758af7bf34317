"""Mutations of the bandit baselines (reference/baselines.py, _core/baselines.pyx, baselines.py)."""
from run import Mutation

T_BL = ["tests/test_baselines_math.py", "tests/test_baselines.py", "tests/test_bayes_optimal.py"]
REF = "metarl_fast/reference/baselines.py"
CORE = "metarl_fast/_core/baselines.pyx"
PY = "metarl_fast/baselines.py"

MUTATIONS = [
    # ---------------------------------------------------------------- the reference (numpy only)
    Mutation("baselines-ref-ucb-log-t-plus-one", REF,
             "math.log(max(t, 1))", "math.log(t + 1)", T_BL,
             "ln(t + 1) instead of ln(t) pulls made so far"),
    Mutation("baselines-ref-ucb-untried-not-first", REF,
             "        scores[counts == 0] = np.inf\n", "        scores[counts == 0] = 0.0\n", T_BL),
    Mutation("baselines-ref-greedy-empirical-mean", REF,
             "    scores = (successes + 1.0) / (successes + failures + 2.0)\n",
             "    scores = (successes + 1.0) / (successes + failures + 1.0)\n", T_BL,
             "not the Beta(1, 1) posterior mean"),
    Mutation("baselines-ref-ties-first-max", REF,
             "pick = np.minimum((u * n_ties).astype(np.int64), n_ties - 1)",
             "pick = np.zeros_like(n_ties)", T_BL, "ties always go to the first maximal arm"),
    Mutation("baselines-ref-epsilon-inverted", REF,
             "explore = rng.random(n_tasks) < parameter", "explore = rng.random(n_tasks) > parameter",
             T_BL),
    Mutation("baselines-ref-thompson-swapped", REF,
             "rng.beta(successes + 1.0, failures + 1.0)", "rng.beta(failures + 1.0, successes + 1.0)",
             T_BL),
    Mutation("baselines-ref-failures-count-pulls", REF,
             "failures[rows, arms] += 1.0 - rewards", "failures[rows, arms] += 1.0", T_BL,
             "failures counted as pulls"),
    Mutation("baselines-ref-random-skips-last-arm", REF,
             "return np.minimum((rng.random(n_tasks) * n_arms).astype(np.int64), n_arms - 1)",
             "return np.minimum((rng.random(n_tasks) * (n_arms - 1)).astype(np.int64), n_arms - 1)",
             T_BL),
    Mutation("baselines-ref-explore-picks-greedy", REF,
             "        scores[explore] = 0.0  # every arm ties: the tie-break uniform picks floor(u K)\n",
             "", T_BL, "exploring does nothing: epsilon-greedy is greedy"),
    # ---------------------------------------------------------------- the Cython kernel
    Mutation("baselines-core-ucb-log-t-plus-one", CORE,
             "bonus_log = log(<double> (t if t > 1 else 1))", "bonus_log = log(<double> (t + 1))",
             T_BL),
    Mutation("baselines-core-ties-first-max", CORE,
             "    pick = <intp_t> (u * n_ties)\n", "    pick = 0\n", T_BL),
    Mutation("baselines-core-ucb-untried-nan", CORE,
             "scores[a] = INFINITY if c == 0.0 else s / c + parameter * sqrt(bonus_log / c)",
             "scores[a] = s / c + parameter * sqrt(bonus_log / c)", T_BL,
             "untried arms score 0/0 = NaN"),
    Mutation("baselines-core-epsilon-inverted", CORE,
             "explore[i] = next_uniform(bitgen) < parameter", "explore[i] = next_uniform(bitgen) > parameter",
             T_BL),
    Mutation("baselines-core-thompson-swapped", CORE,
             "x = random_beta(bitgen, successes[i * n_arms + a] + 1.0,\n"
             "                                    failures[i * n_arms + a] + 1.0)",
             "x = random_beta(bitgen, failures[i * n_arms + a] + 1.0,\n"
             "                                    successes[i * n_arms + a] + 1.0)", T_BL),
    Mutation("baselines-core-reward-arm-without-task-offset", CORE,
             "            arm = i * n_arms + arms[i]\n", "            arm = arms[i]\n", T_BL,
             "every task reads task 0's arm means and counts"),
    Mutation("baselines-core-random-skips-last-arm", CORE,
             "arm = <intp_t> (next_uniform(bitgen) * n_arms)",
             "arm = <intp_t> (next_uniform(bitgen) * (n_arms - 1))", T_BL),
    Mutation("baselines-core-greedy-empirical-mean", CORE,
             "scores[a] = (s + 1.0) / (c + 2.0)", "scores[a] = (s + 1.0) / (c + 1.0)", T_BL),
    # ---------------------------------------------------------------- baselines.py
    Mutation("baselines-bayes-wrong-posterior", REF,
             "            p = (s + 1) / (s + f + 2)\n", "            p = (s + 1) / (s + f + 1)\n",
             T_BL),
    Mutation("baselines-bayes-last-pull-first-arm", REF,
             "return max((s + 1) / (s + f + 2) for s, f in state)",
             "return (state[0][0] + 1) / (state[0][0] + state[0][1] + 2)", T_BL,
             "the last pull takes the first arm instead of the best one"),
    Mutation("baselines-bayes-unsorted-belief-states", REF,
             "            win = tuple(sorted(rest + ((s + 1, f),)))\n"
             "            loss = tuple(sorted(rest + ((s, f + 1),)))\n",
             "            win = tuple(rest + ((s + 1, f),))\n"
             "            loss = tuple(rest + ((s, f + 1),))\n", T_BL,
             equivalent="belief states are only keys of the memo: unsorted tuples are still exact "
                        "states (the value of a state does not depend on the order of its arms), "
                        "so only the memo's hit rate -- the speed -- changes, not any value; "
                        "the identical-arm skip still compares neighbours of the same tuple"),
    Mutation("baselines-ci-ddof0", PY,
             "float(z * x.std(ddof=1) / math.sqrt(x.shape[0]))",
             "float(z * x.std() / math.sqrt(x.shape[0]))", T_BL),
    Mutation("baselines-ci-one-sided-z", PY,
             "z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)",
             "z = statistics.NormalDist().inv_cdf(level)", T_BL),
    Mutation("baselines-compare-fresh-tasks-per-agent", PY,
             "    results = {name: mean_confidence_interval(agent.run_trials(arm_means, n_pulls, rng), level)\n",
             "    results = {name: mean_confidence_interval(agent.run_trials(sample_arm_means(n_trials, n_arms, rng), n_pulls, rng), level)\n",
             T_BL, "every agent on its own tasks"),
    Mutation("baselines-oracle-max-over-starts", PY,
             "    return float(mdp.start @ V[0])\n", "    return float(V[0].max())\n", T_BL),
    Mutation("baselines-ucb1-default-c-2", PY,
             "def __init__(self, c=math.sqrt(2.0)):", "def __init__(self, c=2.0):", T_BL),
    # ---------------------------------------------------------------- compiled Bayes-optimal DP
    Mutation("baselines-core-bayes-posterior", CORE,
             "p = <double> (s + 1) / <double> (w + 2)", "p = <double> (s + 1) / <double> (w + 1)", T_BL),
    Mutation("baselines-core-bayes-successors-swapped", CORE,
             "q = p * (1.0 + bayes_next(c, i, w1 + s + 1)) + (1.0 - p) * bayes_next(c, i, w1 + s)",
             "q = p * (1.0 + bayes_next(c, i, w1 + s)) + (1.0 - p) * bayes_next(c, i, w1 + s + 1)", T_BL,
             "a success moves the belief as a failure would"),
    Mutation("baselines-core-bayes-skips-distinct-arms", CORE,
             "        if a == prev:  # identical arms have identical values", "        if a >= prev:", T_BL,
             "only the first arm of a state is considered"),
    Mutation("baselines-core-bayes-last-pull-not-greedy", CORE,
             "q = p\n", "q = 0.0\n", T_BL, "the last pull earns nothing"),
]
