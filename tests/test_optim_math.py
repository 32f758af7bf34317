"""SGD and Adam against numbers worked out by hand from PyTorch's documented update rules (three
steps each, bias corrections included), against PyTorch itself where it is installed, and the
optimizer state's bookkeeping."""
import math

import numpy as np
import pytest

from metarl_fast import pg
from metarl_fast.optim import SGD, Adam


# ------------------------------------------------------------------ by hand
def test_adam_three_steps_by_hand(backend):
    # lr .1, betas (.5, .75), grads 1, -1, 2 from p = 1:
    # t=1: m = .5, v = .25, bc1 = .5, bc2 = .25:   p -= (.1/.5) * .5 / (sqrt(.25)/sqrt(.25)) = .1
    # t=2: m = -.25, v = .4375, bc1 = .75, bc2 = .4375:  p -= (.1/.75) * -.25 / 1 = -1/30
    # t=3: m = .875, v = 1.328125, bc1 = .875, bc2 = .578125:
    #      p -= (.1/.875) * .875 / sqrt(1.328125/.578125) = .1 * sqrt(37/85)
    p = np.array([1.0])
    opt = Adam(p, lr=0.1, betas=(0.5, 0.75), eps=1e-12)
    want = [0.9, 0.9 + 1 / 30, 0.9 + 1 / 30 - 0.1 * math.sqrt(37 / 85)]
    moments = [(0.5, 0.25), (-0.25, 0.4375), (0.875, 1.328125)]
    for g, w, (m, v) in zip([1.0, -1.0, 2.0], want, moments):
        opt.step(np.array([g]))
        assert p[0] == pytest.approx(w, rel=1e-11)
        np.testing.assert_allclose(opt.state[:, 0], [m, v], rtol=1e-15)
    assert opt.steps == 3


def test_adam_eps_is_added_after_the_bias_correction(backend):
    # one step with g tiny: denominator sqrt(v)/sqrt(bc2) + eps = |g| + eps (PyTorch), not
    # sqrt(v + eps) or sqrt(v)/sqrt(bc2 + eps)
    p = np.array([0.0])
    Adam(p, lr=1.0, betas=(0.9, 0.999), eps=1e-3).step(np.array([1e-3]))
    assert p[0] == pytest.approx(-1e-3 / (1e-3 + 1e-3), rel=1e-12)


@pytest.mark.parametrize("nesterov,want", [(False, [-0.1, -0.05, -0.225]),
                                           (True, [-0.15, -0.025, -0.3125])])
def test_sgd_momentum_three_steps_by_hand(backend, nesterov, want):
    # lr .1, momentum .5, grads 1, -1, 2: buffers 1, -.5, 1.75 (the first step sets buf = g)
    # plain: p -= .1 * buf; nesterov: p -= .1 * (g + .5 buf)
    p = np.array([0.0])
    opt = SGD(p, lr=0.1, momentum=0.5, nesterov=nesterov)
    for g, w, buf in zip([1.0, -1.0, 2.0], want, [1.0, -0.5, 1.75]):
        opt.step(np.array([g]))
        assert p[0] == pytest.approx(w, rel=1e-14, abs=1e-16)
        assert opt.state[0, 0] == pytest.approx(buf, rel=1e-15)


def test_plain_sgd_and_grad_scale(backend):
    p = np.array([1.0, 2.0])
    opt = SGD(p, lr=0.5)
    opt.step(np.array([2.0, -4.0]))
    np.testing.assert_array_equal(p, [0.0, 4.0])
    opt.step(np.array([2.0, -4.0]), grad_scale=-1.0)  # ascent
    np.testing.assert_array_equal(p, [1.0, 2.0])
    np.testing.assert_array_equal(opt.state, 0.0)  # no momentum: no velocity kept
    q = np.array([1.0])
    Adam(q, lr=0.1).step(np.array([3.0]), grad_scale=-2.0)  # first Adam step: lr * sign
    assert q[0] == pytest.approx(1.1, rel=1e-9)


def test_no_weight_decay_option():
    # PyTorch's weight_decay is not offered: the formulas above are the whole update
    with pytest.raises(TypeError, match="weight_decay"):
        Adam(np.zeros(2), lr=0.1, weight_decay=0.01)
    with pytest.raises(TypeError, match="weight_decay"):
        SGD(np.zeros(2), lr=0.1, weight_decay=0.01)


def test_float32_state_is_rounded_once_per_step(backend):
    # computed in float64 from the float32 state, then rounded: equals the float64 formula on
    # the rounded values step by step
    p = np.array([0.3, -0.7], dtype=np.float32)
    opt = Adam(p, lr=0.01)
    grads = np.array([[0.1, -2.0], [0.3, 0.5], [-1.0, 0.25]], dtype=np.float32)
    m = np.zeros(2, np.float32)
    v = np.zeros(2, np.float32)
    want = p.copy()
    for t, g in enumerate(grads, start=1):
        opt.step(g)
        g64 = g.astype(np.float64)
        m64 = 0.9 * m.astype(np.float64) + (1 - 0.9) * g64
        v64 = 0.999 * v.astype(np.float64) + (1 - 0.999) * (g64 * g64)
        denom = np.sqrt(v64) / math.sqrt(1 - 0.999 ** t) + 1e-8
        want = (want.astype(np.float64) - 0.01 / (1 - 0.9 ** t) * m64 / denom).astype(np.float32)
        m, v = m64.astype(np.float32), v64.astype(np.float32)
        np.testing.assert_array_equal(p, want)
        np.testing.assert_array_equal(opt.state, np.stack([m, v]))


# ------------------------------------------------------------------ PyTorch itself, if installed
@pytest.mark.parametrize("kind", ["adam", "adam-betas", "sgd", "sgd-momentum", "sgd-nesterov"])
def test_matches_torch_when_installed(backend, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    start = rng.normal(size=5)
    grads = rng.normal(size=(6, 5)) * np.array([1e-3, 0.1, 1.0, 10.0, 100.0])
    tp = torch.tensor(start.copy(), dtype=torch.float64, requires_grad=True)
    p = start.copy()
    if kind.startswith("adam"):
        lr, betas, eps = (0.01, (0.9, 0.999), 1e-8) if kind == "adam" else (0.3, (0.5, 0.8), 1e-3)
        topt = torch.optim.Adam([tp], lr=lr, betas=betas, eps=eps)
        opt = Adam(p, lr=lr, betas=betas, eps=eps)
    else:
        momentum = 0.0 if kind == "sgd" else 0.9
        nesterov = kind == "sgd-nesterov"
        topt = torch.optim.SGD([tp], lr=0.05, momentum=momentum, nesterov=nesterov)
        opt = SGD(p, lr=0.05, momentum=momentum, nesterov=nesterov)
    for g in grads:
        tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        opt.step(g)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_clip_grad_norm_matches_torch_when_installed(backend):
    torch = pytest.importorskip("torch")
    for max_norm in (0.5, 3.0, 100.0):
        g = np.array([1.0, -2.0, 2.0])
        t = torch.tensor(g.copy(), requires_grad=True)
        t.grad = torch.tensor(g.copy())
        want_norm = float(torch.nn.utils.clip_grad_norm_([t], max_norm))
        assert pg.clip_grad_norm(g, max_norm) == pytest.approx(want_norm, rel=1e-15)
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-15)


# ------------------------------------------------------------------ state bookkeeping
def test_zero_state_restarts_the_bias_corrections(backend):
    p = np.array([0.0])
    opt = Adam(p, lr=0.1)
    opt.step(np.array([1.0]))
    opt.step(np.array([-3.0]))
    opt.zero_state()
    assert opt.steps == 0 and np.all(opt.state == 0)
    before = p[0]
    opt.step(np.array([0.01]))  # a fresh first step: exactly lr against the sign
    assert p[0] == pytest.approx(before - 0.1, rel=1e-6)
    s = np.array([0.0])
    sgd = SGD(s, lr=1.0, momentum=0.9)
    sgd.step(np.array([1.0]))
    sgd.zero_state()
    sgd.step(np.array([1.0]))  # the velocity was forgotten: buf = g again
    assert s[0] == -2.0 and sgd.state[0, 0] == 1.0 and sgd.steps == 1


def test_state_dict_is_a_snapshot(backend):
    opt = Adam(np.zeros(2), lr=0.1)
    opt.step(np.array([1.0, 2.0]))
    sd = opt.state_dict()
    frozen = sd["state"].copy()
    opt.step(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(sd["state"], frozen)
    assert int(sd["steps"]) == 1 and float(sd["lr"]) == 0.1
    assert float(sd["beta1"]) == 0.9 and float(sd["beta2"]) == 0.999 and float(sd["eps"]) == 1e-8
    sgd = SGD(np.zeros(2), lr=0.2, momentum=0.5, nesterov=True)
    sd = sgd.state_dict()
    assert float(sd["momentum"]) == 0.5 and float(sd["nesterov"]) == 1.0 and str(sd["kind"]) == "SGD"


def test_optimizer_rejects_read_only_and_bad_state(backend):
    ro = np.zeros(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        Adam(ro, lr=0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        SGD(np.zeros(6)[::2], lr=0.1)
    opt = Adam(np.zeros(2), lr=0.1)
    bad = opt.state_dict()
    bad["steps"] = np.array(-1)
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"] = np.full((2, 2), np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        opt.load_state_dict(bad)
    assert opt.steps == 0 and np.all(opt.state == 0)


def test_hyper_parameters_are_what_the_step_uses(backend):
    # changing lr / betas between steps takes effect at the next step (the fused kernel reads
    # the same array)
    p = np.array([0.0])
    opt = Adam(p, lr=0.1)
    opt.lr = 0.5
    opt.step(np.array([2.0]))
    assert p[0] == pytest.approx(-0.5, rel=1e-8)
    opt.beta1, opt.beta2 = 0.0, 0.0  # plain normalised gradient: m = g, v = g^2
    opt.step(np.array([-3.0]))
    assert p[0] == pytest.approx(-0.5 + 0.5, abs=1e-8)
    assert opt.betas == (0.0, 0.0)
    sgd = SGD(np.array([1.0]), lr=0.1, momentum=0.5, nesterov=True)
    assert sgd.nesterov is True and sgd.momentum == 0.5
