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
     r"n_episodes=1,180,591,620,717,411,303,424: a rollout of n_tasks x n_episodes x horizon"),
])
def test_huge_sizes_are_named_in_one_line(backend, call, error, pattern):
    """Issue 13, class 8: a size beyond what can exist is refused naming the argument, never with
    Python's 'int too large to convert to C long' or NumPy's 'dtype object'."""
    with pytest.raises(error, match=pattern) as info:
        call(np.random.default_rng(0))
    assert "\n" not in str(info.value) and "C long" not in str(info.value)


def _two_tasks(horizon=None):
    return mf.GridNavigation(size=3, **({} if horizon is None else {"horizon": horizon})).sample(2, 0)


@pytest.mark.parametrize("call,pattern", [
    (lambda rng: _buffer_with_one().sample(2**39, rng),
     r"batch_size=549,755,813,888: more than the 268,435,456 \(2\*\*28\) transitions one sample may hold"),
    (lambda rng: mf.TabularCritic(2**40), r"TabularCritic\(n_states=1,099,511,627,776\): its values"),
    (lambda rng: mf.LinearCritic(2**40), r"LinearCritic\(n_features=1,099,511,627,776\): its weights"),
    (lambda rng: mf.rollout(mf.TabularSoftmaxPolicy(9, 5), _two_tasks(10**9), 1, rng),
     r"n_episodes=1: a rollout of n_tasks x n_episodes x horizon = 2 x 1 x 1000000000 steps"),
    (lambda rng: mf.MetaLearner(mf.TabularSoftmaxPolicy(9, 5), "fomaml", inner_steps=10**12,
                                episodes_per_task=1).meta_step(_two_tasks(), rng),
     r"inner_steps=1,000,000,000,000: the inner path"),
    (lambda rng: mf.InContextBanditLearner().fit(2, 3, rng, n_iterations=1, batch_size=10**12),
     r"batch_size=1,000,000,000,000: a batch of batch_size x n_arms arm means"),
    (lambda rng: mf.InContextMDPLearner().fit(mf.TabularMDPs().sample(3, 0), 2, rng, n_iterations=1,
                                              batch_size=10**12),
     r"batch_size=1,000,000,000,000: a batch of batch_size tasks' transition tables"),
    (lambda rng: mf.incontext.run_trials(np.zeros(8), np.full((2, 2), 0.5), 2**30, rng),
     r"n_pulls must be <= 16,777,216"),
])
def test_sizes_beyond_the_table_limit_are_refused_before_any_work(backend, call, pattern):
    """Issue 13, class 3: each size argument is checked against the documented table limit
    (2**28 entries) before anything is allocated or computed (these took minutes, or died in
    NumPy's allocator, or raised SystemError)."""
    with pytest.raises(ValueError, match=pattern):
        call(np.random.default_rng(0))
