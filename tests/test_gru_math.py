"""GRU policy kernels (RL^2) against mathematics: central finite differences, torch.nn.GRU + two
nn.Linear heads with autograd (same parameters, resets mid-sequence), the init distribution,
sampling frequencies against the softmax; and the argument checks.  Each test runs on the NumPy
reference and, when built and not disabled (METARL_FAST_BACKEND=numpy), the Cython twin."""
import math

import numpy as np
import pytest

from metarl_fast import policy as mf_policy
from metarl_fast.reference import gru as ref

from conftest import HAVE_CYTHON

KERNELS = [ref]
if HAVE_CYTHON:
    from metarl_fast._core import gru as core
    KERNELS.append(core)


@pytest.fixture(params=KERNELS, ids=lambda m: m.__name__.rsplit(".", 2)[-2])
def kern(request):
    return request.param


def _problem(d=3, h=4, a=3, t=6, b=4, seed=0, reset_rate=0.3, scale=0.4):
    rng = np.random.default_rng(seed)
    params = ref.gru_init(d, h, a, rng)
    params += rng.normal(scale=scale, size=params.shape)  # not only tiny weights
    inputs = rng.normal(size=(t, b, d))
    h0 = rng.normal(scale=0.5, size=(b, h))
    resets = rng.random((t, b)) < reset_rate
    resets[t // 2] = [True, False] * (b // 2) + [True] * (b % 2)  # resets mid-sequence, mixed
    dlogits = rng.normal(size=(t, b, a))
    dvalues = rng.normal(size=(t, b))
    return params, inputs, h0, resets, dlogits, dvalues


# ---------------------------------------------------------------------------------------------
# Gradient: finite differences
# ---------------------------------------------------------------------------------------------

def test_bptt_gradient_matches_central_differences(kern):
    params, inputs, h0, resets, dlogits, dvalues = _problem()

    def objective(p):
        logits, values, _ = kern.gru_forward(p, inputs, h0, resets)
        return float((dlogits * logits).sum() + (dvalues * values).sum())

    grad = kern.gru_backward(params, inputs, h0, resets, dlogits, dvalues)
    assert grad.shape == params.shape and grad.dtype == np.float64
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(params.size):
        e = np.zeros_like(params)
        e[i] = eps
        numeric[i] = (objective(params + e) - objective(params - e)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


def test_no_gradient_flows_through_a_reset(kern):
    """All rows reset before step 0: h0 cannot matter, neither to the outputs nor the gradient."""
    params, inputs, h0, resets, dlogits, dvalues = _problem(seed=1)
    resets[0] = True
    g1 = kern.gru_backward(params, inputs, h0, resets, dlogits, dvalues)
    g2 = kern.gru_backward(params, inputs, h0 * -3.0 + 1.0, resets, dlogits, dvalues)
    np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-13)
    out1 = kern.gru_forward(params, inputs, h0, resets)
    out2 = kern.gru_forward(params, inputs, np.zeros_like(h0), resets)
    for x, y in zip(out1[:2], out2[:2]):
        assert np.array_equal(x, y)


def test_a_reset_restarts_the_trial(kern):
    """Outputs from a reset at step t on equal a fresh run from a zero state at step t."""
    params, inputs, h0, resets, _, _ = _problem(seed=2, reset_rate=0.0)
    resets[:] = False
    resets[3, 1] = True
    logits, values, hidden = kern.gru_forward(params, inputs, h0, resets)
    fresh = kern.gru_forward(params, inputs[3:, 1:2], np.zeros((1, h0.shape[1])),
                             np.zeros((inputs.shape[0] - 3, 1), bool))
    assert np.array_equal(logits[3:, 1:2], fresh[0])
    assert np.array_equal(values[3:, 1:2], fresh[1])
    assert np.array_equal(hidden[4:, 1:2], fresh[2][1:])
    assert np.array_equal(hidden[0], h0)
    # the other rows carry their state across step 3
    assert not np.array_equal(logits[3:, 0], kern.gru_forward(
        params, inputs[3:, :1], np.zeros((1, h0.shape[1])), np.zeros((3, 1), bool))[0][:, 0])


# ---------------------------------------------------------------------------------------------
# torch.nn.GRU + nn.Linear heads
# ---------------------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed: the torch.nn.GRU comparison needs it")
    return torch


@pytest.mark.parametrize("shape", [(3, 5, 4, 7, 6), (1, 1, 1, 4, 3), (6, 17, 2, 9, 5)])
def test_forward_and_gradient_match_torch_gru(kern, shape):
    torch = _torch()
    d, h, a, t, b = shape
    params, inputs, h0, resets, dlogits, dvalues = _problem(d, h, a, t, b, seed=sum(shape))
    gru = torch.nn.GRU(d, h).double()
    heads = {"policy": torch.nn.Linear(h, a).double(), "value": torch.nn.Linear(h, 1).double()}
    tensors = ref.gru_to_torch_order(params, d, h, a)
    named = dict(gru.named_parameters())
    named.update({f"{k}.{n}": p for k, m in heads.items() for n, p in m.named_parameters()})
    assert sorted(named) == sorted(ref.TORCH_NAMES)
    with torch.no_grad():
        for name, p in named.items():
            assert tuple(p.shape) == tensors[name].shape, name
            p.copy_(torch.from_numpy(tensors[name]))
    state = torch.from_numpy(h0)[None]
    keep = torch.from_numpy(~resets).double()
    outs = []
    for step in range(t):  # torch's GRU has no mid-sequence reset: one step at a time, masked
        out, state = gru(torch.from_numpy(inputs[step])[None], state * keep[step][None, :, None])
        outs.append(out[0])
    seq = torch.stack(outs)
    logits_t, values_t = heads["policy"](seq), heads["value"](seq)[..., 0]
    loss = ((logits_t * torch.from_numpy(dlogits)).sum()
            + (values_t * torch.from_numpy(dvalues)).sum())
    loss.backward()

    logits, values, hidden = kern.gru_forward(params, inputs, h0, resets)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(values, values_t.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(hidden[1:], seq.detach().numpy(), rtol=0, atol=1e-10)
    grad_t = ref.gru_from_torch(*(named[n].grad.numpy() for n in ref.TORCH_NAMES))
    grad = kern.gru_backward(params, inputs, h0, resets, dlogits, dvalues)
    np.testing.assert_allclose(grad, grad_t, rtol=0, atol=1e-10 * max(1.0, np.abs(grad_t).max()))


def test_torch_conversion_round_trips():
    params = _problem(4, 6, 3)[0]
    tensors = ref.gru_to_torch_order(params, 4, 6, 3)
    assert tensors["weight_ih_l0"].shape == (18, 4) and tensors["value.weight"].shape == (1, 6)
    back = ref.gru_from_torch(*(tensors[n] for n in ref.TORCH_NAMES))
    assert np.array_equal(back, params)
    layout, n_params = ref.gru_layout(4, 6, 3)
    assert n_params == params.size == 3 * 6 * (4 + 6 + 2) + 7 * 4
    off, shape = layout["W_h"]
    assert np.array_equal(params[off:off + 6 * 18].reshape(shape), tensors["weight_hh_l0"].T)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------

def test_init_is_pytorchs_uniform_in_the_documented_order():
    d, h, a = 10, 64, 4
    params = ref.gru_init(d, h, a, np.random.default_rng(7))
    k = 1.0 / math.sqrt(h)
    layout, n_params = ref.gru_layout(d, h, a)
    assert params.shape == (n_params,) and params.dtype == np.float64
    assert np.abs(params).max() <= k and np.abs(params).max() > 0.99 * k
    # moments of U(-k, k): mean 0 (sd k / sqrt(3 n)), variance k^2 / 3
    n = params.size
    assert abs(params.mean()) < 5 * k / math.sqrt(3 * n)
    assert abs(params.var() / (k * k / 3) - 1) < 0.03
    for name, (off, shape) in layout.items():  # every block has the same bound (fan-in H)
        block = params[off:off + math.prod(shape)]
        assert np.abs(block).max() <= k, name
    replay = np.random.default_rng(7)
    expected = np.concatenate([replay.uniform(-k, k, math.prod(shape))
                               for _, shape in layout.values()])
    assert np.array_equal(params, expected)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def test_sampled_action_frequencies_match_the_softmax(kern):
    d, h, a, n_rows = 3, 8, 4, 40000
    params = _problem(d, h, a, scale=1.0, seed=3)[0]
    rng = np.random.default_rng(11)
    x = np.tile(rng.normal(size=d), (n_rows, 1))
    state = np.tile(rng.normal(size=h), (n_rows, 1))
    actions, logits, values, h_new = kern.gru_step_act(params, x, state, rng)
    assert actions.dtype == np.int64 and logits.shape == (n_rows, a) and values.shape == (n_rows,)
    assert np.all(logits == logits[0]) and np.all(h_new == h_new[0])
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    assert p.min() > 0.02, p  # every action observable (> 800 expected draws)
    counts = np.bincount(actions, minlength=a)
    sd = np.sqrt(n_rows * p * (1 - p))
    assert np.all(np.abs(counts - n_rows * p) < 5 * sd), (counts, n_rows * p)


def test_step_is_one_forward_step_and_samples_like_sample_actions(kern):
    params, inputs, h0, _, _, _ = _problem(seed=4, b=9)
    logits_f, values_f, hidden_f = kern.gru_forward(params, inputs[:1], h0, np.zeros((1, 9), bool))
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    actions, logits, values, h_new = kern.gru_step_act(params, inputs[0], h0, r1)
    assert np.array_equal(logits, logits_f[0]) and np.array_equal(values, values_f[0])
    assert np.array_equal(h_new, hidden_f[1])
    assert np.array_equal(actions, mf_policy.sample_actions(logits, r2))
    assert r1.bit_generator.state == r2.bit_generator.state
    # in place: h_out may be h itself; outputs land in the given arrays
    state = h0.copy()
    lo, vo = np.empty_like(logits), np.empty_like(values)
    res = kern.gru_step_act(params, inputs[0], state, np.random.default_rng(5), h_out=state,
                            logits_out=lo, values_out=vo)
    assert res[1] is lo and res[2] is vo and res[3] is state
    assert np.array_equal(state, h_new) and np.array_equal(res[0], actions)


def test_empty_batches_and_sequences(kern):
    params = _problem()[0]
    logits, values, hidden = kern.gru_forward(params, np.zeros((0, 2, 3)), np.ones((2, 4)),
                                              np.zeros((0, 2), bool))
    assert logits.shape == (0, 2, 3) and values.shape == (0, 2) and np.all(hidden == 1.0)
    grad = kern.gru_backward(params, np.zeros((5, 0, 3)), np.ones((0, 4)), np.zeros((5, 0), bool),
                             np.zeros((5, 0, 3)), np.zeros((5, 0)))
    assert np.all(grad == 0.0) and grad.shape == params.shape
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    actions = kern.gru_step_act(params, np.zeros((0, 3)), np.zeros((0, 4)), rng)[0]
    assert actions.shape == (0,) and rng.bit_generator.state == before


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _good():
    params, inputs, h0, resets, dlogits, dvalues = _problem()
    return dict(params=params, inputs=inputs, h0=h0, resets=resets), dlogits, dvalues


@pytest.mark.parametrize("change, error, match", [
    (dict(params=np.zeros(5, np.float32)), TypeError, "params must be float64"),
    (dict(params=[0.0] * 5), TypeError, "params must be a numpy.ndarray"),
    (dict(params=np.zeros(127)), ValueError, "not the size of a GRU"),
    (dict(params=np.full(128, np.nan)), ValueError, "params contains NaN"),
    (dict(inputs=np.zeros((6, 4))), ValueError, "inputs must be 3-D"),
    (dict(inputs=np.zeros((6, 4, 3), np.float32)), TypeError, "inputs must have dtype float64"),
    (dict(inputs=np.full((6, 4, 3), np.inf)), ValueError, "inputs contains NaN or inf"),
    (dict(inputs=np.zeros((6, 4, 0))), ValueError, "inputs must have at least one feature"),
    (dict(h0=np.zeros((3, 4))), ValueError, "h0 has 3 rows but inputs has a batch of 4"),
    (dict(h0=np.zeros((4, 513))), ValueError, r"h0 must have shape \(B, H\) with H in 1..512"),
    (dict(h0=np.zeros((4, 5))), ValueError, "not the size of a GRU"),
    (dict(resets=np.zeros((6, 4), np.int64)), TypeError, "resets must be a bool array"),
    (dict(resets=None), TypeError, "resets must be a bool array"),
    (dict(resets=np.zeros((4, 6), bool)), ValueError, r"resets must have shape \(6, 4\)"),
])
def test_forward_and_backward_name_the_bad_argument(kern, change, error, match):
    args, dlogits, dvalues = _good()
    args.update(change)
    with pytest.raises(error, match=match):
        kern.gru_forward(**args)
    with pytest.raises(error, match=match):
        kern.gru_backward(**args, dlogits=dlogits, dvalues=dvalues)


@pytest.mark.parametrize("which, value, error, match", [
    ("dlogits", np.zeros((6, 4, 2)), ValueError, r"dlogits must have shape \(6, 4, 3\)"),
    ("dlogits", np.zeros((6, 4, 3), np.float32), TypeError, "dlogits must have dtype float64"),
    ("dvalues", np.full((6, 4), np.nan), ValueError, "dvalues contains NaN"),
    ("dvalues", np.zeros(6), ValueError, "dvalues must be 2-D"),
])
def test_backward_checks_the_output_gradients(kern, which, value, error, match):
    args, dlogits, dvalues = _good()
    grads = dict(dlogits=dlogits, dvalues=dvalues)
    grads[which] = value
    with pytest.raises(error, match=match):
        kern.gru_backward(**args, **grads)


@pytest.mark.parametrize("change, error, match", [
    (dict(rng=np.random.RandomState(0)), TypeError, "rng must be a numpy.random.Generator"),
    (dict(h=np.zeros((4, 4), np.float32)), TypeError, "h must have dtype float64"),
    (dict(inputs=np.zeros((3, 3))), ValueError, "h has 4 rows but inputs has a batch of 3"),
    (dict(h_out=np.zeros((4, 5))), ValueError, r"h_out must have shape \(4, 4\)"),
    (dict(logits_out=np.zeros((4, 3), np.float32)), TypeError,
     "logits_out must have dtype float64"),
    (dict(values_out=np.zeros((2, 2))), ValueError, r"values_out must have shape \(4,\)"),
])
def test_step_act_names_the_bad_argument_and_draws_nothing(kern, change, error, match):
    params, inputs, h0 = _problem()[:3]
    rng = np.random.default_rng(0)
    args = dict(params=params, inputs=inputs[0], h=h0, rng=rng)
    args.update(change)
    before = rng.bit_generator.state
    with pytest.raises(error, match=match):
        kern.gru_step_act(**args)
    assert rng.bit_generator.state == before


def test_overflow_raises_and_draws_nothing(kern):
    params, inputs, h0 = _problem()[:3]
    layout, _ = ref.gru_layout(3, 4, 3)
    off, _ = layout["b_out"]
    params[off] = 1e308
    params[layout["W_out"][0]:off] = 1e308
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    out = np.full((4, 4), 7.0)
    with pytest.raises(FloatingPointError, match="overflow the float64 range"):
        kern.gru_step_act(params, inputs[0], h0 * 0 + 1.0, rng, h_out=out)
    assert rng.bit_generator.state == before and np.all(out == 7.0)
    with pytest.raises(FloatingPointError, match="overflow the float64 range"):
        kern.gru_forward(params, inputs, h0 * 0 + 1.0, np.zeros((6, 4), bool))


@pytest.mark.parametrize("args, error, match", [
    ((3, 513, 2), ValueError, "hidden must be in 1..512"),
    ((0, 4, 2), ValueError, "input_dim must be >= 1"),
    ((3, 4, 0), ValueError, "n_actions must be >= 1"),
    ((3, 4.0, 2), TypeError, "hidden must be an int"),
    ((10**6, 512, 2), ValueError, "its parameter vector"),
])
def test_layout_checks_its_sizes(args, error, match):
    with pytest.raises(error, match=match):
        ref.gru_layout(*args)


def test_init_and_conversion_check_their_arguments():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        ref.gru_init(3, 4, 2, 0)
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \(3H, D\)"):
        ref.gru_from_torch(*([np.zeros((4, 3))] * 8))
    t = ref.gru_to_torch_order(_problem()[0], 3, 4, 3)
    t["bias_hh_l0"] = np.zeros(11)
    with pytest.raises(ValueError, match=r"bias_hh_l0 must have shape \(12,\)"):
        ref.gru_from_torch(*(t[n] for n in ref.TORCH_NAMES))
    with pytest.raises(ValueError, match="params has size 128, expected"):
        ref.gru_to_torch_order(_problem()[0], 3, 5, 3)


# ---------------------------------------------------------------------------------------------
# The forward's activations kept for the backward (GRUCache)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, n_steps", [(dict(), 6), (dict(t=9, b=7, h=5, reset_rate=0.5), 9),
                                            (dict(b=3), 0), (dict(t=4, b=0), 4)])
def test_cached_backward_equals_the_rerun_backward(kern, shape, n_steps):
    """return_cache=True changes nothing in the forward's results, and the backward from the
    cache is the backward that reruns the forward, bit for bit (resets mid-sequence included)."""
    params, inputs, h0, resets, dlogits, dvalues = _problem(**shape)
    inputs, resets, dlogits, dvalues = (x[:n_steps] for x in (inputs, resets, dlogits, dvalues))
    plain = kern.gru_forward(params, inputs, h0, resets)
    *cached, cache = kern.gru_forward(params, inputs, h0, resets, return_cache=True)
    for got, expect in zip(cached, plain):
        assert np.array_equal(got.view(np.uint64), expect.view(np.uint64))
    t, b, h = inputs.shape[0], inputs.shape[1], h0.shape[1]
    assert isinstance(cache, ref.GRUCache) and cache.trace.shape == (t, b, 4 * h)
    assert cache.hidden is not cached[2] and np.array_equal(cache.hidden, cached[2])
    if t and b:
        # the trace holds r | z | n | g_n: the new state is (1 - z) n + z hp (hp = h0 at step 0
        # where there is no reset)
        r, z, n, g_n = (cache.trace[0, :, k * h:(k + 1) * h] for k in range(4))
        hp = np.where(resets[0][:, None], 0.0, h0)
        assert np.all((r > 0) & (r < 1) & (z > 0) & (z < 1))
        np.testing.assert_allclose((1.0 - z) * n + z * hp, cached[2][1], rtol=0, atol=1e-15)
    with_cache = kern.gru_backward(params, inputs, h0, resets, dlogits, dvalues, cache=cache)
    rerun = kern.gru_backward(params, inputs, h0, resets, dlogits, dvalues)
    assert np.array_equal(with_cache.view(np.uint64), rerun.view(np.uint64))


def test_cache_arrays_are_read_only(kern):
    params, inputs, h0, resets = _problem()[:4]
    cache = kern.gru_forward(params, inputs, h0, resets, return_cache=True)[3]
    with pytest.raises(ValueError, match="read-only"):
        cache.trace[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        cache.hidden[1] = 0.0


def _stale(args, name):
    """Changes one argument after the forward (in place for params: as an Adam step does)."""
    if name == "params":
        args["params"][0] += 1e-9
    elif name == "inputs":
        args["inputs"] = args["inputs"] + 0.0
        args["inputs"][-1, -1, -1] = -args["inputs"][-1, -1, -1]
    elif name == "h0":
        args["h0"] = args["h0"].copy()
        args["h0"][0, 0] = np.nextafter(args["h0"][0, 0], np.inf)
    else:
        args["resets"] = args["resets"].copy()
        args["resets"][1, 1] = not args["resets"][1, 1]


@pytest.mark.parametrize("name", ["params", "inputs", "h0", "resets"])
def test_a_cache_from_other_arguments_is_refused(kern, name):
    """A cache gives the gradient at the arguments that made it: any other bit is refused."""
    args, dlogits, dvalues = _good()
    cache = kern.gru_forward(**args, return_cache=True)[3]
    _stale(args, name)
    with pytest.raises(ValueError, match=f"cache was made by gru_forward with other {name}"):
        kern.gru_backward(**args, dlogits=dlogits, dvalues=dvalues, cache=cache)


def test_bad_caches_and_flags_name_the_argument(kern):
    args, dlogits, dvalues = _good()
    grads = dict(dlogits=dlogits, dvalues=dvalues)
    cache = kern.gru_forward(**args, return_cache=True)[3]
    for bad in (cache.trace, {"trace": cache.trace}, True):
        with pytest.raises(TypeError, match="cache must be a GRUCache returned by gru_forward"):
            kern.gru_backward(**args, **grads, cache=bad)
    with pytest.raises(TypeError, match="return_cache must be a bool"):
        kern.gru_forward(**args, return_cache="yes")
    # a cache of a shorter sequence (the same rows): shapes are checked before any value
    short = {k: v[:3] if k in ("inputs", "resets") else v for k, v in args.items()}
    short_cache = kern.gru_forward(**short, return_cache=True)[3]
    with pytest.raises(ValueError, match=r"cache.trace has shape \(3, 4, 16\), but these "
                                         r"arguments need \(6, 4, 16\)"):
        kern.gru_backward(**args, **grads, cache=short_cache)
    cache.trace = cache.trace.astype(np.float32)
    with pytest.raises(TypeError, match="cache.trace must be a C-contiguous float64 array"):
        kern.gru_backward(**args, **grads, cache=cache)
