"""Mutations of the optimizers' Python layer (optim.py): hyper-parameters, step counting, state."""
from run import Mutation

T_OPT = ["tests/test_optim_math.py", "tests/test_optim.py"]
T_OPT_PG = T_OPT + ["tests/test_pg.py", "tests/test_pg_math.py"]
PY = "metarl_fast/optim.py"

MUTATIONS = [
    Mutation("optim-adam-step-number-stale", PY,
             "step_size, bc2 = self._corrections(self.steps + 1)",
             "step_size, bc2 = self._corrections(max(self.steps, 1))", T_OPT,
             "bias corrections of the previous step (t = 1 twice)"),
    Mutation("optim-adam-fused-step-number-stale", PY,
             "self._hyper[4] = self.steps + 1", "self._hyper[4] = max(self.steps, 1)", T_OPT_PG,
             "the fused kernel gets the previous step's t"),
    Mutation("optim-adam-betas-swapped", PY,
             "        self._set_hyper(lr, beta1, beta2, eps)\n",
             "        self._set_hyper(lr, beta2, beta1, eps)\n", T_OPT),
    Mutation("optim-sgd-nesterov-dropped", PY,
             "nesterov = _Hyper(2, lambda value, name: 1.0 if value else 0.0, bool)",
             "nesterov = _Hyper(2, lambda value, name: 0.0, bool)", T_OPT),
    Mutation("optim-zero-state-keeps-steps", PY,
             "        self.state[...] = 0\n        self.steps = 0\n",
             "        self.state[...] = 0\n", T_OPT,
             "zero_state forgets the moments but not the step count (bias corrections)"),
    Mutation("optim-zero-state-keeps-moments", PY,
             "        self.state[...] = 0\n        self.steps = 0\n",
             "        self.steps = 0\n", T_OPT),
    Mutation("optim-state-dict-aliases-state", PY,
             '"state": self.state.copy()}', '"state": self.state}', T_OPT,
             "a state_dict taken earlier changes as the optimizer steps"),
    Mutation("optim-load-state-dict-keeps-steps", PY,
             "        self.state[...] = state\n        self.steps = steps\n",
             "        self.state[...] = state\n", T_OPT),
    Mutation("optim-accepts-read-only-params", PY,
             "if arr.ndim != 1 or not arr.flags.c_contiguous or not arr.flags.writeable:",
             "if arr.ndim != 1 or not arr.flags.c_contiguous:", T_OPT),
    Mutation("optim-load-state-accepts-negative-steps", PY,
             "if steps < 0 or not np.all(np.isfinite(state)):",
             "if not np.all(np.isfinite(state)):", T_OPT),
    Mutation("optim-lr-unchecked", PY,
             "    lr = _Hyper(0, _non_negative)\n    beta1 = _Hyper(1, _beta)\n",
             "    lr = _Hyper(0, lambda value, name: float(value))\n    beta1 = _Hyper(1, _beta)\n",
             T_OPT, "Adam's lr setter no longer validates"),
    Mutation("optim-checkpoint-params-not-restored", PY,
             "        policy.set_params(params)\n", "", T_OPT,
             "load_checkpoint returns a fresh (zero) policy"),
]
