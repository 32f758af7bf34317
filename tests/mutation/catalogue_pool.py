"""Mutations of the meta-learners' replay pool (pool.py) and its estimator (meta.py)."""
from run import Mutation

T_POOL = ["tests/test_pool.py"]
POOL = "metarl_fast/pool.py"
META = "metarl_fast/meta.py"

MUTATIONS = [
    Mutation("pool-meta-importance-weights-ignored", META,
             "    c = np.exp(cum - np.repeat(cum[first] - log_rho[first], lengths))  # prod_{k <= t} rho_k\n",
             "    c = np.ones_like(cum)\n", T_POOL,
             "replayed episodes enter as if they were on-policy"),
    Mutation("pool-meta-single-decision-ratio", META,
             "    c = np.exp(cum - np.repeat(cum[first] - log_rho[first], lengths))  # prod_{k <= t} rho_k\n",
             "    c = np.exp(log_rho)\n", T_POOL,
             "each reward weighted by its own step's ratio, not the product up to it"),
    Mutation("pool-meta-fresh-not-rescaled", META,
             'coef = np.concatenate([coef * replay["fresh_scale"], replay["coef"]])',
             'coef = np.concatenate([coef, replay["coef"]])', T_POOL,
             "the fresh episodes keep their 1/N weight: the task's estimate is no longer a mean"),
    Mutation("pool-meta-returns-not-weighted", META,
             "is_returns = discounted_returns(c * batch.reward, last, gamma)",
             "is_returns = c * discounted_returns(batch.reward, last, gamma)", T_POOL,
             "the return-to-go weighted by the ratio product at its first step only"),
    Mutation("pool-replays-this-iteration", POOL,
             "usable = eps[eps[:, 3] < self.iteration]", "usable = eps[eps[:, 3] <= self.iteration]", T_POOL,
             "episodes of this meta-iteration are replayed within it"),
    Mutation("pool-ids-never-given-back", POOL,
             "            heapq.heappush(self._free, task_id)\n", "            pass\n", T_POOL,
             "ids of forgotten tasks are not reused: the per-task table grows without bound"),
    Mutation("pool-checkpoint-drops-episodes", POOL,
             '        d["pool_episodes"] = self._episodes.copy()\n',
             '        d["pool_episodes"] = self._episodes[:0].copy()\n', T_POOL,
             "a resumed run has forgotten which stored steps form which episode"),
    Mutation("pool-sequences-not-consecutive", POOL,
             "                      + np.arange(per_task.sum()))\n",
             "                      + np.arange(per_task.sum())[::-1])\n", T_POOL,
             "'sequences' replays episodes out of time order"),
    Mutation("pool-meta-ratio-updates-skipped", META,
             "                self._update(extra, None, saved)\n", "                pass\n", T_POOL,
             "the replay ratio's extra updates are computed and dropped"),
    Mutation("pool-sample-tasks-only-current", POOL,
             "        held = np.unique(eps[eps[:, 3] < self.iteration, 0])\n",
             "        held = np.unique(eps[eps[:, 3] < 0, 0])\n", T_POOL,
             "replay-only updates find no task"),
]
