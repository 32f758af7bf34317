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
