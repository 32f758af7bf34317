"""Mutations of bring-your-own tasks, return normalisation and the no-signal warning (issue 14)."""
from run import Mutation

SPECS = "metarl_fast/task_specs.py"
META = "metarl_fast/meta.py"
TRAINER = "metarl_fast/trainer.py"
TASKS = "metarl_fast/tasks.py"
REPLAY = "metarl_fast/reference/replay.py"
T = ["tests/test_task_specs.py"]

MUTATIONS = [
    Mutation("normalize-returns-ignored", META,
             "            rewards = rewards * return_scales(traj.episode_return)[traj.task_id]\n",
             "            pass\n", T,
             "--normalize-returns accepted but the rewards are used as they are"),
    Mutation("return-scales-variance-not-std", META,
             "    std = episode_returns.std(axis=1)\n",
             "    std = episode_returns.var(axis=1)\n", T,
             "each task's rewards divided by the variance of its returns instead of the standard deviation"),
    Mutation("no-signal-warning-never-given", TRAINER,
             "        if stats[\"direction_norm\"] >= self.NO_SIGNAL_NORM:\n",
             "        if True:\n", T,
             "a run whose meta-updates are all ~0 says nothing"),
    Mutation("signal-warning-repeated", TRAINER,
             "        if self.signal_warning is not None:\n            return\n        cfg = self.config\n",
             "        cfg = self.config\n", T,
             "the warning repeated on every later iteration instead of once"),
    Mutation("harmful-step-never-warned", TRAINER,
             "                    and gains.mean() + 3.0 * gains.std(ddof=1) / math.sqrt(gains.size) < 0):\n",
             "                    and gains.mean() + 3.0 * gains.std(ddof=1) / math.sqrt(gains.size) < -1e300):\n", T,
             "adaptation that lowers the return says nothing"),
    Mutation("harmful-step-warned-on-noise", TRAINER,
             "                    and gains.mean() + 3.0 * gains.std(ddof=1) / math.sqrt(gains.size) < 0):\n",
             "                    and gains.mean() < 0):\n", T,
             "a mean gain below zero by noise alone warns"),
    Mutation("harmful-step-warned-when-it-helps", TRAINER,
             "                    and gains.mean() + 3.0 * gains.std(ddof=1) / math.sqrt(gains.size) < 0):\n",
             "                    and gains.mean() - 3.0 * gains.std(ddof=1) / math.sqrt(gains.size) > 0):\n", T,
             "the warning fires on healthy runs, whose inner step raises the return"),
    Mutation("tasks-file-one-task-not-wrapped", TASKS,
             "        if table.ndim == (3 if next_state is None else 2):  # one task\n",
             "        if False:  # one task\n", T,
             "a tasks file holding one task's (S, A, S) arrays is refused"),
    Mutation("module-tasks-kwargs-dropped", SPECS,
             "    dist = obj(**kwargs)\n",
             "    dist = obj()\n", T,
             "--env-kwargs silently ignored for a MODULE:function"),
    Mutation("replay-task-ids-not-widened", REPLAY,
             "    return tuple(arr[indices].astype(np.int64) if f == FIELDS.index(\"task_id\") else arr[indices]\n",
             "    return tuple(arr[indices] if f == FIELDS.index(\"task_id\") else arr[indices]\n",
             ["tests/test_api_names.py"],
             "replayed batches give int32 task ids while the rest of the API gives int64 (numpy backend)"),
]

# reused rollout outputs (issue 21, part): the reference twin on its own (numpy backend)
ENVS_REF = "metarl_fast/reference/envs.py"
T_WS = ["tests/test_rollout_workspace.py"]
MUTATIONS += [
    Mutation("workspace-episode-lengths-not-zeroed", ENVS_REF,
             "        length[...] = 0\n",
             "        pass\n", T_WS,
             "a reused workspace keeps the previous call's episode lengths"),
    Mutation("workspace-returns-not-zeroed", ENVS_REF,
             "        ret[...] = 0.0\n",
             "        pass\n", T_WS,
             "a reused workspace adds this call's rewards to the previous call's episode returns"),
    Mutation("workspace-size-not-checked", ENVS_REF,
             "        if arr.shape[0] < need:\n",
             "        if False:\n", T_WS,
             "an out array too small for the rollout is accepted (writes past its end)"),
]

# the meta-learners' reused rollout memory
MUTATIONS += [
    Mutation("workspaces-never-rewound", "metarl_fast/meta.py",
             "        if self.workspaces is not None:\n            self.workspaces.begin()\n",
             "", T_WS,
             "every meta-iteration allocates new workspaces and keeps the old ones (memory grows)"),
    Mutation("workspaces-shared-within-an-iteration", "metarl_fast/meta.py",
             "        self._used += 1\n",
             "", T_WS,
             "every rollout of an iteration writes into one workspace: MAML's inner-path data overwritten"),
]
