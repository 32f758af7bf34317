"""Pure-NumPy reference twins of every compiled kernel: the executable specification.

Each module here mirrors a module of :mod:`metarl_fast._core` with the same function names and
signatures.  With the same :class:`numpy.random.Generator` state both give identical integers
(sampled actions, indices, transitions) and floats equal up to rounding.
"""
from metarl_fast.reference.policy import (  # noqa: F401
    entropy,
    grad_log_prob,
    log_prob,
    log_softmax,
    sample_actions,
    softmax,
)
from metarl_fast.reference import baselines, envs, incontext, incontext_mdp, meta, pg, policy, replay  # noqa: E402,F401
