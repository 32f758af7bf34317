"""``MDPModel``: the exact description of a finite tabular task, shared by tasks, exact DP and tests.

Semantics (one episode): ``s_0 ~ start``; at step ``t = 0 .. horizon-1`` the agent in ``s_t``
takes ``a_t``, receives a reward with mean ``R[s_t, a_t]`` and moves to ``s_{t+1} ~ P[s_t, a_t]``.
The episode ends after ``horizon`` steps, or as soon as ``s_{t+1}`` is a ``terminal`` state (its
reward is not collected).  The return is ``sum_t gamma^t r_t``.
"""
from dataclasses import dataclass, field

import numpy as np

from metarl_fast import _validate


@dataclass(frozen=True)
class MDPModel:
    """Exact model of one finite-horizon tabular task.

    Attributes
    ----------
    P : float64 (S, A, S)   transition probabilities, rows sum to 1
    R : float64 (S, A)      mean reward of taking a in s
    start : float64 (S,)    initial state distribution
    horizon : int           maximum number of steps per episode (>= 1)
    gamma : float           discount in [0, 1]
    terminal : bool (S,)    entering one of these states ends the episode
    """

    P: np.ndarray
    R: np.ndarray
    start: np.ndarray
    horizon: int
    gamma: float = 1.0
    terminal: np.ndarray = field(default=None)

    def __post_init__(self):
        P = np.ascontiguousarray(self.P, dtype=np.float64)
        R = np.ascontiguousarray(self.R, dtype=np.float64)
        start = np.ascontiguousarray(self.start, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2] or P.shape[0] < 1 or P.shape[1] < 1:
            raise ValueError(f"P must have shape (S, A, S), got {P.shape}")
        S, A = P.shape[:2]
        if R.shape != (S, A):
            raise ValueError(f"R must have shape {(S, A)}, got {R.shape}")
        if start.shape != (S,):
            raise ValueError(f"start must have shape {(S,)}, got {start.shape}")
        if not (np.all(np.isfinite(P)) and np.all(np.isfinite(R)) and np.all(np.isfinite(start))):
            raise ValueError("P, R and start must be finite")
        sums = P.sum(axis=2)
        bad = np.argwhere((np.abs(sums - 1.0) > 1e-8) | (P.min(axis=2) < 0))
        if bad.size:
            s, a = bad[0]
            raise ValueError(f"P[{s}, {a}] is not a distribution (sum {sums[s, a]!r}, min {P[s, a].min()!r})")
        if start.min() < 0 or abs(start.sum() - 1.0) > 1e-8:
            raise ValueError(f"start is not a distribution (sum {start.sum()!r})")
        _validate.positive_int(self.horizon, "horizon")
        _validate.finite_float(self.gamma, "gamma", low=0.0, high=1.0)
        terminal = (np.zeros(S, dtype=bool) if self.terminal is None
                    else np.ascontiguousarray(self.terminal, dtype=bool))
        if terminal.shape != (S,):
            raise ValueError(f"terminal must have shape {(S,)}, got {terminal.shape}")
        for name, value in (("P", P), ("R", R), ("start", start), ("terminal", terminal)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "horizon", int(self.horizon))
        object.__setattr__(self, "gamma", float(self.gamma))

    @property
    def n_states(self):
        return self.P.shape[0]

    @property
    def n_actions(self):
        return self.P.shape[1]
