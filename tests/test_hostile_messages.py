"""Issue 13, error messages: a missing array (None) is named as such, never as NumPy's 'dtype object'."""
import numpy as np
import pytest

import metarl_fast as mf


@pytest.mark.parametrize("call,name", [
    (lambda rng: mf.sample_actions(None, rng), "logits"),
    (lambda rng: mf.softmax(None), "logits"),
    (lambda rng: mf.TabularSoftmaxPolicy(3, 2).log_prob(None, np.zeros(2, dtype=np.int64)), "obs"),
])
def test_none_is_named_as_none(backend, call, name):
    with pytest.raises(TypeError, match=f"{name} must be .* got None"):
        call(np.random.default_rng(0))


def _buffer_with_one():
    buf = mf.ReplayBuffer(4)
    buf.add(0, 0, 1.0, 0, False)
    return buf


@pytest.mark.parametrize("call,error,pattern", [
    (lambda rng: mf.ReplayBuffer(4).add(0, 0, 1.0, 0, False, task_id=2**70), ValueError,
     r"task_id must be in \[0, 1048576\), got 1180591620717411303424"),
    (lambda rng: _buffer_with_one().sample_sequences(1, 2**70, rng), ValueError,
     r"length=1180591620717411303424 is longer than any episode the buffer can hold \(capacity 4\)"),
    (lambda rng: mf.VecEnv(mf.Chain().sample(2, 0), 2**70), ValueError,
     r"VecEnv\(n_envs_per_task=1180591620717411303424\) of 2 tasks would hold"),
    (lambda rng: mf.rollout(mf.TabularSoftmaxPolicy(4, 2), mf.Chain().sample(2, 0), 2**70, rng), ValueError,
     r"n_episodes=1180591620717411303424: a rollout of n_tasks x n_episodes x horizon"),
])
def test_huge_sizes_are_named_in_one_line(backend, call, error, pattern):
    """Issue 13, class 8: a size beyond what can exist is refused naming the argument, never with
    Python's 'int too large to convert to C long' or NumPy's 'dtype object'."""
    with pytest.raises(error, match=pattern) as info:
        call(np.random.default_rng(0))
    assert "\n" not in str(info.value) and "C long" not in str(info.value)
