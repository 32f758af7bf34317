"""Tabular environment stepping and fused rollouts (Cython twin of :mod:`metarl_fast.reference.envs`).

The ``def`` functions validate with the shared checks of the reference module, draw random
numbers in the documented order (bulk fills from the Generator's own BitGenerator, equal to
``rng.random(n)`` / ``rng.standard_normal(n)``) and run the ``nogil`` kernels of ``envs.pxd``.

``rollout`` (per step of ``TabularMDPs()``: three draws, two table searches, five output writes):
the start, action and reward-noise blocks are drawn straight into the output arrays that consume
them (episode_return, logp, reward: every entry is read before its slot is written), the
next-state uniforms a lockstep group at a time into a small buffer (the last block of the stream,
so drawing it group by group keeps the order), and episodes without terminal states run four at a
time in loops compiled per reward rule and CDF row width (fused-type tags), so the searches are
straight runs of vector compares.  NumPy's fills (mostly the ziggurat normal) are over half of the
instructions per step; the random stream itself is fixed by the reference.
"""
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.math cimport INFINITY
from libc.string cimport memmove, memset
from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport (random_standard_exponential_fill,
                                           random_standard_uniform_fill)

# rng.standard_normal()'s values, without NumPy's mispredicted sign branch (see normal.pyx)
from metarl_fast._core.normal cimport standard_normal_fill

from metarl_fast._core.mf_exp cimport mf_exp_nonpos, mf_exp_nonpos_block
from metarl_fast._core.mf_signals cimport mf_pending_t, mf_raise_pending, mf_signal_raised
from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast.reference import envs as _reference
from metarl_fast.reference.envs import check_rollout_args, check_step_args, check_vec_args
from metarl_fast.memory import populated_empty
from metarl_fast.tasks import _NO_GUIDE, EnvTables

_Generator = np.random.Generator

cnp.import_array()

cdef extern from *:
    """
    /* Prefetch n_bytes from p.  The empty volatile asm keeps GCC from classing the caller as a
       side-effect-free function (prefetches do not count as effects) and deleting its calls. */
    static inline void mf_prefetch_range(const void *p, Py_ssize_t n_bytes)
    {
    #if defined(__GNUC__) || defined(__clang__)
        const char *c = (const char *)p;
        for (Py_ssize_t off = 0; off < n_bytes; off += 64) {
            __builtin_prefetch(c + off, 0, 3);
        }
        __asm__ __volatile__("" : : "r"(c));
    #else
        (void)p; (void)n_bytes;
    #endif
    }
    """
    void mf_prefetch_range(const void* p, intp_t n_bytes) noexcept nogil

cdef extern from *:
    """
    /* Number of c[0..n) that are <= target: branch-free, two-lane vector compares where the
       compiler has GCC vector extensions; always inlined, so a constant n unrolls completely. */
    #if defined(__GNUC__) || defined(__clang__)
    typedef double mf_v2d __attribute__((vector_size(16), aligned(8), may_alias));
    typedef long long mf_v2i __attribute__((vector_size(16)));
    static inline __attribute__((always_inline))
    Py_ssize_t mf_count_le(const double *c, Py_ssize_t n, double target)
    {
        mf_v2d t = {target, target};
        mf_v2i acc = {0, 0};
        Py_ssize_t j = 0, k;
        for (; j + 4 <= n; j += 4) {
            mf_v2d lo = *(const mf_v2d *)(c + j);
            mf_v2d hi = *(const mf_v2d *)(c + j + 2);
            acc += (mf_v2i)(lo <= t) + (mf_v2i)(hi <= t);  /* true lanes are -1 */
        }
        if (j + 2 <= n) {
            mf_v2d lo = *(const mf_v2d *)(c + j);
            acc += (mf_v2i)(lo <= t);
            j += 2;
        }
        k = (Py_ssize_t)-(acc[0] + acc[1]);
        if (j < n) {
            k += c[j] <= target;
        }
        return k;
    }
    #else
    static inline Py_ssize_t mf_count_le(const double *c, Py_ssize_t n, double target)
    {
        Py_ssize_t k = 0;
        for (Py_ssize_t j = 0; j < n; j++) k += c[j] <= target;
        return k;
    }
    #endif
    """
    intp_t mf_count_le(const double* c, intp_t n, double target) noexcept nogil

cdef extern from *:
    """
    /* mf_count_le for n a multiple of 4 (rows of tasks.padded_cdf_rows): a jump into a straight
       run of compares for n <= 16 (n is the same for every row of a rollout, so the jump is
       predicted), a loop beyond. */
    #if defined(__GNUC__) || defined(__clang__)
    #define MF_LE4(j) do { \
            mf_v2d lo_ = *(const mf_v2d *)(c + (j)); \
            mf_v2d hi_ = *(const mf_v2d *)(c + (j) + 2); \
            acc += (mf_v2i)(lo_ <= t) + (mf_v2i)(hi_ <= t); \
        } while (0)
    static inline __attribute__((always_inline))
    Py_ssize_t mf_count_le4(const double *c, Py_ssize_t n, double target)
    {
        mf_v2d t = {target, target};
        mf_v2i acc = {0, 0};
        switch (n) {
        case 16: MF_LE4(12); /* fall through */
        case 12: MF_LE4(8);  /* fall through */
        case 8:  MF_LE4(4);  /* fall through */
        case 4:  MF_LE4(0);  /* fall through */
        case 0:  break;
        default:
            for (Py_ssize_t j = 0; j < n; j += 4) MF_LE4(j);
        }
        return (Py_ssize_t)-(acc[0] + acc[1]);
    }
    #else
    #define mf_count_le4 mf_count_le
    #endif
    """
    intp_t mf_count_le4(const double* c, intp_t n, double target) noexcept nogil


cdef inline const double* _dptr(cnp.ndarray a):
    return <const double*> cnp.PyArray_DATA(a)


cdef inline const int64_t* _iptr(cnp.ndarray a):
    return <const int64_t*> cnp.PyArray_DATA(a)


cdef int fill_tables(object tables, EnvTablesC* out) except -1:
    out.n_tasks = tables.n_tasks
    out.n_states = tables.n_states
    out.n_actions = tables.n_actions
    out.horizon = tables.horizon
    out.trans_cdf_padded = _dptr(tables.trans_cdf_padded)
    out.trans_stride = tables.trans_cdf_padded.shape[3]
    out.trans_guide = <const int32_t*> cnp.PyArray_DATA(tables.trans_guide)
    out.guide_buckets = tables.trans_guide.shape[3] - 1
    out.has_terminal = 1 if tables.has_terminal else 0
    out.next_state = _iptr(tables.next_state)
    out.stochastic_transitions = 1 if tables.stochastic_transitions else 0
    out.reward_mean = _dptr(tables.reward_mean)
    out.reward_kind = tables.reward_kind
    out.reward_std = _dptr(tables.reward_std)
    out.reward_next = _dptr(tables.reward_next)
    out.start_cdf = _dptr(tables.start_cdf)
    out.start_state = _iptr(tables.start_state)
    out.stochastic_start = 1 if tables.stochastic_start else 0
    out.terminal = <const uint8_t*> cnp.PyArray_DATA(tables.terminal)
    out.reward_outcomes = tables.reward_outcomes
    out.reward_values = _dptr(tables.reward_values)
    out.reward_cdf = _dptr(tables.reward_cdf)
    return 0


cdef inline intp_t inverse_cdf(const double* cdf, intp_t m, double u) noexcept nogil:
    """Number of entries of the running sum cdf[0..m) that are <= u * cdf[m-1].

    Equals the first j with u * cdf[m-1] < cdf[j]; cdf[m-1] itself never counts (u < 1, total
    > 0), so only m - 1 entries are compared.  Branch-free: no mispredicted jumps on random u.
    """
    cdef double target = u * cdf[m - 1]
    cdef intp_t j, k = 0
    for j in range(m - 1):
        k += cdf[j] <= target
    return k


cdef inline double outcome_reward(const EnvTablesC* t, intp_t row, double u) noexcept nogil:
    """The reward of the transition in flat row ``row`` ((task * S + s) * A + a) * S + s' drawn
    from its outcomes with the uniform ``u`` (KIND_OUTCOME; t may be a task_slice)."""
    cdef intp_t K = t.reward_outcomes
    return t.reward_values[row * K + inverse_cdf(t.reward_cdf + row * K, K, u)]


cdef inline intp_t sample_row(const double* row, intp_t L, double u) noexcept nogil:
    """Inverse CDF on one row laid out by tasks.padded_cdf_rows (L a multiple of 4, the total at
    row[L]): the number of the first L entries that are <= u * total."""
    cdef double target = u * row[L]
    if L == 4:
        return mf_count_le(row, 4, target)
    if L == 8:
        return mf_count_le(row, 8, target)
    if L == 12:
        return mf_count_le(row, 12, target)
    if L == 0:
        return 0
    return mf_count_le(row, L, target)


cdef inline intp_t guided_row(const double* row, intp_t L, const int32_t* guide, intp_t G,
                              double u) noexcept nogil:
    """sample_row's outcome on a wide row with a guide table (tasks.guide_rows, G >= 1 buckets):
    the search starts at the guide's lower bound for u's bucket and stops at the first sum above
    the target, so it reads about GUIDE_BUCKET_WIDTH sums instead of L."""
    cdef double target = u * row[L]
    cdef intp_t k = guide[<intp_t> (u * G)]
    while k < L and row[k] <= target:
        k += 1
    return k


cdef inline intp_t draw_transition(const EnvTablesC* t, const double* tcdf, const int32_t* tguide,
                                   intp_t sa, double u) noexcept nogil:
    """Next state of the row sa of one task's padded transition sums tcdf (and guide tguide)."""
    cdef intp_t Lp = t.trans_stride, G = t.guide_buckets
    if G > 0:
        return guided_row(tcdf + sa * Lp, Lp - 1, tguide + sa * (G + 1), G, u)
    return sample_row(tcdf + sa * Lp, Lp - 1, u)


cdef inline void prefetch_task(const EnvTablesC* t, intp_t i) noexcept nogil:
    """Ask for task i's tables before they are needed: each task's rows are read in a random
    order that hardware prefetchers cannot follow, and 1024 tasks' tables do not fit in cache."""
    cdef intp_t SA = t.n_states * t.n_actions
    if i >= t.n_tasks:
        return
    if t.stochastic_transitions:
        mf_prefetch_range(t.trans_cdf_padded + i * SA * t.trans_stride, SA * t.trans_stride * sizeof(double))
    else:
        mf_prefetch_range(t.next_state + i * SA, SA * sizeof(int64_t))
    mf_prefetch_range(t.reward_mean + i * SA, SA * sizeof(double))


cdef inline intp_t first_state(const EnvTablesC* t, intp_t i, const double* u_start, intp_t q) noexcept nogil:
    if t.stochastic_start:
        return inverse_cdf(t.start_cdf + i * t.n_states, t.n_states, u_start[q])
    return t.start_state[i]


cdef struct NextDraws:
    # Where the next-state uniforms come from: the pre-drawn (T, N, H) block ``pre``, or
    # ``bitgen`` (its lock held), a group of episodes at a time into ``chunk`` (room for
    # 4 * H values).  Groups are taken in episode order, so the stream is the same.
    const double* pre
    bitgen_t* bitgen
    double* chunk


cdef inline const double* next_draws(NextDraws* nd, intp_t q, intp_t n_episodes, intp_t H) noexcept nogil:
    """Next-state uniforms of episodes q .. q + n_episodes - 1 (episode q + j, step s at
    [j * H + s]); NULL when transitions are not random."""
    if nd.pre != NULL:
        return nd.pre + q * H
    if nd.bitgen == NULL:
        return NULL
    random_standard_uniform_fill(nd.bitgen, n_episodes * H, nd.chunk)
    return nd.chunk


cdef intp_t rollout_kernel(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                           const double* action_logp, const int64_t* policy_of_task,
                           intp_t n_episodes, const double* u_start, const double* u_act,
                           const double* noise, const double* u_next, RolloutOut* out) noexcept nogil:
    cdef NextDraws nd
    nd.pre = u_next if t.stochastic_transitions else NULL
    nd.bitgen = NULL
    nd.chunk = NULL
    return run_episodes(t, action_cdf, action_stride, action_logp, policy_of_task, n_episodes,
                        u_start, u_act, noise, &nd, out)


cdef intp_t rollout_draw_kernel(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                                const double* action_logp, const int64_t* policy_of_task,
                                intp_t n_episodes, bitgen_t* bitgen, RolloutOut* out) noexcept nogil:
    # in one piece, without looking at signals (the pxd's contract: OK or NO_MEMORY)
    return draw_and_run(t, action_cdf, action_stride, action_logp, policy_of_task, n_episodes,
                        bitgen, out, False)


cdef enum:
    ENVS_INTERRUPTED = -3

# Steps per chunk of a long rollout between two looks at pending signals (Ctrl-C): about 30 ms of
# work, so a KeyboardInterrupt arrives well within a second.  Tests shrink it (see below).
cdef intp_t rollout_chunk_steps = 1 << 20


def _set_rollout_chunk_steps(n):
    """For tests: the steps per chunk of the signal-checking rollout (returns the old value)."""
    global rollout_chunk_steps
    old = rollout_chunk_steps
    rollout_chunk_steps = max(1, int(n))
    return old


# The exception a signal handler raised inside a kernel, held (not set) until the kernel's
# caller has released the generator's lock: a C call made with an exception set is an error.
# (Signal handlers run in the main thread only, so one holder serves every call.)
cdef mf_pending_t _pending


cdef inline bint signal_raised() noexcept nogil:
    """Run pending signal handlers (the GIL taken briefly); True if one raised (its exception is
    then held for :func:`_raise_pending`)."""
    return mf_signal_raised(&_pending) != 0


cdef bint fill_or_interrupt(bitgen_t* bitgen, intp_t n, double* out, bint normal,
                            bint interruptible) noexcept nogil:
    """Fill ``out`` with n uniforms (or standard normals), the same stream as one fill; if
    ``interruptible``, in pieces with a look at pending signals between them.  True if a handler
    raised (``out`` incomplete)."""
    cdef intp_t done = 0, m
    cdef intp_t piece = rollout_chunk_steps if interruptible else n
    while done < n:
        if done > 0 and signal_raised():
            return True
        m = piece if n - done > piece else n - done
        if normal:
            standard_normal_fill(bitgen, m, out + done)
        else:
            random_standard_uniform_fill(bitgen, m, out + done)
        done += m
    return False


cdef void task_slice(const EnvTablesC* t, intp_t i0, intp_t n, EnvTablesC* sub) noexcept nogil:
    """``sub``: tasks i0 .. i0 + n - 1 of ``t`` (placeholder tables are not offset)."""
    cdef intp_t S = t.n_states, A = t.n_actions
    sub[0] = t[0]
    sub.n_tasks = n
    if t.stochastic_transitions:
        sub.trans_cdf_padded = t.trans_cdf_padded + i0 * S * A * t.trans_stride
        if t.guide_buckets > 0:
            sub.trans_guide = t.trans_guide + i0 * S * A * (t.guide_buckets + 1)
    sub.next_state = t.next_state + i0 * S * A
    sub.reward_mean = t.reward_mean + i0 * S * A
    sub.reward_std = t.reward_std + i0
    if t.reward_kind == KIND_TRANSITION:
        sub.reward_next = t.reward_next + i0 * S * A * S
    if t.reward_kind == KIND_OUTCOME:
        sub.reward_values = t.reward_values + i0 * S * A * S * t.reward_outcomes
        sub.reward_cdf = t.reward_cdf + i0 * S * A * S * t.reward_outcomes
    sub.start_cdf = t.start_cdf + i0 * S
    sub.start_state = t.start_state + i0
    sub.terminal = t.terminal + i0 * S


cdef intp_t draw_and_run(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                         const double* action_logp, const int64_t* policy_of_task,
                         intp_t n_episodes, bitgen_t* bitgen, RolloutOut* out,
                         bint interruptible) noexcept nogil:
    """Draw the random blocks in the documented order (the next-state uniforms streamed in
    episode order) and run the episodes; if ``interruptible``, in chunks of tasks with a look at
    pending signals between chunks (the same draws, the same steps).  Returns the number of
    steps, ENVS_NO_MEMORY, or ENVS_INTERRUPTED (a signal handler raised: its exception is held for
    _raise_pending and the outputs are incomplete)."""
    cdef intp_t T = t.n_tasks, H = t.horizon, N = n_episodes, cap = T * N * H
    cdef intp_t per_chunk = rollout_chunk_steps // (N * H) if interruptible else T
    cdef intp_t i0 = 0, n, k = 0, written, j, base
    cdef double* u_start = NULL
    cdef double* noise = NULL
    cdef double* u_next_all = NULL
    cdef bint outcome = t.reward_kind == KIND_OUTCOME
    cdef NextDraws nd
    cdef EnvTablesC sub
    cdef RolloutOut part
    if per_chunk < 1:
        per_chunk = 1
    nd.pre = NULL
    nd.bitgen = NULL
    nd.chunk = NULL
    if outcome and t.stochastic_transitions:
        # the reward-outcome block follows the next-state block in the stream: the next-state
        # uniforms cannot be streamed, they are drawn whole first
        u_next_all = <double*> malloc(cap * sizeof(double))
        if u_next_all == NULL:
            return ENVS_NO_MEMORY
    elif t.stochastic_transitions:
        nd.chunk = <double*> malloc(4 * H * sizeof(double))
        if nd.chunk == NULL:
            return ENVS_NO_MEMORY
        nd.bitgen = bitgen
    if t.stochastic_start:
        u_start = out.episode_return
        random_standard_uniform_fill(bitgen, T * N, u_start)
    # The random blocks live in output arrays until they are consumed (each entry is read before
    # its own slot is written): start uniforms in episode_return, action uniforms in logp, reward
    # noise in reward.
    if fill_or_interrupt(bitgen, cap, out.logp, False, interruptible):
        free(nd.chunk)
        free(u_next_all)
        return ENVS_INTERRUPTED
    if t.reward_kind == KIND_GAUSSIAN or t.reward_kind == KIND_BERNOULLI:
        noise = out.reward
        if fill_or_interrupt(bitgen, cap, noise, t.reward_kind == KIND_GAUSSIAN, interruptible):
            free(nd.chunk)
            return ENVS_INTERRUPTED
    if outcome:
        # next states (if random), then the reward-outcome uniforms, which live in reward (read
        # before their slot is written, as the noise)
        if u_next_all != NULL and fill_or_interrupt(bitgen, cap, u_next_all, False, interruptible):
            free(u_next_all)
            return ENVS_INTERRUPTED
        noise = out.reward
        if fill_or_interrupt(bitgen, cap, noise, False, interruptible):
            free(u_next_all)
            return ENVS_INTERRUPTED
    while i0 < T:
        if i0 > 0 and signal_raised():
            free(nd.chunk)
            free(u_next_all)
            return ENVS_INTERRUPTED
        n = per_chunk if T - i0 > per_chunk else T - i0
        task_slice(t, i0, n, &sub)
        if u_next_all != NULL:
            nd.pre = u_next_all + i0 * N * H
        # the chunk writes where its own random blocks are (its episodes' slots, as in one
        # piece), then its packed steps move down next to the previous chunks' (k <= base)
        base = i0 * N * H
        part.obs = out.obs + base
        part.action = out.action + base
        part.reward = out.reward + base
        part.next_obs = out.next_obs + base
        part.terminated = out.terminated + base
        part.truncated = out.truncated + base
        part.logp = out.logp + base
        part.task_id = out.task_id + base
        part.episode_length = out.episode_length + i0 * N
        part.episode_return = out.episode_return + i0 * N
        written = run_episodes(&sub, action_cdf, action_stride, action_logp, policy_of_task + i0, N,
                               NULL if u_start == NULL else u_start + i0 * N, part.logp,
                               NULL if noise == NULL else part.reward, &nd, &part)
        if k != base:
            memmove(out.obs + k, part.obs, written * sizeof(int64_t))
            memmove(out.action + k, part.action, written * sizeof(int64_t))
            memmove(out.reward + k, part.reward, written * sizeof(double))
            memmove(out.next_obs + k, part.next_obs, written * sizeof(int64_t))
            memmove(out.terminated + k, part.terminated, written * sizeof(uint8_t))
            memmove(out.truncated + k, part.truncated, written * sizeof(uint8_t))
            memmove(out.logp + k, part.logp, written * sizeof(double))
            memmove(out.task_id + k, part.task_id, written * sizeof(int64_t))
        if i0 > 0:
            for j in range(written):
                out.task_id[k + j] += i0
        k += written
        i0 += n
    free(nd.chunk)
    free(u_next_all)
    return k


cdef intp_t run_episodes(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                         const double* action_logp, const int64_t* policy_of_task,
                         intp_t n_episodes, const double* u_start, const double* u_act,
                         const double* noise, NextDraws* nd, RolloutOut* out) noexcept nogil:
    cdef intp_t q0 = 0, k0 = 0
    if t.reward_kind == KIND_OUTCOME:
        pass  # (not specialised: every episode in rollout_general)
    elif not t.has_terminal:
        q0 = rollout_fixed_length(t, action_cdf, action_stride, action_logp, policy_of_task,
                                  n_episodes, u_start, u_act, noise, nd, out)
        k0 = q0 * t.horizon
    else:
        q0 = rollout_lockstep(t, action_cdf, action_stride, action_logp, policy_of_task,
                              n_episodes, u_start, u_act, noise, nd, out, &k0)
    return rollout_general(t, action_cdf, action_stride, action_logp, policy_of_task, n_episodes,
                           q0, k0, u_start, u_act, noise, nd, out)


cdef intp_t rollout_general(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                            const double* action_logp, const int64_t* policy_of_task,
                            intp_t N, intp_t q0, intp_t k0, const double* u_start,
                            const double* u_act, const double* noise, NextDraws* nd,
                            RolloutOut* out) noexcept nogil:
    """Episodes q0 .. T*N-1 one after the other (any episode lengths), their steps written from
    k0 on; returns the total number of steps."""
    cdef intp_t T = t.n_tasks, H = t.horizon
    cdef intp_t S = t.n_states, A = t.n_actions, Lp = t.trans_stride
    cdef intp_t SA = S * A
    cdef int kind = t.reward_kind
    cdef bint stoch = t.stochastic_transitions
    cdef intp_t i, e, q, step, k, base, s, s2, a, sa
    cdef const double* acdf
    cdef const double* alogp
    cdef const double* tcdf
    cdef const int32_t* tguide
    cdef const int64_t* nstate
    cdef const double* rmean
    cdef const double* rnext
    cdef const uint8_t* term
    cdef const double* u_next
    cdef double std, r, ret
    cdef bint ended
    cdef int64_t* o_obs = out.obs
    cdef int64_t* o_act = out.action
    cdef double* o_rew = out.reward
    cdef int64_t* o_next = out.next_obs
    cdef uint8_t* o_term = out.terminated
    cdef uint8_t* o_trunc = out.truncated
    cdef double* o_logp = out.logp
    cdef int64_t* o_task = out.task_id
    k = k0
    for q in range(q0, T * N):
        i = q // N
        e = q - i * N
        if e == 0 or q == q0:
            prefetch_task(t, i + 1)
        acdf = action_cdf + policy_of_task[i] * S * Ap
        alogp = action_logp + policy_of_task[i] * SA
        tcdf = t.trans_cdf_padded + i * SA * Lp
        tguide = t.trans_guide + i * SA * (t.guide_buckets + 1)
        nstate = t.next_state + i * SA
        rmean = t.reward_mean + i * SA
        rnext = t.reward_next + i * SA * S
        term = t.terminal + i * S
        std = t.reward_std[i]
        base = q * H
        u_next = next_draws(nd, q, 1, H)
        s = first_state(t, i, u_start, q)
        ret = 0.0
        ended = False
        step = 0
        while step < H:
            a = sample_row(acdf + s * Ap, Ap - 1, u_act[base + step])
            sa = s * A + a
            if kind == KIND_GAUSSIAN:
                r = rmean[sa] + std * noise[base + step]
            elif kind == KIND_BERNOULLI:
                r = 1.0 if noise[base + step] < rmean[sa] else 0.0
            else:
                r = rmean[sa]
            if stoch:
                s2 = draw_transition(t, tcdf, tguide, sa, u_next[step])
            else:
                s2 = nstate[sa]
            if kind == KIND_TRANSITION:
                r = rnext[sa * S + s2]
            elif kind == KIND_OUTCOME:
                r = outcome_reward(t, (i * SA + sa) * S + s2, noise[base + step])
            ended = term[s2] != 0
            o_obs[k] = s
            o_act[k] = a
            o_rew[k] = r
            o_next[k] = s2
            o_term[k] = ended
            o_trunc[k] = 0
            o_logp[k] = alogp[sa]
            o_task[k] = i
            ret += r
            k += 1
            step += 1
            s = s2
            if ended:
                break
        if not ended:
            o_trunc[k - 1] = 1
        out.episode_length[q] = step
        out.episode_return[q] = ret
    return k


cdef struct Episode:
    intp_t s            # current state
    intp_t k            # output index of the next step
    intp_t task
    const double* acdf
    const double* alogp
    const double* tcdf
    const int32_t* tguide
    intp_t guide_buckets
    intp_t horizon
    const int64_t* nstate
    const double* rmean
    const double* rnext
    const double* un    # next-state uniforms of this episode, by step
    double std
    double ret
    const uint8_t* term  # terminal flags of the task's states
    intp_t length       # steps taken
    bint alive          # not yet terminated (lockstep with terminal states)


cdef inline void group_tasks(intp_t q, intp_t N, intp_t* task_of) noexcept nogil:
    """The tasks of episodes q .. q + 3 (one division for the four)."""
    cdef intp_t i = q // N, e = q - i * N, j
    for j in range(4):
        if e == N:
            i += 1
            e = 0
        task_of[j] = i
        e += 1


cdef inline void begin_episode(Episode* ep, const EnvTablesC* t, intp_t q, intp_t i,
                               const double* action_cdf, intp_t Ap, const double* action_logp,
                               const int64_t* policy_of_task, const double* u_start,
                               const double* un) noexcept nogil:
    """Episode q (of task i) starts: its table pointers, start state and output slot q * H."""
    cdef intp_t S = t.n_states, SA = t.n_states * t.n_actions
    ep.task = i
    ep.k = q * t.horizon
    ep.acdf = action_cdf + policy_of_task[i] * S * Ap
    ep.alogp = action_logp + policy_of_task[i] * SA
    ep.tcdf = t.trans_cdf_padded + i * SA * t.trans_stride
    ep.guide_buckets = t.guide_buckets
    ep.horizon = t.horizon
    ep.tguide = t.trans_guide + i * SA * (t.guide_buckets + 1)
    ep.nstate = t.next_state + i * SA
    ep.rmean = t.reward_mean + i * SA
    ep.rnext = t.reward_next + i * SA * S
    ep.un = un
    ep.std = t.reward_std[i]
    ep.s = first_state(t, i, u_start, q)
    ep.ret = 0.0
    ep.term = t.terminal + i * S
    ep.length = 0
    ep.alive = True


cdef struct Prefetcher:
    # Walks the per-task tables (transitions, mean rewards) a little ahead of the running tasks,
    # a few lines per step, so that requests never pile up (a burst can be dropped by the core).
    const char* cur         # next line of the transition tables to request
    const char* end         # end of all transition tables
    const char* rcur        # same for the mean-reward tables
    const char* rend
    intp_t table_bytes      # bytes of one task's transition table
    intp_t rtable_bytes
    intp_t lines            # lines of transition table requested per lockstep step
    intp_t rlines
    const char* limit       # cursor limits for the current lockstep group (prefetch_group)
    const char* rlimit


cdef inline void prefetch_init(Prefetcher* pf, const EnvTablesC* t, intp_t N) noexcept nogil:
    cdef intp_t SA = t.n_states * t.n_actions
    cdef intp_t steps_per_task = (N * t.horizon + 3) // 4  # lockstep steps spent on one task
    if t.stochastic_transitions:
        pf.cur = <const char*> t.trans_cdf_padded
        pf.table_bytes = SA * t.trans_stride * sizeof(double)
    else:
        pf.cur = <const char*> t.next_state
        pf.table_bytes = SA * sizeof(int64_t)
    pf.end = pf.cur + t.n_tasks * pf.table_bytes
    pf.rcur = <const char*> t.reward_mean
    pf.rtable_bytes = SA * sizeof(double)
    pf.rend = pf.rcur + t.n_tasks * pf.rtable_bytes
    # keep pace with the tasks (plus headroom), at most 16 lines a step; a task with fewer steps
    # than its table has lines reads only part of it, so fetching it all would waste bandwidth
    pf.lines = min(16, pf.table_bytes // (64 * steps_per_task) + 2)
    pf.rlines = min(16, pf.rtable_bytes // (64 * steps_per_task) + 1)
    if N * t.horizon < pf.table_bytes // 64:
        pf.end = pf.cur
    if N * t.horizon < pf.rtable_bytes // 64:
        pf.rend = pf.rcur


cdef inline void prefetch_group(Prefetcher* pf, const EnvTablesC* t, intp_t last_task) noexcept nogil:
    """Before a lockstep group whose last episode runs task last_task: the prefetch cursors may
    run up to the end of the tables of task last_task + 2."""
    cdef intp_t ahead = t.n_tasks - last_task - 3
    pf.limit = pf.end - ahead * pf.table_bytes
    pf.rlimit = pf.rend - ahead * pf.rtable_bytes


cdef inline void prefetch_step(Prefetcher* pf) noexcept nogil:
    """Request the next few lines of the tables, up to the limits set by prefetch_group."""
    if pf.cur < pf.limit:
        mf_prefetch_range(pf.cur, pf.lines * 64)
        pf.cur += pf.lines * 64
    if pf.rcur < pf.rlimit:
        mf_prefetch_range(pf.rcur, pf.rlines * 64)
        pf.rcur += pf.rlines * 64


# Compile-time rules for the specialised lockstep loops: fused-type tags (never instantiated), so
# each combination compiles to its own loop, without per-step dispatch and with the CDF searches
# unrolled for the common row widths (rows of tasks.padded_cdf_rows: L = 4, 8, 12 or 16
# compared entries; "Any" searches a width known only at run time).
cdef struct NoNoise:
    char unused
cdef struct GaussianNoise:
    char unused
cdef struct BernoulliNoise:
    char unused
cdef struct TransitionReward:
    char unused
cdef struct FixedNext:
    char unused
cdef struct RandomNext4:
    char unused
cdef struct RandomNext8:
    char unused
cdef struct RandomNext12:
    char unused
cdef struct RandomNext16:
    char unused
cdef struct RandomNextAny:
    char unused
cdef struct RandomNextGuided:
    char unused
cdef struct Actions4:
    char unused
cdef struct ActionsAny:
    char unused

ctypedef fused RewardRule:
    NoNoise
    GaussianNoise
    BernoulliNoise
    TransitionReward

ctypedef fused NextRule:
    FixedNext
    RandomNext4
    RandomNext8
    RandomNext12
    RandomNext16
    RandomNextAny
    RandomNextGuided

ctypedef fused ActionRule:
    Actions4
    ActionsAny


cdef inline void prefetch_next_guides(const Episode* ep, intp_t s2, intp_t step, intp_t A) noexcept nogil:
    """Ask for the guide entries the episode's next draw may read -- its uniform is known, its
    action not yet: one line per action of state s2 -- while the other lanes step (wide tables
    do not fit in cache, and each draw's guide entry is a random access)."""
    cdef intp_t G = ep.guide_buckets, a
    cdef const int32_t* entry
    if step + 1 >= ep.horizon:
        return
    entry = ep.tguide + s2 * A * (G + 1) + <intp_t> (ep.un[step + 1] * G)
    for a in range(A):
        mf_prefetch_range(entry + a * (G + 1), 1)


cdef inline void lane_step(Episode* ep, intp_t step, intp_t A, intp_t La, intp_t Lt, intp_t S,
                           const double* u_act, const double* noise,
                           int64_t* o_obs, int64_t* o_act, double* o_rew, int64_t* o_next,
                           double* o_logp, RewardRule* reward_rule, NextRule* next_rule,
                           ActionRule* action_rule) noexcept nogil:
    """Step ``step`` of one lockstep episode under the given rules, written at ep.k
    (terminated/truncated/task_id are written by the caller).  u_act may be o_logp and noise
    may be o_rew: each entry is read before its slot is overwritten."""
    cdef intp_t k = ep.k, s = ep.s, a, sa, s2
    cdef const double* row
    cdef double r
    if ActionRule is Actions4:
        row = ep.acdf + s * 5
        a = mf_count_le(row, 4, u_act[k] * row[4])
    else:
        row = ep.acdf + s * (La + 1)
        a = mf_count_le4(row, La, u_act[k] * row[La])
    sa = s * A + a
    if RewardRule is GaussianNoise:
        r = ep.rmean[sa] + ep.std * noise[k]
    elif RewardRule is BernoulliNoise:
        r = 1.0 if noise[k] < ep.rmean[sa] else 0.0
    else:
        r = ep.rmean[sa]
    if NextRule is FixedNext:
        s2 = ep.nstate[sa]
    elif NextRule is RandomNext4:
        row = ep.tcdf + sa * 5
        s2 = mf_count_le(row, 4, ep.un[step] * row[4])
    elif NextRule is RandomNext8:
        row = ep.tcdf + sa * 9
        s2 = mf_count_le(row, 8, ep.un[step] * row[8])
    elif NextRule is RandomNext12:
        row = ep.tcdf + sa * 13
        s2 = mf_count_le(row, 12, ep.un[step] * row[12])
    elif NextRule is RandomNext16:
        row = ep.tcdf + sa * 17
        s2 = mf_count_le(row, 16, ep.un[step] * row[16])
    elif NextRule is RandomNextGuided:
        s2 = guided_row(ep.tcdf + sa * (Lt + 1), Lt, ep.tguide + sa * (ep.guide_buckets + 1),
                        ep.guide_buckets, ep.un[step])
        prefetch_next_guides(ep, s2, step, A)
    else:
        row = ep.tcdf + sa * (Lt + 1)
        s2 = mf_count_le4(row, Lt, ep.un[step] * row[Lt])
    if RewardRule is TransitionReward:
        r = ep.rnext[sa * S + s2]
    o_obs[k] = s
    o_act[k] = a
    o_rew[k] = r
    o_next[k] = s2
    o_logp[k] = ep.alogp[sa]
    ep.ret += r
    ep.s = s2
    ep.k = k + 1


cdef intp_t fixed_length_groups(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                                const double* action_logp, const int64_t* policy_of_task,
                                intp_t N, const double* u_start, const double* u_act,
                                const double* noise, NextDraws* nd, RolloutOut* out,
                                RewardRule* reward_rule, NextRule* next_rule,
                                ActionRule* action_rule) noexcept nogil:
    """rollout_fixed_length's loop for one combination of rules."""
    cdef intp_t H = t.horizon, Q = t.n_tasks * N
    cdef intp_t S = t.n_states, A = t.n_actions, La = Ap - 1, Lt = t.trans_stride - 1
    cdef intp_t q, step
    cdef const double* un = NULL
    cdef Episode e0, e1, e2, e3
    cdef intp_t task_of[4]
    cdef Prefetcher pf
    cdef int64_t* o_obs = out.obs
    cdef int64_t* o_act = out.action
    cdef double* o_rew = out.reward
    cdef int64_t* o_next = out.next_obs
    cdef double* o_logp = out.logp
    prefetch_init(&pf, t, N)
    q = 0
    while q + 4 <= Q:
        if NextRule is not FixedNext:
            un = next_draws(nd, q, 4, H)
        group_tasks(q, N, task_of)
        begin_episode(&e0, t, q, task_of[0], action_cdf, Ap, action_logp, policy_of_task, u_start, un)
        begin_episode(&e1, t, q + 1, task_of[1], action_cdf, Ap, action_logp, policy_of_task, u_start, un + H if un != NULL else NULL)
        begin_episode(&e2, t, q + 2, task_of[2], action_cdf, Ap, action_logp, policy_of_task, u_start, un + 2 * H if un != NULL else NULL)
        begin_episode(&e3, t, q + 3, task_of[3], action_cdf, Ap, action_logp, policy_of_task, u_start, un + 3 * H if un != NULL else NULL)
        prefetch_group(&pf, t, e3.task)
        for step in range(H):
            prefetch_step(&pf)
            lane_step(&e0, step, A, La, Lt, S, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp, reward_rule, next_rule, action_rule)
            lane_step(&e1, step, A, La, Lt, S, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp, reward_rule, next_rule, action_rule)
            lane_step(&e2, step, A, La, Lt, S, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp, reward_rule, next_rule, action_rule)
            lane_step(&e3, step, A, La, Lt, S, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp, reward_rule, next_rule, action_rule)
        out.episode_return[q] = e0.ret
        out.episode_return[q + 1] = e1.ret
        out.episode_return[q + 2] = e2.ret
        out.episode_return[q + 3] = e3.ret
        q += 4
    return q


cdef intp_t groups_for_actions(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                               const double* action_logp, const int64_t* policy_of_task,
                               intp_t N, const double* u_start, const double* u_act,
                               const double* noise, NextDraws* nd, RolloutOut* out,
                               RewardRule* reward_rule, NextRule* next_rule) noexcept nogil:
    if Ap == 5:
        return fixed_length_groups(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                   noise, nd, out, reward_rule, next_rule, <Actions4*> NULL)
    return fixed_length_groups(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                               noise, nd, out, reward_rule, next_rule, <ActionsAny*> NULL)


cdef intp_t groups_for_next(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                            const double* action_logp, const int64_t* policy_of_task,
                            intp_t N, const double* u_start, const double* u_act,
                            const double* noise, NextDraws* nd, RolloutOut* out,
                            RewardRule* reward_rule) noexcept nogil:
    cdef intp_t Lt = t.trans_stride - 1
    if not t.stochastic_transitions:
        return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                  noise, nd, out, reward_rule, <FixedNext*> NULL)
    if Lt == 4:
        return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                  noise, nd, out, reward_rule, <RandomNext4*> NULL)
    if Lt == 8:
        return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                  noise, nd, out, reward_rule, <RandomNext8*> NULL)
    if Lt == 12:
        return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                  noise, nd, out, reward_rule, <RandomNext12*> NULL)
    if Lt == 16:
        return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                  noise, nd, out, reward_rule, <RandomNext16*> NULL)
    if t.guide_buckets > 0:
        return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                                  noise, nd, out, reward_rule, <RandomNextGuided*> NULL)
    return groups_for_actions(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act,
                              noise, nd, out, reward_rule, <RandomNextAny*> NULL)


cdef intp_t rollout_fixed_length(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                                 const double* action_logp, const int64_t* policy_of_task,
                                 intp_t N, const double* u_start, const double* u_act,
                                 const double* noise, NextDraws* nd, RolloutOut* out) noexcept nogil:
    """Without terminal states every episode has H steps, so four episodes advance in lockstep:
    their serial chains (state -> action -> next state) interleave and hide each other's
    latencies.  Step k of episode q is written at q * H + k, as in rollout_general.  Returns the
    number of episodes done (a multiple of 4); the rest go to rollout_general."""
    cdef intp_t H = t.horizon, q, j
    cdef int kind = t.reward_kind
    if kind == KIND_GAUSSIAN:
        q = groups_for_next(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act, noise, nd, out, <GaussianNoise*> NULL)
    elif kind == KIND_BERNOULLI:
        q = groups_for_next(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act, noise, nd, out, <BernoulliNoise*> NULL)
    elif kind == KIND_TRANSITION:
        q = groups_for_next(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act, noise, nd, out, <TransitionReward*> NULL)
    else:
        q = groups_for_next(t, action_cdf, Ap, action_logp, policy_of_task, N, u_start, u_act, noise, nd, out, <NoNoise*> NULL)
    # the columns that do not depend on the draws, in bulk
    memset(out.terminated, 0, q * H)
    memset(out.truncated, 0, q * H)
    for j in range(q):
        out.truncated[j * H + H - 1] = 1
        out.episode_length[j] = H
    j = 0  # task_id: one run of N * H steps per task
    while j * N < q:
        fill_int64(out.task_id + j * N * H, min(N, q - j * N) * H, j)
        j += 1
    return q


cdef inline void fill_int64(int64_t* p, intp_t n, int64_t value) noexcept nogil:
    cdef intp_t j
    for j in range(n):
        p[j] = value


cdef inline void advance_live(Episode* ep, intp_t step, intp_t A, intp_t Ap, intp_t Lp, intp_t S,
                              int kind, bint stoch, const double* u_act, const double* noise,
                              int64_t* o_obs, int64_t* o_act, double* o_rew,
                              int64_t* o_next, double* o_logp) noexcept nogil:
    """One step of an episode that may end in a terminal state; a finished one stays put."""
    cdef intp_t k = ep.k, s = ep.s, a, sa, s2
    cdef double r
    if not ep.alive:
        return
    a = sample_row(ep.acdf + s * Ap, Ap - 1, u_act[k])
    sa = s * A + a
    if kind == KIND_GAUSSIAN:
        r = ep.rmean[sa] + ep.std * noise[k]
    elif kind == KIND_BERNOULLI:
        r = 1.0 if noise[k] < ep.rmean[sa] else 0.0
    else:
        r = ep.rmean[sa]
    if stoch:
        if ep.guide_buckets > 0:
            s2 = guided_row(ep.tcdf + sa * Lp, Lp - 1, ep.tguide + sa * (ep.guide_buckets + 1),
                            ep.guide_buckets, ep.un[step])
        else:
            s2 = sample_row(ep.tcdf + sa * Lp, Lp - 1, ep.un[step])
    else:
        s2 = ep.nstate[sa]
    if kind == KIND_TRANSITION:
        r = ep.rnext[sa * S + s2]
    o_obs[k] = s
    o_act[k] = a
    o_rew[k] = r
    o_next[k] = s2
    o_logp[k] = ep.alogp[sa]
    ep.ret += r
    ep.s = s2
    ep.k = k + 1
    ep.length += 1
    if ep.term[s2]:
        ep.alive = False


cdef inline intp_t settle(Episode* ep, intp_t q, intp_t H, intp_t k_out, RolloutOut* out) noexcept nogil:
    """Move episode q's steps from its slot q * H down to k_out (the steps of the episodes before
    it end there) and write its constant columns; returns the new k_out."""
    cdef intp_t n = ep.length, src = q * H
    if src != k_out:
        memmove(out.obs + k_out, out.obs + src, n * sizeof(int64_t))
        memmove(out.action + k_out, out.action + src, n * sizeof(int64_t))
        memmove(out.reward + k_out, out.reward + src, n * sizeof(double))
        memmove(out.next_obs + k_out, out.next_obs + src, n * sizeof(int64_t))
        memmove(out.logp + k_out, out.logp + src, n * sizeof(double))
    memset(out.terminated + k_out, 0, n)
    memset(out.truncated + k_out, 0, n)
    if ep.alive:
        out.truncated[k_out + n - 1] = 1
    else:
        out.terminated[k_out + n - 1] = 1
    fill_int64(out.task_id + k_out, n, ep.task)
    out.episode_length[q] = n
    out.episode_return[q] = ep.ret
    return k_out + n


cdef intp_t rollout_lockstep(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                             const double* action_logp, const int64_t* policy_of_task,
                             intp_t N, const double* u_start, const double* u_act,
                             const double* noise, NextDraws* nd, RolloutOut* out,
                             intp_t* k_end) noexcept nogil:
    """rollout_fixed_length for tasks with terminal states: four episodes in lockstep, each
    written to its slot q * H and moved down next to its predecessor once the four are done
    (while the data is still in cache).  Sets k_end to the steps written and returns the
    number of episodes done (a multiple of 4)."""
    cdef intp_t H = t.horizon, Q = t.n_tasks * N
    cdef intp_t S = t.n_states, A = t.n_actions, Lp = t.trans_stride
    cdef int kind = t.reward_kind
    cdef bint stoch = t.stochastic_transitions
    cdef intp_t q, step, k_out = 0
    cdef const double* un = NULL
    cdef Episode e0, e1, e2, e3
    cdef intp_t task_of[4]
    cdef Prefetcher pf
    cdef int64_t* o_obs = out.obs
    cdef int64_t* o_act = out.action
    cdef double* o_rew = out.reward
    cdef int64_t* o_next = out.next_obs
    cdef double* o_logp = out.logp
    prefetch_init(&pf, t, N)
    q = 0
    while q + 4 <= Q:
        un = next_draws(nd, q, 4, H)
        group_tasks(q, N, task_of)
        begin_episode(&e0, t, q, task_of[0], action_cdf, Ap, action_logp, policy_of_task, u_start, un)
        begin_episode(&e1, t, q + 1, task_of[1], action_cdf, Ap, action_logp, policy_of_task, u_start, un + H if un != NULL else NULL)
        begin_episode(&e2, t, q + 2, task_of[2], action_cdf, Ap, action_logp, policy_of_task, u_start, un + 2 * H if un != NULL else NULL)
        begin_episode(&e3, t, q + 3, task_of[3], action_cdf, Ap, action_logp, policy_of_task, u_start, un + 3 * H if un != NULL else NULL)
        prefetch_group(&pf, t, e3.task)
        for step in range(H):
            prefetch_step(&pf)
            advance_live(&e0, step, A, Ap, Lp, S, kind, stoch, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp)
            advance_live(&e1, step, A, Ap, Lp, S, kind, stoch, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp)
            advance_live(&e2, step, A, Ap, Lp, S, kind, stoch, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp)
            advance_live(&e3, step, A, Ap, Lp, S, kind, stoch, u_act, noise, o_obs, o_act, o_rew, o_next, o_logp)
            if not (e0.alive or e1.alive or e2.alive or e3.alive):
                break
        k_out = settle(&e0, q, H, k_out, out)
        k_out = settle(&e1, q + 1, H, k_out, out)
        k_out = settle(&e2, q + 2, H, k_out, out)
        k_out = settle(&e3, q + 3, H, k_out, out)
        q += 4
    k_end[0] = k_out
    return q


cdef void vec_reset_kernel(const EnvTablesC* t, const int64_t* task_of_env, int64_t* state,
                           int64_t* elapsed, intp_t n, bitgen_t* bitgen) noexcept nogil:
    cdef intp_t j
    for j in range(n):
        if t.stochastic_start:
            state[j] = inverse_cdf(t.start_cdf + task_of_env[j] * t.n_states, t.n_states,
                                   next_uniform(bitgen))
        else:
            state[j] = t.start_state[task_of_env[j]]
        elapsed[j] = 0


cdef intp_t vec_step_kernel(const EnvTablesC* t, const int64_t* task_of_env, int64_t* state,
                            int64_t* elapsed, const int64_t* actions, intp_t n, bitgen_t* bitgen,
                            double* scratch, int64_t* obs_out, double* reward_out,
                            uint8_t* terminated_out, uint8_t* truncated_out,
                            int64_t* final_obs_out) noexcept nogil:
    cdef intp_t S = t.n_states, A = t.n_actions
    cdef intp_t j, i, s, a, sa, s2
    cdef int kind = t.reward_kind
    cdef double r
    cdef bint ended, trunc
    # Draw order: reward noise block, next-state block, reward-outcome block, then one start
    # draw per ended episode.
    if kind == KIND_GAUSSIAN:
        standard_normal_fill(bitgen, n, reward_out)
    elif kind == KIND_BERNOULLI:
        random_standard_uniform_fill(bitgen, n, reward_out)
    if t.stochastic_transitions:
        random_standard_uniform_fill(bitgen, n, scratch)
    if kind == KIND_OUTCOME:  # reward-outcome uniforms, read before each slot is written
        random_standard_uniform_fill(bitgen, n, reward_out)
    for j in range(n):
        i = task_of_env[j]
        s = state[j]
        a = actions[j]
        sa = (i * S + s) * A + a
        if kind == KIND_GAUSSIAN:
            r = t.reward_mean[sa] + t.reward_std[i] * reward_out[j]
        elif kind == KIND_BERNOULLI:
            r = 1.0 if reward_out[j] < t.reward_mean[sa] else 0.0
        else:
            r = t.reward_mean[sa]
        if t.stochastic_transitions:
            s2 = draw_transition(t, t.trans_cdf_padded, t.trans_guide, sa, scratch[j])
        else:
            s2 = t.next_state[sa]
        if kind == KIND_TRANSITION:
            r = t.reward_next[sa * S + s2]
        elif kind == KIND_OUTCOME:
            r = outcome_reward(t, sa * S + s2, reward_out[j])
        ended = t.terminal[i * S + s2] != 0
        trunc = (not ended) and elapsed[j] + 1 >= t.horizon
        reward_out[j] = r
        terminated_out[j] = ended
        truncated_out[j] = trunc
        final_obs_out[j] = s2
        state[j] = s2
        elapsed[j] += 1
    for j in range(n):
        if terminated_out[j] or truncated_out[j]:
            i = task_of_env[j]
            if t.stochastic_start:
                state[j] = inverse_cdf(t.start_cdf + i * S, S, next_uniform(bitgen))
            else:
                state[j] = t.start_state[i]
            elapsed[j] = 0
        obs_out[j] = state[j]
    return ENVS_OK


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

cdef inline cnp.ndarray _empty(intp_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef inline bint _is_array(object x, int typenum, int ndim):
    """x is a C-contiguous, aligned, native-byte-order ndarray of this type and ndim."""
    return (type(x) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> x) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray> x) == ndim and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> x)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> x))


# the table limit of every size argument (metarl_fast._validate.MAX_TABLE_ENTRIES): a rollout
# of more steps goes to check_rollout_args, which names n_episodes
cdef intp_t MAX_TABLE_ENTRIES = 2**28


cdef bint _rollout_args_ok(object tables, object action_cdf, object action_logp,
                           object policy_of_task, object n_episodes, object rng):
    """C-level fast path of check_rollout_args: True if every argument is valid as given."""
    cdef intp_t n_pol, S, A, T, j, m
    cdef const double* c
    cdef const double* lp
    cdef const int64_t* pot
    if type(tables) is not EnvTables or type(n_episodes) is not int or not isinstance(rng, _Generator):
        return False
    if n_episodes < 1 or n_episodes > 2**40:
        return False
    if not (_is_array(action_cdf, cnp.NPY_DOUBLE, 3) and _is_array(action_logp, cnp.NPY_DOUBLE, 3)
            and _is_array(policy_of_task, cnp.NPY_INT64, 1)):
        return False
    S, A, T = tables.n_states, tables.n_actions, tables.n_tasks
    n_pol = cnp.PyArray_DIM(<cnp.ndarray> action_cdf, 0)
    if (n_pol < 1 or cnp.PyArray_DIM(<cnp.ndarray> action_cdf, 1) != S
            or cnp.PyArray_DIM(<cnp.ndarray> action_cdf, 2) != A
            or cnp.PyArray_DIM(<cnp.ndarray> action_logp, 0) != n_pol
            or cnp.PyArray_DIM(<cnp.ndarray> action_logp, 1) != S
            or cnp.PyArray_DIM(<cnp.ndarray> action_logp, 2) != A
            or cnp.PyArray_DIM(<cnp.ndarray> policy_of_task, 0) != T
            or T * <intp_t> n_episodes * tables.horizon > MAX_TABLE_ENTRIES):
        return False
    c = _dptr(action_cdf)
    lp = _dptr(action_logp)
    pot = _iptr(policy_of_task)
    for j in range(T):
        if pot[j] < 0 or pot[j] >= n_pol:
            return False
    for j in range(n_pol * S):
        if not (c[j * A] >= 0.0 and c[j * A + A - 1] > 0.0 and c[j * A + A - 1] < INFINITY):
            return False
        for m in range(1, A):
            if not (c[j * A + m] >= c[j * A + m - 1]):
                return False
    for j in range(n_pol * S * A):
        if lp[j] != lp[j] or lp[j] == INFINITY:
            return False
    return True


cdef int[10] ROLLOUT_OUT_TYPES = [cnp.NPY_INT64, cnp.NPY_INT64, cnp.NPY_DOUBLE, cnp.NPY_INT64,
                                  cnp.NPY_BOOL, cnp.NPY_BOOL, cnp.NPY_DOUBLE, cnp.NPY_INT64,
                                  cnp.NPY_INT64, cnp.NPY_DOUBLE]


cdef bint _rollout_out_ok(object out, intp_t n_steps, intp_t n_episodes, object action_cdf,
                          object action_logp, object policy_of_task):
    """C-level fast path of check_rollout_out: True if ``out`` is valid as given (the inputs
    already passed _rollout_args_ok or check_rollout_args)."""
    cdef const char* lo[13]
    cdef const char* hi[13]
    cdef intp_t j, m
    cdef cnp.ndarray x
    if type(out) is not tuple or len(<tuple> out) != 10:
        return False
    for j in range(13):
        if j < 10:
            if not _is_array((<tuple> out)[j], ROLLOUT_OUT_TYPES[j], 1):
                return False
            x = (<tuple> out)[j]
            if (not cnp.PyArray_ISWRITEABLE(x)
                    or cnp.PyArray_DIM(x, 0) < (n_steps if j < 8 else n_episodes)):
                return False
        else:
            x = (action_cdf, action_logp, policy_of_task)[j - 10]
        lo[j] = <const char*> cnp.PyArray_DATA(x)
        hi[j] = lo[j] + cnp.PyArray_NBYTES(x)
    for j in range(10):
        for m in range(j + 1, 13):
            if lo[j] < hi[m] and lo[m] < hi[j]:
                return False
    return True


cdef bint action_cdf_kernel(const double* x, double* cdf, double* z, intp_t n_rows,
                            intp_t A) noexcept nogil:
    """Rows of z = x - row max and cdf = running sums of mf_exp_nonpos(z), as the reference
    computes them; False (nothing trusted) if a row has NaN or +inf or is all -inf.  The
    exponentials of all rows in one vectorised block, then the running sums."""
    cdef intp_t j, m
    cdef double mx, v
    cdef double* c
    for j in range(n_rows):
        mx = -INFINITY
        for m in range(A):
            v = x[j * A + m]
            if not (v < INFINITY):  # NaN or +inf
                return False
            if v > mx:
                mx = v
        if mx == -INFINITY:
            return False
        for m in range(A):
            z[j * A + m] = x[j * A + m] - mx
    mf_exp_nonpos_block(z, cdf, n_rows * A)
    for j in range(n_rows):
        c = cdf + j * A
        for m in range(1, A):
            c[m] = c[m - 1] + c[m]
    return True


# tasks.GUIDE_MIN_WIDTH, GUIDE_BUCKET_WIDTH and the guide's margin 1 - 2**-40 (exact in binary)
cdef intp_t GUIDE_MIN_WIDTH = 32
cdef intp_t GUIDE_BUCKET_WIDTH = 4
cdef double GUIDE_MARGIN = 1.0 - 9.094947017729282e-13


cdef inline intp_t guide_buckets_of(intp_t L) noexcept nogil:
    return L // GUIDE_BUCKET_WIDTH if L >= GUIDE_MIN_WIDTH else 0


cdef inline void guide_row(const double* q, intp_t L, intp_t G, int32_t* guide) noexcept nogil:
    """tasks.guide_rows of one padded row q (L compared sums, the total at q[L]): guide[b] = the
    number of sums < b * (total * (margin / G)), by one merge of the sorted sums and thresholds."""
    cdef double scale = q[L] * (GUIDE_MARGIN / G)
    cdef double threshold
    cdef intp_t b, k = 0
    for b in range(G + 1):
        threshold = b * scale
        while k < L and q[k] < threshold:
            k += 1
        guide[b] = <int32_t> k


cdef inline void cdf_row(const double* p, double* q, intp_t m, intp_t L, int32_t* guide,
                         intp_t G) noexcept nogil:
    """One row's running sums (np.cumsum's order: c[j] = c[j - 1] + p[j]) in the padded layout
    ``q`` (tasks.padded_cdf_rows: the first m - 1 sums, +inf up to L, the total at L) and, if
    G > 0, its guide."""
    cdef intp_t j
    cdef double acc = 0.0
    for j in range(m - 1):
        acc = acc + p[j]
        q[j] = acc
    q[L] = acc + p[m - 1]
    for j in range(m - 1, L):
        q[j] = INFINITY
    if G > 0:
        guide_row(q, L, G, guide)


cdef inline void dirichlet_row(double* x, double* q, intp_t m, intp_t L, int32_t* guide,
                               intp_t G) noexcept nogil:
    """A row of exponentials ``x`` made a Dirichlet row as ``Generator.dirichlet`` does
    (``p = x * (1 / sum)``, in place) and laid out as cdf_row does."""
    cdef intp_t j
    cdef double acc = x[0], inv
    for j in range(1, m):
        acc = acc + x[j]
    inv = 1.0 / acc
    for j in range(m):
        x[j] = x[j] * inv
    cdf_row(x, q, m, L, guide, G)


cdef inline void dirichlet_rows4(double* x, double* q, intp_t m, intp_t L, int32_t* guide,
                                 intp_t G) noexcept nogil:
    """dirichlet_row on four consecutive rows (x: 4 * m exponentials, q: 4 rows of L + 1), the
    same arithmetic in the same order per row; the four rows' sums advance side by side, so
    their chains of dependent additions overlap instead of waiting on each other."""
    cdef double* x0 = x
    cdef double* x1 = x + m
    cdef double* x2 = x + 2 * m
    cdef double* x3 = x + 3 * m
    cdef double* q0 = q
    cdef double* q1 = q + (L + 1)
    cdef double* q2 = q + 2 * (L + 1)
    cdef double* q3 = q + 3 * (L + 1)
    cdef double a0 = x0[0], a1 = x1[0], a2 = x2[0], a3 = x3[0]
    cdef double i0, i1, i2, i3
    cdef intp_t j, r
    for j in range(1, m):
        a0 = a0 + x0[j]
        a1 = a1 + x1[j]
        a2 = a2 + x2[j]
        a3 = a3 + x3[j]
    i0 = 1.0 / a0
    i1 = 1.0 / a1
    i2 = 1.0 / a2
    i3 = 1.0 / a3
    a0 = a1 = a2 = a3 = 0.0
    for j in range(m - 1):
        a0 = a0 + x0[j] * i0
        q0[j] = a0
        a1 = a1 + x1[j] * i1
        q1[j] = a1
        a2 = a2 + x2[j] * i2
        q2[j] = a2
        a3 = a3 + x3[j] * i3
        q3[j] = a3
    q0[L] = a0 + x0[m - 1] * i0
    q1[L] = a1 + x1[m - 1] * i1
    q2[L] = a2 + x2[m - 1] * i2
    q3[L] = a3 + x3[m - 1] * i3
    for r in range(4):
        for j in range(m - 1, L):
            q[r * (L + 1) + j] = INFINITY
        if G > 0:
            guide_row(q + r * (L + 1), L, G, guide + r * (G + 1))


cdef tuple new_cdf_tables(tuple lead, intp_t L, intp_t G):
    """Empty padded sums (lead + (L + 1,)) and guide (lead + (G + 1,), or the placeholder)."""
    pad_arr = populated_empty(lead + (L + 1,), np.float64)
    guide_arr = populated_empty(lead + (G + 1,), np.int32) if G > 0 else _NO_GUIDE
    return pad_arr, guide_arr


cdef inline int32_t* guide_ptr(cnp.ndarray guide_arr, intp_t G):
    return <int32_t*> cnp.PyArray_DATA(guide_arr) if G > 0 else NULL


cdef tuple frozen(cnp.ndarray pad_arr, cnp.ndarray guide_arr):
    pad_arr.setflags(write=False)
    if guide_arr is not _NO_GUIDE:
        guide_arr.setflags(write=False)
    return pad_arr, guide_arr


def transition_cdfs(P):
    """``(padded, guide)`` of the rows of ``P`` (as the reference
    :func:`metarl_fast.reference.envs.transition_cdfs`, bit for bit), in one pass."""
    if not (isinstance(P, np.ndarray) and P.dtype == np.float64 and P.ndim >= 1
            and P.flags.c_contiguous and P.shape[P.ndim - 1] >= 1):
        raise TypeError("P must be a C-contiguous float64 array with a non-empty last axis")
    cdef intp_t m = P.shape[P.ndim - 1]
    cdef intp_t L = (m - 1 + 3) // 4 * 4
    cdef intp_t G = guide_buckets_of(L)
    cdef intp_t rows = P.size // m
    cdef cnp.ndarray pad_arr, guide_arr
    pad_arr, guide_arr = new_cdf_tables(P.shape[:P.ndim - 1], L, G)
    cdef const double* p = <const double*> cnp.PyArray_DATA(P)
    cdef double* q = <double*> cnp.PyArray_DATA(pad_arr)
    cdef int32_t* g = guide_ptr(guide_arr, G)
    cdef intp_t r
    with nogil:
        for r in range(rows):
            cdf_row(p + r * m, q + r * (L + 1), m, L, g + r * (G + 1) if G > 0 else NULL, G)
    return frozen(pad_arr, guide_arr)


def dirichlet_rows(x):
    """Exponential rows made Dirichlet rows, as their padded running sums and guide, in one pass.
    See :func:`metarl_fast.reference.envs.dirichlet_rows`."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim >= 1
            and x.flags.c_contiguous and x.shape[x.ndim - 1] >= 1):
        raise TypeError("x must be a C-contiguous float64 array with a non-empty last axis")
    cdef intp_t m = x.shape[x.ndim - 1]
    cdef intp_t L = (m - 1 + 3) // 4 * 4
    cdef intp_t G = guide_buckets_of(L)
    cdef intp_t rows = x.size // m
    cdef cnp.ndarray pad_arr, guide_arr
    pad_arr, guide_arr = new_cdf_tables(x.shape[:x.ndim - 1], L, G)
    cdef cnp.ndarray work = np.array(x, dtype=np.float64, order="C", copy=True)
    cdef double* w = <double*> cnp.PyArray_DATA(work)
    cdef double* q = <double*> cnp.PyArray_DATA(pad_arr)
    cdef int32_t* g = guide_ptr(guide_arr, G)
    cdef intp_t r
    with nogil:
        for r in range(rows):
            dirichlet_row(w + r * m, q + r * (L + 1), m, L, g + r * (G + 1) if G > 0 else NULL, G)
    return frozen(pad_arr, guide_arr)


# rows of exponentials drawn at a time by tabular_mdp_draws (the draws stay in cache while they
# are normalised and summed; only the padded sums reach memory)
cdef intp_t DRAW_BLOCK_VALUES = 1 << 15


def tabular_mdp_draws(rng, n_tasks, n_states, n_actions):
    """The random tables of ``TabularMDPs.sample``, drawn and built in one call: the Dirichlet
    rows are drawn a block at a time into scratch and only their sums and guide are kept.
    See :func:`metarl_fast.reference.envs.tabular_mdp_draws`."""
    cdef intp_t n = n_tasks, S = n_states, A = n_actions
    cdef intp_t L = (S - 1 + 3) // 4 * 4, k, n_rewards = n * S * A
    cdef intp_t G = guide_buckets_of(L)
    if not isinstance(rng, np.random.Generator) or n < 0 or S < 1 or A < 1:
        raise TypeError("rng must be a numpy.random.Generator and the sizes positive")
    cdef cnp.ndarray r_arr = np.empty((n, S, A), dtype=np.float64)
    cdef cnp.ndarray pad_arr, guide_arr
    pad_arr, guide_arr = new_cdf_tables((n, S, A), L, G)
    cdef intp_t block_rows = max(1, DRAW_BLOCK_VALUES // S)
    cdef cnp.ndarray scratch_arr = np.empty(block_rows * S, dtype=np.float64)
    cdef double* r = <double*> cnp.PyArray_DATA(r_arr)
    cdef double* x = <double*> cnp.PyArray_DATA(scratch_arr)
    cdef double* q = <double*> cnp.PyArray_DATA(pad_arr)
    cdef int32_t* g = guide_ptr(guide_arr, G)
    cdef intp_t row0 = 0, rows, j
    cdef bitgen_t* bitgen
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            # rng.normal(1.0, 1.0, ...) is 1.0 + 1.0 * z: the same doubles as 1.0 + z
            standard_normal_fill(bitgen, n_rewards, r)
            for k in range(n_rewards):
                r[k] = 1.0 + r[k]
            # the exponentials in the order one fill of n * S * A * S values draws them
            while row0 < n_rewards:
                rows = min(block_rows, n_rewards - row0)
                random_standard_exponential_fill(bitgen, rows * S, x)
                j = 0
                while j + 4 <= rows:
                    dirichlet_rows4(x + j * S, q + (row0 + j) * (L + 1), S, L,
                                    g + (row0 + j) * (G + 1) if G > 0 else NULL, G)
                    j += 4
                while j < rows:
                    dirichlet_row(x + j * S, q + (row0 + j) * (L + 1), S, L,
                                  g + (row0 + j) * (G + 1) if G > 0 else NULL, G)
                    j += 1
                row0 += rows
    r_arr.setflags(write=False)
    return (r_arr,) + frozen(pad_arr, guide_arr)


def next_states(tables, rows, u):
    """Next states of flat rows for given uniforms.  See
    :func:`metarl_fast.reference.envs.next_states`."""
    tables, rows, u = _reference.check_next_state_args(tables, rows, u)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef intp_t k = rows.shape[0], j
    cdef cnp.ndarray out = np.empty(k, dtype=np.int64)
    cdef int64_t* o = <int64_t*> cnp.PyArray_DATA(out)
    cdef const int64_t* sa = _iptr(rows)
    cdef const double* uu = _dptr(u)
    with nogil:
        for j in range(k):
            if t.stochastic_transitions:
                o[j] = draw_transition(&t, t.trans_cdf_padded, t.trans_guide, sa[j], uu[j])
            else:
                o[j] = t.next_state[sa[j]]
    return out


def action_cdf(logits):
    """Action sampling tables ``(cdf, z)``.  See :func:`metarl_fast.reference.envs.action_cdf`."""
    cdef cnp.ndarray x = logits
    if not _is_array(logits, cnp.NPY_DOUBLE, 3):
        raise TypeError("logits must be a C-contiguous float64 array (n_policies, n_states, n_actions)")
    cdef intp_t A = cnp.PyArray_DIM(x, 2)
    cdef intp_t n_rows = cnp.PyArray_DIM(x, 0) * cnp.PyArray_DIM(x, 1)
    cdef cnp.ndarray cdf = cnp.PyArray_EMPTY(3, cnp.PyArray_DIMS(x), cnp.NPY_DOUBLE, 0)
    cdef cnp.ndarray z = cnp.PyArray_EMPTY(3, cnp.PyArray_DIMS(x), cnp.NPY_DOUBLE, 0)
    cdef bint ok
    if A == 0:
        return cdf, z
    # tiny (one row per policy and state): not worth releasing the GIL
    ok = action_cdf_kernel(_dptr(x), <double*> cnp.PyArray_DATA(cdf), <double*> cnp.PyArray_DATA(z),
                           n_rows, A)
    if not ok:
        return _reference.action_cdf(logits)  # raises the reference's error
    return cdf, z


def episode_offsets(episode_length):
    """Episode start offsets.  See :func:`metarl_fast.reference.envs.episode_offsets`."""
    if not (type(episode_length) is cnp.ndarray
            and cnp.PyArray_TYPE(<cnp.ndarray> episode_length) == cnp.NPY_INT64
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> episode_length)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> episode_length)):
        return _reference.episode_offsets(episode_length)
    cdef intp_t n = cnp.PyArray_SIZE(<cnp.ndarray> episode_length), j
    cdef cnp.ndarray start = _empty(n + 1, cnp.NPY_INT64)
    cdef const int64_t* length_p = _iptr(episode_length)
    cdef int64_t* start_p = <int64_t*> cnp.PyArray_DATA(start)
    start_p[0] = 0
    for j in range(n):
        start_p[j + 1] = start_p[j] + length_p[j]
    return start


cdef int _raise_pending() except -1:
    """Raise the exception a signal handler raised inside a kernel."""
    return mf_raise_pending(&_pending)


def episode_steps(episode_length):
    """Episode number and time index of every step.  See
    :func:`metarl_fast.reference.envs.episode_steps`."""
    if not (type(episode_length) is cnp.ndarray
            and cnp.PyArray_TYPE(<cnp.ndarray> episode_length) == cnp.NPY_INT64
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> episode_length)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> episode_length)):
        return _reference.episode_steps(episode_length)
    cdef intp_t n_eps = cnp.PyArray_SIZE(<cnp.ndarray> episode_length), k, t, total = 0, q = 0
    cdef const int64_t* length_p = _iptr(episode_length)
    for k in range(n_eps):
        if length_p[k] < 0:
            return _reference.episode_steps(episode_length)
        total += length_p[k]
    cdef cnp.ndarray episode = _empty(total, cnp.NPY_INT64)
    cdef cnp.ndarray step = _empty(total, cnp.NPY_INT64)
    cdef int64_t* ep = <int64_t*> cnp.PyArray_DATA(episode)
    cdef int64_t* st = <int64_t*> cnp.PyArray_DATA(step)
    for k in range(n_eps):
        for t in range(length_p[k]):
            ep[q] = k
            st[q] = t
            q += 1
    return episode, step


def rollout(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng, out=None):
    """Fused rollout.  See :func:`metarl_fast.reference.envs.rollout` (``out``: the arrays to
    write into, returned as views of their prefixes)."""
    cdef intp_t N
    if (_rollout_args_ok(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng)
            and (out is None or _rollout_out_ok(out, tables.n_tasks * <intp_t> n_episodes * tables.horizon,
                                                tables.n_tasks * <intp_t> n_episodes, action_cdf,
                                                action_logp, policy_of_task))):
        N = n_episodes
    else:
        N = check_rollout_args(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng, out)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef intp_t T = t.n_tasks, H = t.horizon, cap = T * N * H, n_steps
    cdef RolloutOut out_p
    cdef dict res = {}
    cdef cnp.ndarray length, ret
    cdef intp_t f
    names = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "logp", "task_id")
    if out is None:
        for f in range(8):
            res[names[f]] = _empty(cap, ROLLOUT_OUT_TYPES[f])
        length = np.empty((T, N), dtype=np.int64)
        ret = np.empty((T, N), dtype=np.float64)
    else:
        # the caller's arrays (validated above), written from their start
        for f in range(8):
            res[names[f]] = out[f]
        length = out[8]
        ret = out[9]
    out_p.obs = <int64_t*> cnp.PyArray_DATA(res["obs"])
    out_p.action = <int64_t*> cnp.PyArray_DATA(res["action"])
    out_p.reward = <double*> cnp.PyArray_DATA(res["reward"])
    out_p.next_obs = <int64_t*> cnp.PyArray_DATA(res["next_obs"])
    out_p.terminated = <uint8_t*> cnp.PyArray_DATA(res["terminated"])
    out_p.truncated = <uint8_t*> cnp.PyArray_DATA(res["truncated"])
    out_p.logp = <double*> cnp.PyArray_DATA(res["logp"])
    out_p.task_id = <int64_t*> cnp.PyArray_DATA(res["task_id"])
    out_p.episode_length = <int64_t*> cnp.PyArray_DATA(length)
    out_p.episode_return = <double*> cnp.PyArray_DATA(ret)
    # the layout of tasks.padded_cdf_rows, built here (tiny: n_policies x S x (4k + 1))
    cdef intp_t A = t.n_actions, n_rows = cnp.PyArray_DIM(<cnp.ndarray> action_cdf, 0) * t.n_states
    cdef intp_t Ap = (A - 1 + 3) // 4 * 4 + 1, j, m
    cdef cnp.ndarray padded = _empty(n_rows * Ap, cnp.NPY_DOUBLE)
    cdef double* pad_p = <double*> cnp.PyArray_DATA(padded)
    cdef const double* src_p = _dptr(action_cdf)
    for j in range(n_rows):
        for m in range(Ap - 1):
            pad_p[j * Ap + m] = src_p[j * A + m] if m < A - 1 else INFINITY
        pad_p[j * Ap + Ap - 1] = src_p[j * A + A - 1]
    cdef const double* cdf_p = pad_p
    cdef const double* logp_p = _dptr(action_logp)
    cdef const int64_t* pol_p = _iptr(policy_of_task)
    cdef bitgen_t* bitgen
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            n_steps = draw_and_run(&t, cdf_p, Ap, logp_p, pol_p, N, bitgen, &out_p, True)
    if n_steps == ENVS_INTERRUPTED:
        _raise_pending()
    if n_steps == ENVS_NO_MEMORY:
        raise MemoryError("metarl_fast: out of memory in rollout")
    if out is not None:
        return (tuple(res[name][:n_steps] for name in names)
                + (length[:T * N].reshape(T, N), ret[:T * N].reshape(T, N)))
    if n_steps < cap:
        # shrink in place (realloc; these fresh arrays have no other reference): no copy
        for name in names:
            res[name].resize((n_steps,), refcheck=False)
    return tuple(res[name] for name in names) + (length, ret)


def vec_reset(tables, task_of_env, state, elapsed, rng):
    """Start a new episode in every environment.  See :func:`metarl_fast.reference.envs.vec_reset`."""
    cdef intp_t n = check_vec_args(tables, task_of_env, state, elapsed)
    if not isinstance(rng, np.random.Generator):
        from metarl_fast import _validate
        _validate.check_rng(rng)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef bitgen_t* bitgen
    cdef const int64_t* task_p = _iptr(task_of_env)
    cdef int64_t* state_p = <int64_t*> cnp.PyArray_DATA(state)
    cdef int64_t* el_p = <int64_t*> cnp.PyArray_DATA(elapsed)
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            vec_reset_kernel(&t, task_p, state_p, el_p, n, bitgen)


cdef inline bint _in_range(object arr, intp_t n, int64_t low, int64_t high):
    cdef const int64_t* p = _iptr(arr)
    cdef intp_t j
    for j in range(n):
        if p[j] < low or p[j] >= high:
            return False
    return True


cdef inline bint _is_out(object x, int typenum, intp_t n):
    return (_is_array(x, typenum, 1) and cnp.PyArray_DIM(<cnp.ndarray> x, 0) == n
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x))


cdef bint _step_args_ok(object tables, object task_of_env, object state, object elapsed,
                        object actions, object rng, object obs_out, object reward_out,
                        object terminated_out, object truncated_out, object final_obs_out):
    """C-level fast path of check_step_args: True if every argument is valid as given."""
    cdef intp_t n
    if type(tables) is not EnvTables or not isinstance(rng, _Generator):
        return False
    if not _is_array(task_of_env, cnp.NPY_INT64, 1):
        return False
    n = cnp.PyArray_DIM(<cnp.ndarray> task_of_env, 0)
    if not (_is_out(state, cnp.NPY_INT64, n) and _is_out(elapsed, cnp.NPY_INT64, n)
            and _is_array(actions, cnp.NPY_INT64, 1) and cnp.PyArray_DIM(<cnp.ndarray> actions, 0) == n
            and _is_out(obs_out, cnp.NPY_INT64, n) and _is_out(reward_out, cnp.NPY_DOUBLE, n)
            and _is_out(terminated_out, cnp.NPY_BOOL, n) and _is_out(truncated_out, cnp.NPY_BOOL, n)
            and _is_out(final_obs_out, cnp.NPY_INT64, n)):
        return False
    return (_in_range(task_of_env, n, 0, tables.n_tasks) and _in_range(state, n, 0, tables.n_states)
            and _in_range(elapsed, n, 0, tables.horizon) and _in_range(actions, n, 0, tables.n_actions))


def vec_step(tables, task_of_env, state, elapsed, actions, rng, obs_out, reward_out,
             terminated_out, truncated_out, final_obs_out):
    """One step of every environment.  See :func:`metarl_fast.reference.envs.vec_step`."""
    cdef intp_t n
    if _step_args_ok(tables, task_of_env, state, elapsed, actions, rng, obs_out, reward_out,
                     terminated_out, truncated_out, final_obs_out):
        n = cnp.PyArray_DIM(<cnp.ndarray> task_of_env, 0)
    else:
        n, actions = check_step_args(tables, task_of_env, state, elapsed, actions, rng, obs_out,
                                     reward_out, terminated_out, truncated_out, final_obs_out)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef double* scratch = <double*> malloc((n if n > 0 else 1) * sizeof(double))
    if scratch == NULL:
        raise MemoryError("metarl_fast: out of memory in vec_step")
    cdef bitgen_t* bitgen
    cdef const int64_t* task_p = _iptr(task_of_env)
    cdef int64_t* state_p = <int64_t*> cnp.PyArray_DATA(state)
    cdef int64_t* el_p = <int64_t*> cnp.PyArray_DATA(elapsed)
    cdef const int64_t* act_p = _iptr(actions)
    cdef int64_t* obs_p = <int64_t*> cnp.PyArray_DATA(obs_out)
    cdef double* rew_p = <double*> cnp.PyArray_DATA(reward_out)
    cdef uint8_t* term_p = <uint8_t*> cnp.PyArray_DATA(terminated_out)
    cdef uint8_t* trunc_p = <uint8_t*> cnp.PyArray_DATA(truncated_out)
    cdef int64_t* fin_p = <int64_t*> cnp.PyArray_DATA(final_obs_out)
    try:
        bit_generator = rng.bit_generator
        bitgen = bitgen_of(bit_generator)
        with bit_generator.lock:
            with nogil:
                vec_step_kernel(&t, task_p, state_p, el_p, act_p, n, bitgen, scratch,
                                obs_p, rew_p, term_p, trunc_p, fin_p)
    finally:
        free(scratch)
