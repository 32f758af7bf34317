"""The fast path of mlp_logits / mlp_act (issue 16): params are not scanned for NaN/inf up front,
the kernel checks row 0's pre-activations instead.  A non-finite parameter anywhere, even one whose
sum a saturated tanh or a relu would hide, must still raise the named error and draw nothing; finite
sums that overflow in a hidden layer must still give the reference's (saturated) results."""
import numpy as np
import pytest

from metarl_fast import _backend
from metarl_fast.reference import mlp as ref

from conftest import BACKENDS

HIDDEN = (5, 3)


@pytest.fixture(params=BACKENDS)
def kern(request):
    """The mlp kernel module of each backend."""
    with _backend.use_backend(request.param):
        yield _backend.active.mlp


def _problem(dtype=np.float64, n_rows=3):
    rng = np.random.default_rng(5)
    params = ref.mlp_init(2, HIDDEN, 2, rng, dtype=dtype)
    obs = rng.normal(size=(n_rows, 2)).astype(dtype)
    return params, obs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_non_finite_parameter_is_refused(kern, dtype, act, bad):
    params, obs = _problem(dtype)
    # obs so large that every first-layer tanh saturates (relu: zero or huge), so a non-finite
    # weight of layer 0 could vanish from the logits
    obs = obs * dtype(1e6)
    for index in range(params.shape[0]):
        broken = params.copy()
        broken[index] = bad
        with pytest.raises(ValueError, match="params contains NaN or inf"):
            kern.mlp_logits(broken, obs, HIDDEN, act)
        rng = np.random.default_rng(3)
        with pytest.raises(ValueError, match="params contains NaN or inf"):
            kern.mlp_act(broken, obs, HIDDEN, act, rng)
        assert rng.random() == np.random.default_rng(3).random()  # nothing drawn


def _outcome(call):
    """The result of ``call()``, or the FloatingPointError it raised."""
    try:
        return call()
    except FloatingPointError as err:
        return err


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("scale", [1.0, 1e300])
def test_hidden_overflow_with_finite_params_matches_the_reference(kern, act, scale):
    params, obs = _problem(n_rows=70)  # crosses a 64-row block
    layers, _ = ref.mlp_layout(2, HIDDEN, 2)
    w_off, b_off, _, _ = layers[0]
    params[w_off:b_off] *= 1e300  # layer-0 sums overflow to +-inf (tanh then saturates)
    params[layers[1][0]:layers[1][1]] *= scale  # and, with relu, may overflow the next layer
    for call in (lambda m: m.mlp_logits(params, obs, HIDDEN, act),
                 lambda m: m.mlp_act(params, obs, HIDDEN, act, np.random.default_rng(1))):
        got, want = _outcome(lambda: call(kern)), _outcome(lambda: call(ref))
        if isinstance(want, FloatingPointError):
            assert isinstance(got, FloatingPointError) and "overflow" in str(got)
        else:
            assert np.array_equal(got, want)
