"""Mutations of the trainer (trainer.py): evaluation protocol, baselines, seeds, cadence, resume, run files."""
from run import Mutation

P = "metarl_fast/trainer.py"
MEANING = "tests/test_trainer_meaning.py"
FAILURES = "tests/test_checkpoint_failures.py"
T = [MEANING]
T_ALL = [MEANING, FAILURES]

MUTATIONS = [
    # -- the evaluation protocol: what eval.json's numbers mean
    Mutation("trainer-eval-rng-wrong-key", P,
             "        rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))\n"
             "        theta = np.broadcast_to(",
             "        rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(0,)))\n"
             "        theta = np.broadcast_to(", T,
             "adaptation episodes drawn from the test tasks' own key (0,) instead of the documented (1,)"),
    Mutation("trainer-eval-rng-shared-across-rows", P,
             "    workspaces = meta.RolloutWorkspaces()\n\n"
             "    def adapted(name, init):\n"
             "        sampled = meta.SampledPolicyProblem(probe, test_tasks, config.episodes_per_task, config.gamma,\n"
             "                                            advantage=config.inner_estimator, baseline=config.baseline,\n"
             "                                            normalize_returns=config.normalize_returns,\n"
             "                                            workspaces=workspaces)\n"
             "        rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))\n",
             "    workspaces = meta.RolloutWorkspaces()\n"
             "    shared_rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))\n\n"
             "    def adapted(name, init):\n"
             "        sampled = meta.SampledPolicyProblem(probe, test_tasks, config.episodes_per_task, config.gamma,\n"
             "                                            advantage=config.inner_estimator, baseline=config.baseline,\n"
             "                                            normalize_returns=config.normalize_returns,\n"
             "                                            workspaces=workspaces)\n"
             "        rng = shared_rng\n", T,
             "one generator for every row: the baselines adapt on other episodes than the meta-learned row"),
    Mutation("trainer-eval-step-without-inner-lr", P,
             "theta = theta + config.inner_lr * sampled.grad(theta, data)\n            steps.append(evaluator.value(theta))",
             "theta = theta + sampled.grad(theta, data)\n            steps.append(evaluator.value(theta))", T,
             "adaptation step size ignored"),
    Mutation("trainer-continuous-eval-step-without-inner-lr", P,
             "theta = theta + config.inner_lr * sampled.grad(theta, data)\n            steps.append(measured(theta, measure_rng))",
             "theta = theta + sampled.grad(theta, data)\n            steps.append(measured(theta, measure_rng))",
             ["tests/test_trainer_continuous.py"], "continuous tasks: adaptation step size ignored"),
    Mutation("trainer-eval-value-before-step", P,
             "            theta = theta + config.inner_lr * sampled.grad(theta, data)\n"
             "            steps.append(evaluator.value(theta))\n",
             "            steps.append(evaluator.value(theta))\n"
             "            theta = theta + config.inner_lr * sampled.grad(theta, data)\n", T,
             "off by one: the value recorded before each step (the last step never evaluated)"),
    Mutation("trainer-eval-no-step-0", P,
             "        steps = [evaluator.value(theta)]", "        steps = []", T,
             "after_steps loses the before-adaptation entry"),
    Mutation("trainer-eval-headline-before-adaptation", P,
             'steps.append(evaluator.value(theta))\n        rows[name] = {"after_steps": [mean_ci(v) for v in steps], **mean_ci(steps[-1])}',
             'steps.append(evaluator.value(theta))\n        rows[name] = {"after_steps": [mean_ci(v) for v in steps], **mean_ci(steps[0])}', T,
             "the headline is the pre-adaptation return"),
    Mutation("trainer-continuous-eval-headline-before-adaptation", P,
             'steps.append(measured(theta, measure_rng))\n        rows[name] = {"after_steps": [mean_ci(v) for v in steps], **mean_ci(steps[-1])}',
             'steps.append(measured(theta, measure_rng))\n        rows[name] = {"after_steps": [mean_ci(v) for v in steps], **mean_ci(steps[0])}',
             ["tests/test_trainer_continuous.py"], "continuous tasks: the headline is the pre-adaptation return"),
    Mutation("trainer-eval-baseline-not-passed", P,
             "advantage=config.inner_estimator, baseline=config.baseline,\n",
             "advantage=config.inner_estimator,\n", T,
             "evaluation adapts with the default leave-one-out baseline whatever the run's --baseline"),
    Mutation("trainer-eval-inner-estimator-not-passed", P,
             "config.gamma,\n                                            advantage=config.inner_estimator,",
             "config.gamma,\n                                            advantage=\"reinforce\",", T,
             "evaluation adapts with REINFORCE whatever the run's --inner-estimator"),
    Mutation("trainer-random-row-is-meta-learned", P,
             "random_value = evaluator.value(np.zeros((test_tasks.n_tasks, probe.n_params)))",
             "random_value = evaluator.value(np.broadcast_to(np.asarray(params, dtype=np.float64), "
             "(test_tasks.n_tasks, probe.n_params)))", T, "'random policy' is the unadapted meta-learned policy"),
    Mutation("trainer-multitask-row-adapts-meta-params", P,
             'adapted("multi-task pre-trained", multitask_params)\n        rows["oracle',
             'adapted("multi-task pre-trained", params)\n        rows["oracle', T,
             "baselines swapped: the multi-task row adapts the meta-learned parameters"),
    Mutation("trainer-continuous-multitask-row-adapts-meta-params", P,
             'adapted("multi-task pre-trained", multitask_params)\n    return {"n_tasks"',
             'adapted("multi-task pre-trained", params)\n    return {"n_tasks"',
             ["tests/test_trainer_continuous.py"], "continuous tasks: the multi-task row adapts the meta-learned parameters"),
    Mutation("trainer-oracle-undiscounted", "metarl_fast/meta.py",
             "V = (self.R + self.gamma * self._expected_next(V)).max(axis=2)",
             "V = (self.R + self._expected_next(V)).max(axis=2)", T, "oracle ignores gamma"),
    Mutation("trainer-oracle-one-step-short", "metarl_fast/meta.py",
             "        for _ in range(self.horizon):\n            V = (self.R",
             "        for _ in range(self.horizon - 1):\n            V = (self.R", T,
             "oracle's backward induction stops a step early (V[1] instead of V[0])"),
    Mutation("trainer-mean-ci-population-std", P,
             "std = float(values.std(ddof=1)) if values.size > 1 else 0.0",
             "std = float(values.std()) if values.size > 1 else 0.0", T, "ddof=0 standard deviation"),
    Mutation("trainer-test-tasks-wrong-key", P,
             "np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(0,))))",
             "np.random.default_rng(np.random.SeedSequence(config.eval_seed)))", T,
             "held-out tasks from the root seed sequence instead of its key (0,)"),
    # -- training seeds and cadence
    Mutation("trainer-iteration-rng-off-by-one", P,
             "ss = np.random.SeedSequence(seed, spawn_key=(iteration,))",
             "ss = np.random.SeedSequence(seed, spawn_key=(iteration + 1,))", T,
             "iteration i uses iteration i+1's generators"),
    Mutation("trainer-multitask-shares-episodes-rng", P,
             "self.multitask.meta_step(batch, np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(it, 2))))",
             "self.multitask.meta_step(batch, episodes_rng)", T,
             "the multi-task baseline draws from the meta-learner's episode generator"),
    Mutation("trainer-eval-cadence-off-by-one", P,
             "if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:",
             "if it % cfg.eval_every == 0 or self.iteration == cfg.iterations:", T,
             "evaluates after iterations 1, eval_every + 1, ..."),
    Mutation("trainer-no-final-evaluation-line", P,
             "if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:",
             "if self.iteration % cfg.eval_every == 0:", T, "last metrics line lacks the held-out return"),
    Mutation("trainer-checkpoint-cadence-off-by-one", P,
             "if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations:",
             "if it % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations:", T),
    Mutation("trainer-no-checkpoint-when-stopped-early", P,
             "            if saved_at != self.iteration:  # stopped early between checkpoints (never twice the same)\n"
             "                self.save_checkpoint()\n",
             "            pass\n", T, "interrupt / target / time budget between checkpoints: the state is lost"),
    Mutation("trainer-checkpoint-written-twice", P,
             "            if saved_at != self.iteration:  # stopped early",
             "            if True:  # stopped early", T, "the old behaviour: the final checkpoint written again"),
    # -- resume
    Mutation("trainer-resume-skips-multitask", P,
             "            if self.multitask is not None:\n                self.multitask.load_state_dict(",
             "            if False:\n                self.multitask.load_state_dict(", T,
             "the multi-task baseline restarts from scratch on resume"),
    Mutation("trainer-checkpoint-without-multitask", P,
             "        if self.multitask is not None:\n            for key, value in self.multitask.state_dict().items():",
             "        if False:\n            for key, value in self.multitask.state_dict().items():", T_ALL,
             "the multi-task baseline's state is not saved"),
    Mutation("trainer-resume-iteration-not-restored", P,
             '            self.iteration = io.integer(arrays["iteration"], "iteration")\n', "", T,
             "resume restarts the iteration count (and seeds) at 0"),
    Mutation("trainer-truncate-drops-checkpoint-line", P,
             "            if iteration <= last_iteration:", "            if iteration < last_iteration:", T,
             "truncate_log keeps one line too few"),
    Mutation("trainer-resume-no-truncate", P,
             "                self._truncate_log(name, self.iteration)\n", "                pass\n", T,
             "lines written after the checkpoint are kept and written again"),
    Mutation("trainer-truncate-in-place", P,
             "        _write_atomic(path, lambda fh: fh.writelines(kept))",
             '        open(path, "w").writelines(kept)', [FAILURES],
             "the old behaviour: logs rewritten in place, a Ctrl-C while resuming loses the kept lines"),
    Mutation("trainer-incontext-resume-no-optimizer", P,
             '        self.optimizer.load_state_dict({k[4:]: v for k, v in d.items() if k.startswith("opt_")})\n'
             "        self.params[...] = params\n",
             "        self.params[...] = params\n", T, "in-context learner: Adam's moments not restored"),
    Mutation("trainer-read-checkpoint-any-version", P,
             "versions={CHECKPOINT_VERSION})", "versions={CHECKPOINT_VERSION, CHECKPOINT_VERSION + 1})",
             [FAILURES], "a future checkpoint format is read as this one"),
    # -- the in-context evaluations
    Mutation("trainer-bandits-learner-other-rng", P,
             "mean_ci(run_trials(weights, arm_means, n_pulls, rng()))",
             "mean_ci(run_trials(weights, arm_means, n_pulls, np.random.default_rng(config.eval_seed)))", T,
             "the in-context learner plays on other draws than the baselines"),
    Mutation("trainer-incontext-mdp-random-uses-weights", P,
             "run_trials(zeros, test_tasks, E, rng())", "run_trials(weights, test_tasks, E, rng())", T),
    # -- held-out goals and compare
    Mutation("trainer-goal-split-swapped", P,
             "return goals[~withheld], goals[withheld]", "return goals[withheld], goals[~withheld]", T),
    Mutation("trainer-goal-split-iteration-key", P,
             "rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2**30,)))",
             "rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0,)))", T,
             "the split drawn from iteration 0's seed sequence, not the documented key 2**30"),
    Mutation("trainer-compare-before-after-swapped", P,
             'return r[0]["mean"], r[-1]["mean"]', 'return r[-1]["mean"], r[0]["mean"]', T),
    Mutation("trainer-compare-scratch-before-adaptation", P,
             'scratch = [steps(r, "from scratch")[1] for r in runs]',
             'scratch = [steps(r, "from scratch")[0] for r in runs]', T,
             "paired difference against the unadapted from-scratch learner"),
    # -- eval.json written atomically
    Mutation("trainer-json-no-cleanup", P, "            os.unlink(tmp)\n", "            pass\n", [FAILURES],
             "a failed eval.json write leaves eval.json.tmp"),
    Mutation("trainer-json-no-fsync", P, "            os.fsync(fh.fileno())\n", "", [FAILURES],
             "eval.json renamed before its data is on disk"),
    Mutation("trainer-json-not-atomic", P, 'tmp = path + ".tmp"', "tmp = path", [FAILURES],
             "written in place: a failure leaves a torn eval.json"),
    Mutation("trainer-torn-last-line-fails-resume", P, "                if number == len(lines):", "                if False:",
             [FAILURES], "a line torn by a crash makes --resume fail with a JSON error"),
    Mutation("trainer-damaged-middle-line-dropped", P, "                    break\n                raise io.CheckpointError",
             "                    break\n                continue\n                raise io.CheckpointError", [FAILURES],
             "a damaged line in the middle of the log is silently dropped"),
    Mutation("trainer-checkpoint-settings-not-compared", P, "        if differ:\n", "        if False:\n",
             ["tests/test_trainer_cli.py", "-k", "resume_takes"], "a checkpoint loads into a trainer with other settings"),
    # -- Ctrl-C during a long iteration
    Mutation("trainer-ctrl-c-grace-never-ends", P,
             "            signal.setitimer(signal.ITIMER_REAL, self.STOP_GRACE_S)\n",
             "            pass\n", ["tests/test_interrupts.py"],
             "a long iteration always runs to its end after Ctrl-C"),
    Mutation("trainer-ctrl-c-second-press-ignored", P,
             "        if self._stop and self._in_iteration:  # a second Ctrl-C\n",
             "        if False:  # a second Ctrl-C\n", ["tests/test_interrupts.py"],
             "a second Ctrl-C waits for the grace period"),
]
