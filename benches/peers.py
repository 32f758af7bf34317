"""Peer implementations for ``bench_peers.py``: what a competent user writes instead of the engine.

Plain functions and classes, float64 throughout, each doing the same work as one engine call:

- idiomatic NumPy (vectorised: per-state tables computed once per call, no per-row Python loops);
- numba (``@njit`` loops, random draws from numba's own ``np.random`` stream, seeded with
  :func:`numba_seed`: passing a ``numpy.random.Generator`` into an njit function costs ~7 us of
  boxing per call, which would dominate the small calls);
- PyTorch (batched tensors, float64, ``torch.set_num_threads(1)``), and for MAML also the per-task
  loop a learn2learn user writes;
- cpprb (replay only).

numba / torch / cpprb are optional: their names below are ``None`` when the package is missing
(the benchmark skips those peers).  Nothing here imports metarl_fast except the statistics
helpers' callers: the peers are independent re-implementations, checked against the engine by
``bench_peers.py``.
"""
import math

import numpy as np

try:
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - optional
    numba = None

try:
    import torch
except ImportError:  # pragma: no cover - optional
    torch = None
else:
    torch.set_num_threads(1)  # single-thread comparison: the engine is single-threaded

try:
    import cpprb
except ImportError:  # pragma: no cover - optional
    cpprb = None


# =============================================================================================
# Statistics helpers (no scipy): chi-square via the Wilson-Hilferty normal approximation
# =============================================================================================

def chi2_z(stat, dof):
    """Wilson-Hilferty z-score of a chi-square statistic with ``dof`` degrees of freedom
    (~N(0, 1) under the null; large positive values reject)."""
    if dof <= 0:
        return 0.0
    k = float(dof)
    return ((stat / k) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k))


def chi2_goodness_of_fit(counts, probs, min_expected=5.0):
    """Chi-square of observed ``counts`` (K, A) against per-row distributions ``probs`` (K, A).

    Rows whose smallest expected count is below ``min_expected`` are left out (a zero-probability
    cell with a non-zero count makes the statistic infinite).  Returns ``(stat, dof, z)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    n = counts.sum(axis=1, keepdims=True)
    expected = n * probs
    if np.any((probs == 0) & (counts > 0)):
        return math.inf, 1, math.inf
    keep = (np.where(probs > 0, expected, np.inf).min(axis=1) >= min_expected)
    e, c = expected[keep], counts[keep]
    mask = e > 0
    stat = float((((c - e) ** 2)[mask] / e[mask]).sum())
    dof = int(mask.sum() - keep.sum())
    return stat, dof, chi2_z(stat, dof)


def normal_sf(z):
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def bonferroni_z(n_tests, family_alpha=1e-3):
    """The two-sided |z| threshold of ``n_tests`` tests at family-wise level ``family_alpha``."""
    p = family_alpha / (2.0 * max(n_tests, 1))
    lo, hi = 0.0, 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if normal_sf(mid) > p else (lo, mid)
    return hi


def two_sample_z(x1, x2):
    """Per column: (mean x1 - mean x2) / standard error, from independent rows (episodes) of x1
    (n1, K) and x2 (n2, K).  Columns without variance in both give 0 if the means agree, inf if not."""
    m1, m2 = x1.mean(axis=0), x2.mean(axis=0)
    se = np.sqrt(x1.var(axis=0, ddof=1) / x1.shape[0] + x2.var(axis=0, ddof=1) / x2.shape[0])
    z = np.zeros_like(m1)
    ok = se > 0
    z[ok] = (m1[ok] - m2[ok]) / se[ok]
    z[~ok & (m1 != m2)] = np.inf
    return z


def softmax_table(theta):
    z = theta - theta.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# =============================================================================================
# 1. sample_actions from a tabular softmax policy: theta (S, A), states obs (B,) -> actions (B,)
# =============================================================================================

def numpy_sample_actions(theta, obs, rng):
    """Idiomatic NumPy: the (S, A) softmax CDF once, gathered per row, one uniform per row."""
    z = theta - theta.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(z), axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(obs.shape[0])
    actions = (u[:, None] >= cdf[obs]).sum(axis=1)
    np.minimum(actions, theta.shape[1] - 1, out=actions)
    return actions


def torch_sample_actions_multinomial(theta, obs, gen):
    """PyTorch, ``torch.multinomial`` on the gathered per-state probabilities."""
    probs = torch.softmax(theta, dim=1)[obs]
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def torch_sample_actions_icdf(theta, obs, gen):
    """PyTorch, inverse CDF: the (S, A) CDF once, gathered, compared with one uniform per row."""
    cdf = torch.softmax(theta, dim=1).cumsum(dim=1)[obs]
    u = torch.rand(obs.shape[0], 1, generator=gen, dtype=theta.dtype)
    return (u >= cdf).sum(dim=1).clamp_(max=theta.shape[1] - 1)


if numba is not None:

    @njit(cache=False)
    def _nb_action_cdf(theta):
        S, A = theta.shape
        cdf = np.empty((S, A))
        for s in range(S):
            m = theta[s, 0]
            for a in range(1, A):
                if theta[s, a] > m:
                    m = theta[s, a]
            c = 0.0
            for a in range(A):
                c += math.exp(theta[s, a] - m)
                cdf[s, a] = c
        return cdf

    @njit(cache=False)
    def numba_seed(seed):
        """Seed numba's own random stream (the one the numba peers draw from)."""
        np.random.seed(seed)

    @njit(cache=False)
    def numba_sample_actions(theta, obs, out):
        """numba: the per-state CDF once per call, then one uniform and a linear search per row."""
        A = theta.shape[1]
        cdf = _nb_action_cdf(theta)
        for i in range(obs.shape[0]):
            s = obs[i]
            u = np.random.random() * cdf[s, A - 1]
            a = 0
            while a < A - 1 and u >= cdf[s, a]:
                a += 1
            out[i] = a
        return out


    # The same kernels drawing from a numpy Generator passed in (PCG64: faster per draw than
    # numba's MT19937 stream, but ~7 us of boxing per call): the "numba-gen" peers.

    @njit(cache=False)
    def numba_gen_sample_actions(theta, obs, rng, out):
        """As numba_sample_actions, drawing from the Generator ``rng``."""
        A = theta.shape[1]
        cdf = _nb_action_cdf(theta)
        for i in range(obs.shape[0]):
            s = obs[i]
            u = rng.random() * cdf[s, A - 1]
            a = 0
            while a < A - 1 and u >= cdf[s, a]:
                a += 1
            out[i] = a
        return out

    @njit(cache=False)
    def _nb_gen_ring_sample(size, n, rng, o_b, a_b, r_b, no_b, d_b, t_b, k_b, l_b):
        idx = np.empty(n, np.int64)
        o = np.empty(n, o_b.dtype)
        a = np.empty(n, a_b.dtype)
        r = np.empty(n, r_b.dtype)
        no = np.empty(n, no_b.dtype)
        d = np.empty(n, d_b.dtype)
        t = np.empty(n, t_b.dtype)
        k = np.empty(n, k_b.dtype)
        lp = np.empty(n, l_b.dtype)
        for i in range(n):
            j = rng.integers(0, size)
            idx[i] = j
            o[i] = o_b[j]
            a[i] = a_b[j]
            r[i] = r_b[j]
            no[i] = no_b[j]
            d[i] = d_b[j]
            t[i] = t_b[j]
            k[i] = k_b[j]
            lp[i] = l_b[j]
        return o, a, r, no, d, t, k, lp, idx

    @njit(cache=False)
    def _nb_gen_rollout(theta, R, next_state, trans_cdf, stochastic, terminal, start, noise_std, noisy,
                        n_episodes, H, rng):
        T, S, A = R.shape
        cdf = _nb_action_cdf(theta)
        logp_tab = np.empty((S, A))
        for s in range(S):
            m = theta[s, 0]
            for a in range(1, A):
                if theta[s, a] > m:
                    m = theta[s, a]
            lse = m + math.log(cdf[s, A - 1])
            for a in range(A):
                logp_tab[s, a] = theta[s, a] - lse
        obs = np.zeros((T, n_episodes, H), np.int64)
        act = np.zeros((T, n_episodes, H), np.int64)
        rew = np.zeros((T, n_episodes, H))
        nxt = np.zeros((T, n_episodes, H), np.int64)
        logp = np.zeros((T, n_episodes, H))
        valid = np.zeros((T, n_episodes, H), np.bool_)
        ret = np.zeros((T, n_episodes))
        length = np.zeros((T, n_episodes), np.int64)
        for t in range(T):
            for e in range(n_episodes):
                s = start[t]
                total = 0.0
                for h in range(H):
                    u = rng.random() * cdf[s, A - 1]
                    a = 0
                    while a < A - 1 and u >= cdf[s, a]:
                        a += 1
                    r = R[t, s, a]
                    if noisy:
                        r += noise_std[t] * rng.standard_normal()
                    if stochastic:
                        u2 = rng.random()
                        s2 = 0
                        while s2 < S - 1 and u2 >= trans_cdf[t, s, a, s2]:
                            s2 += 1
                    else:
                        s2 = next_state[t, s, a]
                    obs[t, e, h] = s
                    act[t, e, h] = a
                    rew[t, e, h] = r
                    nxt[t, e, h] = s2
                    logp[t, e, h] = logp_tab[s, a]
                    valid[t, e, h] = True
                    total += r
                    s = s2
                    if terminal[t, s2]:
                        length[t, e] = h + 1
                        break
                    length[t, e] = h + 1
                ret[t, e] = total
        return obs, act, rew, nxt, logp, valid, ret, length
else:  # pragma: no cover
    numba_sample_actions = numba_seed = numba_gen_sample_actions = None


# =============================================================================================
# 2. Replay rings: obs, action, reward, next_obs, done, truncated, task_id, logp
# =============================================================================================

_RING_FIELDS = (("obs", np.int64), ("action", np.int64), ("reward", np.float64), ("next_obs", np.int64),
                ("done", np.bool_), ("truncated", np.bool_), ("task_id", np.int32), ("logp", np.float64))


class NumpyRing:
    """The usual hand-written NumPy ring: one array per field, slice writes (two slices when the
    batch wraps), fancy-index reads, ``rng.integers`` for the indices."""

    def __init__(self, capacity):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.arrays = [np.zeros(capacity, dtype) for _, dtype in _RING_FIELDS]

    def add_batch(self, obs, action, reward, next_obs, done, truncated, task_id, logp):
        cols = (obs, action, reward, next_obs, done, truncated, task_id, logp)
        n, pos, cap = len(reward), self.pos, self.capacity
        end = pos + n
        if end <= cap:
            for arr, col in zip(self.arrays, cols):
                arr[pos:end] = col
        else:
            k = cap - pos
            for arr, col in zip(self.arrays, cols):
                arr[pos:] = col[:k]
                arr[:n - k] = col[k:]
        self.pos = end % cap
        self.size = min(self.size + n, cap)
        return n

    def sample(self, n, rng):
        idx = rng.integers(0, self.size, n)
        return [arr[idx] for arr in self.arrays] + [idx]

    def contents(self):
        return [arr[:self.size] for arr in self.arrays]


if numba is not None:

    @njit(cache=False)
    def _nb_ring_add(pos, o_b, a_b, r_b, no_b, d_b, t_b, k_b, l_b, o, a, r, no, d, t, k, l):
        cap = o_b.shape[0]
        j = pos
        for i in range(r.shape[0]):
            o_b[j] = o[i]
            a_b[j] = a[i]
            r_b[j] = r[i]
            no_b[j] = no[i]
            d_b[j] = d[i]
            t_b[j] = t[i]
            k_b[j] = k[i]
            l_b[j] = l[i]
            j += 1
            if j == cap:
                j = 0
        return j

    @njit(cache=False)
    def _nb_ring_sample(size, n, o_b, a_b, r_b, no_b, d_b, t_b, k_b, l_b):
        idx = np.empty(n, np.int64)
        o = np.empty(n, o_b.dtype)
        a = np.empty(n, a_b.dtype)
        r = np.empty(n, r_b.dtype)
        no = np.empty(n, no_b.dtype)
        d = np.empty(n, d_b.dtype)
        t = np.empty(n, t_b.dtype)
        k = np.empty(n, k_b.dtype)
        lp = np.empty(n, l_b.dtype)
        for i in range(n):
            j = np.random.randint(0, size)
            idx[i] = j
            o[i] = o_b[j]
            a[i] = a_b[j]
            r[i] = r_b[j]
            no[i] = no_b[j]
            d[i] = d_b[j]
            t[i] = t_b[j]
            k[i] = k_b[j]
            lp[i] = l_b[j]
        return o, a, r, no, d, t, k, lp, idx


class NumbaRing(NumpyRing):
    """The same ring with the write and the sample+gather each one ``@njit`` loop."""

    def add_batch(self, obs, action, reward, next_obs, done, truncated, task_id, logp):
        n = len(reward)
        self.pos = _nb_ring_add(self.pos, *self.arrays, obs, action, reward, next_obs, done, truncated,
                                task_id, logp)
        self.size = min(self.size + n, self.capacity)
        return n

    def sample(self, n, rng):
        return list(_nb_ring_sample(self.size, n, *self.arrays))  # numba's own stream, not rng


class NumbaGenRing(NumbaRing):
    """NumbaRing drawing the indices inside the njit loop from the Generator ``rng``."""

    def sample(self, n, rng):
        return list(_nb_gen_ring_sample(self.size, n, rng, *self.arrays))


def cpprb_buffer(capacity):
    """A cpprb ReplayBuffer holding the same eight fields."""
    return cpprb.ReplayBuffer(capacity, {
        "obs": {"dtype": np.int64}, "act": {"dtype": np.int64}, "rew": {"dtype": np.float64},
        "next_obs": {"dtype": np.int64}, "done": {"dtype": np.bool_}, "truncated": {"dtype": np.bool_},
        "task_id": {"dtype": np.int32}, "logp": {"dtype": np.float64}})


def cpprb_add_batch(rb, obs, action, reward, next_obs, done, truncated, task_id, logp):
    rb.add(obs=obs, act=action, rew=reward, next_obs=next_obs, done=done, truncated=truncated,
           task_id=task_id, logp=logp)


# =============================================================================================
# 3. Rollouts of one tabular softmax policy on a batch of tasks
# =============================================================================================

class TaskArrays:
    """A batch of tabular tasks as plain arrays (what a user keeps for their own rollouts).

    ``R`` (T, S, A) mean rewards, ``noise_std`` (T,) or None (Gaussian reward noise), either
    ``next_state`` (T, S, A) (deterministic) or ``trans_cdf`` (T, S, A, S) (normalised running sums
    of P), ``terminal`` (T, S) bool, ``start`` (T,) start state, ``horizon``.
    """

    def __init__(self, R, horizon, *, next_state=None, P=None, terminal=None, start=None, noise_std=None):
        self.R = np.array(R, dtype=np.float64)  # private writable copies (torch.from_numpy needs them)
        self.T, self.S, self.A = self.R.shape
        self.horizon = int(horizon)
        self.next_state = None if next_state is None else np.array(next_state, dtype=np.int64)
        if P is not None:
            cdf = np.cumsum(P, axis=-1)
            cdf /= cdf[..., -1:]
            self.trans_cdf = np.ascontiguousarray(cdf)
        else:
            self.trans_cdf = None
        if (self.next_state is None) == (self.trans_cdf is None):
            raise ValueError("give exactly one of next_state and P")
        self.terminal = np.zeros((self.T, self.S), bool) if terminal is None else np.array(terminal, dtype=bool)
        self.start = np.zeros(self.T, np.int64) if start is None else np.array(start, dtype=np.int64)
        self.noise_std = None if noise_std is None else np.array(noise_std, dtype=np.float64)

    def to_torch(self):
        return TorchTasks(
            R=torch.from_numpy(self.R), horizon=self.horizon,
            next_state=None if self.next_state is None else torch.from_numpy(self.next_state),
            trans_cdf=None if self.trans_cdf is None else torch.from_numpy(self.trans_cdf),
            terminal=torch.from_numpy(self.terminal), start=torch.from_numpy(self.start),
            noise_std=None if self.noise_std is None else torch.from_numpy(self.noise_std))


def numpy_rollout(theta, tasks, n_episodes, rng):
    """Idiomatic NumPy: all T * N episodes advanced together, a Python loop over the H steps only;
    finished episodes are masked (``valid``).  Returns padded (T, N, H) arrays and (T, N) returns
    and lengths."""
    T, S, A, H = tasks.T, tasks.S, tasks.A, tasks.horizon
    M = T * n_episodes
    z = theta - theta.max(axis=1, keepdims=True)
    logp_tab = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    cdf = np.cumsum(np.exp(logp_tab), axis=1)
    cdf /= cdf[:, -1:]
    task = np.repeat(np.arange(T), n_episodes)
    s = tasks.start[task]
    alive = np.ones(M, dtype=bool)
    obs = np.zeros((M, H), np.int64)
    act = np.zeros((M, H), np.int64)
    rew = np.zeros((M, H))
    nxt = np.zeros((M, H), np.int64)
    logp = np.zeros((M, H))
    valid = np.zeros((M, H), bool)
    R_flat = tasks.R.reshape(-1)
    term_flat = tasks.terminal.reshape(-1)
    base = task * S
    for h in range(H):
        u = rng.random(M)
        a = (u[:, None] >= cdf[s]).sum(axis=1)
        np.minimum(a, A - 1, out=a)
        sa = (base + s) * A + a
        r = R_flat[sa]
        if tasks.noise_std is not None:
            r = r + tasks.noise_std[task] * rng.standard_normal(M)
        if tasks.next_state is not None:
            s2 = tasks.next_state.reshape(-1)[sa]
        else:
            u2 = rng.random(M)
            s2 = (u2[:, None] >= tasks.trans_cdf.reshape(-1, S)[sa]).sum(axis=1)
            np.minimum(s2, S - 1, out=s2)
        obs[:, h] = s
        act[:, h] = a
        rew[:, h] = r
        nxt[:, h] = s2
        logp[:, h] = logp_tab[s, a]
        valid[:, h] = alive
        alive &= ~term_flat[base + s2]
        s = s2
        if not alive.any():
            break
    rew *= valid
    shape = (T, n_episodes, H)
    return {"obs": obs.reshape(shape), "action": act.reshape(shape), "reward": rew.reshape(shape),
            "next_obs": nxt.reshape(shape), "logp": logp.reshape(shape), "valid": valid.reshape(shape),
            "episode_return": rew.sum(axis=1).reshape(T, n_episodes),
            "episode_length": valid.sum(axis=1).reshape(T, n_episodes)}


if numba is not None:

    @njit(cache=False)
    def _nb_rollout(theta, R, next_state, trans_cdf, stochastic, terminal, start, noise_std, noisy,
                    n_episodes, H):
        T, S, A = R.shape
        cdf = _nb_action_cdf(theta)
        logp_tab = np.empty((S, A))
        for s in range(S):
            m = theta[s, 0]
            for a in range(1, A):
                if theta[s, a] > m:
                    m = theta[s, a]
            lse = m + math.log(cdf[s, A - 1])
            for a in range(A):
                logp_tab[s, a] = theta[s, a] - lse
        obs = np.zeros((T, n_episodes, H), np.int64)
        act = np.zeros((T, n_episodes, H), np.int64)
        rew = np.zeros((T, n_episodes, H))
        nxt = np.zeros((T, n_episodes, H), np.int64)
        logp = np.zeros((T, n_episodes, H))
        valid = np.zeros((T, n_episodes, H), np.bool_)
        ret = np.zeros((T, n_episodes))
        length = np.zeros((T, n_episodes), np.int64)
        for t in range(T):
            for e in range(n_episodes):
                s = start[t]
                total = 0.0
                for h in range(H):
                    u = np.random.random() * cdf[s, A - 1]
                    a = 0
                    while a < A - 1 and u >= cdf[s, a]:
                        a += 1
                    r = R[t, s, a]
                    if noisy:
                        r += noise_std[t] * np.random.standard_normal()
                    if stochastic:
                        u2 = np.random.random()
                        s2 = 0
                        while s2 < S - 1 and u2 >= trans_cdf[t, s, a, s2]:
                            s2 += 1
                    else:
                        s2 = next_state[t, s, a]
                    obs[t, e, h] = s
                    act[t, e, h] = a
                    rew[t, e, h] = r
                    nxt[t, e, h] = s2
                    logp[t, e, h] = logp_tab[s, a]
                    valid[t, e, h] = True
                    total += r
                    s = s2
                    if terminal[t, s2]:
                        length[t, e] = h + 1
                        break
                    length[t, e] = h + 1
                ret[t, e] = total
        return obs, act, rew, nxt, logp, valid, ret, length

    _DUMMY_NEXT = np.zeros((1, 1, 1), np.int64)
    _DUMMY_CDF = np.zeros((1, 1, 1, 1))
    _DUMMY_STD = np.zeros(1)

    def numba_rollout(theta, tasks, n_episodes, rng=None):
        """numba: one loop over tasks, episodes and steps, drawing from numba's own stream
        (``numba_seed``; ``rng`` is ignored: passing a Generator into an njit function costs ~7 us
        per call)."""
        stochastic = tasks.trans_cdf is not None
        noisy = tasks.noise_std is not None
        out = _nb_rollout(theta, tasks.R, _DUMMY_NEXT if stochastic else tasks.next_state,
                          tasks.trans_cdf if stochastic else _DUMMY_CDF, stochastic, tasks.terminal,
                          tasks.start, tasks.noise_std if noisy else _DUMMY_STD, noisy, n_episodes,
                          tasks.horizon)
        keys = ("obs", "action", "reward", "next_obs", "logp", "valid", "episode_return", "episode_length")
        return dict(zip(keys, out))

    def numba_gen_rollout(theta, tasks, n_episodes, rng):
        """As numba_rollout, drawing from the numpy Generator ``rng`` inside the loop."""
        stochastic = tasks.trans_cdf is not None
        noisy = tasks.noise_std is not None
        out = _nb_gen_rollout(theta, tasks.R, _DUMMY_NEXT if stochastic else tasks.next_state,
                              tasks.trans_cdf if stochastic else _DUMMY_CDF, stochastic, tasks.terminal,
                              tasks.start, tasks.noise_std if noisy else _DUMMY_STD, noisy, n_episodes,
                              tasks.horizon, rng)
        keys = ("obs", "action", "reward", "next_obs", "logp", "valid", "episode_return", "episode_length")
        return dict(zip(keys, out))
else:  # pragma: no cover
    numba_rollout = numba_gen_rollout = None


class TorchTasks:
    """Tasks as tensors (torch peers): the fields of :class:`TaskArrays`, as torch tensors."""

    def __init__(self, R, horizon, *, next_state=None, trans_cdf=None, terminal, start, noise_std=None):
        self.R, self.horizon = R, int(horizon)
        self.T, self.S, self.A = R.shape
        self.next_state, self.trans_cdf = next_state, trans_cdf
        self.terminal, self.start, self.noise_std = terminal, start, noise_std

    def select(self, t):
        """Task ``t`` alone (a batch of one), as views."""
        sl = slice(t, t + 1)
        return TorchTasks(self.R[sl], self.horizon,
                          next_state=None if self.next_state is None else self.next_state[sl],
                          trans_cdf=None if self.trans_cdf is None else self.trans_cdf[sl],
                          terminal=self.terminal[sl], start=self.start[sl],
                          noise_std=None if self.noise_std is None else self.noise_std[sl])


def torch_rollout(logits, tasks, n_episodes, gen):
    """PyTorch, batched over tasks x episodes, a Python loop over the H steps; ``logits`` (S, A)
    (one policy) or (T, S, A) (one per task, e.g. adapted).  Returns padded (T, N, H) tensors."""
    T, S, A, H = tasks.T, tasks.S, tasks.A, tasks.horizon
    N = n_episodes
    M = T * N
    if logits.dim() == 2:
        logits = logits.unsqueeze(0).expand(T, S, A)
    lp_tab = torch.log_softmax(logits, dim=-1).reshape(T * S, A)
    cdf = lp_tab.exp().cumsum(dim=-1)
    task = torch.arange(T).repeat_interleave(N)
    base = task * S
    s = tasks.start.repeat_interleave(N)
    alive = torch.ones(M, dtype=torch.bool)
    obs = torch.zeros((M, H), dtype=torch.int64)
    act = torch.zeros((M, H), dtype=torch.int64)
    rew = torch.zeros((M, H), dtype=torch.float64)
    nxt = torch.zeros((M, H), dtype=torch.int64)
    logp = torch.zeros((M, H), dtype=torch.float64)
    valid = torch.zeros((M, H), dtype=torch.bool)
    R_flat = tasks.R.reshape(-1)
    term_flat = tasks.terminal.reshape(-1)
    next_flat = None if tasks.next_state is None else tasks.next_state.reshape(-1)
    trans = None if tasks.trans_cdf is None else tasks.trans_cdf.reshape(-1, S)
    for h in range(H):
        row = base + s
        u = torch.rand(M, 1, generator=gen, dtype=torch.float64)
        a = (u >= cdf[row]).sum(dim=1).clamp_(max=A - 1)
        sa = row * A + a
        r = R_flat[sa]
        if tasks.noise_std is not None:
            r = r + tasks.noise_std[task] * torch.randn(M, generator=gen, dtype=torch.float64)
        if next_flat is not None:
            s2 = next_flat[sa]
        else:
            u2 = torch.rand(M, 1, generator=gen, dtype=torch.float64)
            s2 = (u2 >= trans[sa]).sum(dim=1).clamp_(max=S - 1)
        obs[:, h] = s
        act[:, h] = a
        rew[:, h] = r
        nxt[:, h] = s2
        logp[:, h] = lp_tab[row, a]
        valid[:, h] = alive
        alive = alive & ~term_flat[base + s2]
        s = s2
        if not bool(alive.any()):
            break
    rew = rew * valid
    shape = (T, N, H)
    return {"obs": obs.reshape(shape), "action": act.reshape(shape), "reward": rew.reshape(shape),
            "next_obs": nxt.reshape(shape), "logp": logp.reshape(shape), "valid": valid.reshape(shape),
            "episode_return": rew.sum(dim=1).reshape(T, N), "episode_length": valid.sum(dim=1).reshape(T, N)}


# =============================================================================================
# 4. One REINFORCE gradient + one Adam step (PyTorch's formulas) for a tabular softmax policy
# =============================================================================================

class NumpyPGAdam:
    """Idiomatic NumPy: softmax of the (S, A) table once, the gradient by two bincounts
    (``sum_i A_i onehot - pi[s] sum_i A_i``), then Adam exactly as torch.optim.Adam."""

    def __init__(self, theta, lr=0.01, betas=(0.9, 0.999), eps=1e-8):
        self.theta = np.array(theta, dtype=np.float64)
        self.m = np.zeros_like(self.theta)
        self.v = np.zeros_like(self.theta)
        self.t = 0
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps

    def step(self, obs, actions, advantages):
        S, A = self.theta.shape
        pi = softmax_table(self.theta)
        w = advantages / advantages.shape[0]
        g = np.bincount(obs * A + actions, weights=w, minlength=S * A).reshape(S, A)
        g -= pi * np.bincount(obs, weights=w, minlength=S)[:, None]
        self.grad = g  # the policy gradient (ascent direction), kept for the checks
        grad = -g  # minimise -J, as torch does
        self.t += 1
        self.m *= self.b1
        self.m += (1.0 - self.b1) * grad
        self.v *= self.b2
        self.v += (1.0 - self.b2) * grad * grad
        step_size = self.lr / (1.0 - self.b1 ** self.t)
        denom = np.sqrt(self.v) / math.sqrt(1.0 - self.b2 ** self.t) + self.eps
        self.theta -= step_size * self.m / denom


if numba is not None:

    @njit(cache=False)
    def _nb_pg_adam(theta, m, v, t, obs, actions, adv, lr, b1, b2, eps, g):
        S, A = theta.shape
        pi = np.empty((S, A))
        for s in range(S):  # the per-state softmax, once per call
            mx = theta[s, 0]
            for a in range(1, A):
                if theta[s, a] > mx:
                    mx = theta[s, a]
            tot = 0.0
            for a in range(A):
                pi[s, a] = math.exp(theta[s, a] - mx)
                tot += pi[s, a]
            for a in range(A):
                pi[s, a] /= tot
        g[:] = 0.0
        B = obs.shape[0]
        for i in range(B):
            s = obs[i]
            w = adv[i] / B
            for a in range(A):
                g[s, a] -= w * pi[s, a]
            g[s, actions[i]] += w
        step_size = lr / (1.0 - b1 ** t)
        bc2 = math.sqrt(1.0 - b2 ** t)
        for s in range(S):
            for a in range(A):
                gr = -g[s, a]
                m[s, a] = b1 * m[s, a] + (1.0 - b1) * gr
                v[s, a] = b2 * v[s, a] + (1.0 - b2) * gr * gr
                theta[s, a] -= step_size * m[s, a] / (math.sqrt(v[s, a]) / bc2 + eps)


class NumbaPGAdam(NumpyPGAdam):
    """numba: per-state softmax once per call, one loop over the rows, one loop for Adam."""

    def step(self, obs, actions, advantages):
        self.t += 1
        if not hasattr(self, "grad"):
            self.grad = np.zeros_like(self.theta)  # receives the policy gradient (for the checks)
        _nb_pg_adam(self.theta, self.m, self.v, self.t, obs, actions, advantages, self.lr, self.b1,
                    self.b2, self.eps, self.grad)


class TorchPGAdam:
    """PyTorch: float64 parameters, autograd through ``log_softmax`` and ``torch.optim.Adam``."""

    def __init__(self, theta, lr=0.01):
        self.theta = torch.tensor(np.asarray(theta, dtype=np.float64), requires_grad=True)
        self.opt = torch.optim.Adam([self.theta], lr=lr)

    def step(self, obs, actions, advantages):
        self.opt.zero_grad(set_to_none=True)
        logp = torch.log_softmax(self.theta, dim=1)[obs, actions]
        loss = -(advantages * logp).mean()
        loss.backward()
        self.opt.step()


# =============================================================================================
# 5. MAML (K = 1) with the engine's estimator, in PyTorch
# =============================================================================================
#
# The estimator (metarl_fast.meta.SampledPolicyProblem, hessian_data="fresh"):
#   inner step   theta1 = theta0 + alpha g_in,   g_in = sum_i coef_i grad log pi(a_i|s_i) on D_in,
#                coef_i = gamma^t (G_t - b_t) / N, b_t the leave-one-out mean of G_t over the task's
#                other episodes that reached step t;
#   outer        v = g_out(theta1) on fresh episodes D_out at theta1;
#   meta-grad    v + alpha H^T v, H^T v estimated on fresh episodes D_h at theta0 as
#                sum_i coef_i grad^2 log pi_i v  (the surrogate's Hessian)
#                + 1/N sum_e grad log p(tau_e) (g_e - mean_{e' != e} g_e') . v  (score function,
#                leave-one-out control variate), g_e = N sum_{i in e} coef_i grad log pi_i.
#
# In autograd: theta1 = theta0 + alpha (g_in + G(theta0) - stop(G(theta0))) with
#   G(theta) = grad_theta sum_i coef_i log pi_theta(a_i|s_i)        (create_graph=True, on D_h)
#            + 1/N sum_e (log p_e(theta) - stop(log p_e)) c_e,   c_e = stop(g_e - mean_{e'!=e} g_e')
# so theta1 has the value of the inner step on D_in and the Jacobian I + alpha dG/dtheta0; the
# outer surrogate sum_i coef_i log pi_theta1 on D_out, back-propagated to theta0, is the
# meta-gradient.  Dropping the score-function part (``score_term=False``) is what a plain
# create_graph through the inner surrogate gives: a biased estimator.

def _returns_to_go(rew, gamma):
    if gamma == 1.0:
        return rew.flip(-1).cumsum(-1).flip(-1)
    G = torch.zeros_like(rew)
    acc = torch.zeros_like(rew[..., 0])
    for h in range(rew.shape[-1] - 1, -1, -1):
        acc = rew[..., h] + gamma * acc
        G[..., h] = acc
    return G


def torch_reinforce_coefs(data, gamma, n_episodes, baseline="leave-one-out"):
    """``coef = gamma^t (G_t - b_t) / N`` on the valid steps of padded (T, N, H) episodes."""
    valid = data["valid"].to(torch.float64)
    G = _returns_to_go(data["reward"], gamma)
    if baseline == "leave-one-out":
        cnt = valid.sum(dim=1, keepdim=True)
        tot = (G * valid).sum(dim=1, keepdim=True)
        others = cnt - 1.0
        b = torch.where(others > 0, (tot - G) / others.clamp(min=1.0), torch.zeros_like(G))
    elif baseline == "mean":
        b = (G * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
    else:
        b = torch.zeros_like(G)
    H = G.shape[-1]
    disc = gamma ** torch.arange(H, dtype=torch.float64)
    return disc * (G - b) * valid / n_episodes


def _step_logp(theta, data):
    """log pi_theta(a|s) at every (padded) step, (T, N, H); ``theta`` (T, S, A)."""
    T, S, A = theta.shape
    lp = torch.log_softmax(theta, dim=-1).reshape(T, S * A)
    idx = (data["obs"] * A + data["action"]).reshape(T, -1)
    return lp.gather(1, idx).reshape(data["obs"].shape)


def _per_episode_grads(theta, data, coef):
    """``sum_{i in e} coef_i grad log pi_i`` for every episode e, (T, N, S, A): autograd on a
    per-episode copy of the parameters (the usual per-sample-gradient trick)."""
    T, S, A = theta.shape
    N = data["obs"].shape[1]
    rep = theta.detach().unsqueeze(1).expand(T, N, S, A).clone().requires_grad_(True)
    lp = torch.log_softmax(rep, dim=-1).reshape(T, N, S * A)
    idx = data["obs"] * A + data["action"]
    surrogate = (coef * lp.gather(2, idx)).sum()
    return torch.autograd.grad(surrogate, rep)[0]


def torch_maml_objective(theta0, tasks, n_episodes, alpha, gen, *, gamma=1.0, data=None,
                         baseline="leave-one-out", score_term=True, score_sign=1.0):
    """The outer surrogate whose gradient w.r.t. ``theta0`` (T, S, A) is the per-task MAML
    meta-gradient (ascent), and the adapted parameters ``theta1`` (values, no graph).

    ``data``: optional list of the three padded episode batches [D_in, D_out, D_h] to use instead
    of sampling (to check the estimator on the engine's own episodes).  ``baseline``,
    ``score_term`` and ``score_sign`` exist to break the estimator on purpose (checks must fail).
    """
    N = n_episodes
    feed = iter(data) if data is not None else None

    def sample(theta):
        if feed is not None:
            return next(feed)
        with torch.no_grad():
            return torch_rollout(theta, tasks, N, gen)

    d_in = sample(theta0.detach())
    coef_in = torch_reinforce_coefs(d_in, gamma, N, baseline)
    g_in = torch.autograd.grad((coef_in * _step_logp(theta0, d_in)).sum(), theta0, retain_graph=True)[0]
    theta1_value = theta0.detach() + alpha * g_in
    d_out = sample(theta1_value)
    d_h = sample(theta0.detach())
    coef_h = torch_reinforce_coefs(d_h, gamma, N, baseline)
    lp_h = _step_logp(theta0, d_h)
    G = torch.autograd.grad((coef_h * lp_h).sum(), theta0, create_graph=True)[0]
    if score_term:
        c = _per_episode_grads(theta0, d_h, coef_h) * N                     # g_e, (T, N, S, A)
        if N > 1:
            c = c - (c.sum(dim=1, keepdim=True) - c) / (N - 1)              # leave-one-out
        logp_e = (lp_h * d_h["valid"]).sum(dim=-1)                          # log p(tau_e) + const
        G = G + score_sign * torch.einsum("tn,tnsa->tsa", logp_e - logp_e.detach(), c) / N
    theta1 = theta0 + alpha * (g_in + G - G.detach())
    coef_out = torch_reinforce_coefs(d_out, gamma, N, baseline)
    return (coef_out * _step_logp(theta1, d_out)).sum(), theta1_value


class TorchGridNavigation:
    """GridNavigation tasks sampled as tensors: goal -> reward table and next-state table."""

    MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))

    def __init__(self, size, horizon, goals, gen):
        self.size, self.horizon, self.gen = size, horizon, gen
        self.S, self.A = size * size, len(self.MOVES)
        cells = torch.arange(self.S)
        self.rows, self.cols = cells // size, cells % size
        moves = torch.tensor(self.MOVES)
        nr = (self.rows[:, None] + moves[None, :, 0]).clamp(0, size - 1)
        nc = (self.cols[:, None] + moves[None, :, 1]).clamp(0, size - 1)
        self.next = nr * size + nc                                    # (S, A)
        self.goals = torch.as_tensor(np.asarray(goals), dtype=torch.int64)
        self.centre = (size // 2) * size + size // 2

    def from_goals(self, goal):
        T = goal.shape[0]
        d2 = (self.rows[None] - goal[:, :1]) ** 2 + (self.cols[None] - goal[:, 1:]) ** 2
        cell_reward = -torch.sqrt(d2.to(torch.float64))               # (T, S)
        R = cell_reward[:, self.next]                                 # (T, S, A)
        terminal = torch.zeros((T, self.S), dtype=torch.bool)
        terminal[torch.arange(T), goal[:, 0] * self.size + goal[:, 1]] = True
        return TorchTasks(R, self.horizon, next_state=self.next.expand(T, self.S, self.A),
                          terminal=terminal, start=torch.full((T,), self.centre, dtype=torch.int64))

    def sample(self, n):
        idx = torch.randint(len(self.goals), (n,), generator=self.gen)
        return self.from_goals(self.goals[idx])


class TorchMAML:
    """MAML, K = 1, meta-batch of tasks batched as tensors; Adam on the meta-parameters phi."""

    def __init__(self, sampler, n_tasks, n_episodes, inner_lr, meta_lr, gen, gamma=1.0):
        self.sampler, self.n_tasks, self.n_episodes = sampler, n_tasks, n_episodes
        self.alpha, self.gamma, self.gen = inner_lr, gamma, gen
        self.phi = torch.zeros((sampler.S, sampler.A), dtype=torch.float64, requires_grad=True)
        self.opt = torch.optim.Adam([self.phi], lr=meta_lr)

    def meta_step(self):
        tasks = self.sampler.sample(self.n_tasks)
        T = tasks.T
        theta0 = self.phi.unsqueeze(0).expand(T, tasks.S, tasks.A)
        objective, _ = torch_maml_objective(theta0, tasks, self.n_episodes, self.alpha, self.gen,
                                            gamma=self.gamma)
        self.opt.zero_grad(set_to_none=True)
        (-objective / T).backward()
        self.opt.step()


class TorchMAMLLoop(TorchMAML):
    """The per-task loop a learn2learn user writes: for each task, rollout, inner gradient,
    adapted parameters (create_graph), fresh rollouts, outer loss, backward; then Adam."""

    def meta_step(self):
        tasks = self.sampler.sample(self.n_tasks)
        T = tasks.T
        self.opt.zero_grad(set_to_none=True)
        for t in range(T):
            objective, _ = torch_maml_objective(self.phi.unsqueeze(0), tasks.select(t), self.n_episodes,
                                                self.alpha, self.gen, gamma=self.gamma)
            (-objective / T).backward()
        self.opt.step()


def torch_maml_directions(theta0, tasks, n_episodes, alpha, gen, *, loop=False, data=None, **kwargs):
    """Per-task meta-gradients (T, S, A) (numpy) and adapted parameters theta1 (T, S, A), batched or
    one task at a time (``loop``).  ``data``: see :func:`torch_maml_objective`."""
    theta0 = torch.from_numpy(np.array(theta0, dtype=np.float64))
    T = theta0.shape[0]
    if not loop:
        leaf = theta0.clone().requires_grad_(True)
        objective, theta1 = torch_maml_objective(leaf, tasks, n_episodes, alpha, gen, data=data, **kwargs)
        return torch.autograd.grad(objective, leaf)[0].numpy(), theta1.numpy()
    dirs, thetas = [], []
    for t in range(T):
        leaf = theta0[t:t + 1].clone().requires_grad_(True)
        sub = None if data is None else [{k: v[t:t + 1] for k, v in d.items()} for d in data]
        objective, theta1 = torch_maml_objective(leaf, tasks.select(t), n_episodes, alpha, gen, data=sub,
                                                 **kwargs)
        dirs.append(torch.autograd.grad(objective, leaf)[0])
        thetas.append(theta1)
    return torch.cat(dirs).numpy(), torch.cat(thetas).numpy()
