"""ReplayBuffer edge cases checked against the documented semantics, not against the other backend.

Every test here runs on each backend (conftest.backend) and compares with a model written from
the docstrings (a plain list of transitions in time order, episode ids by the documented rule) or
with hand-computed values.  The random data of the other tests rarely hits a boundary, so the
boundaries are constructed: capacity 1, writes that end exactly at the ring's end or wrap by one,
batches longer than the buffer, a task with exactly one stored transition, per-task rings that wrap,
sequence windows whose only valid start is the last candidate or that would straddle the write
head.  ``scripted_rng`` makes a Generator whose ``random()`` returns chosen values (0, 1 - 2**-53,
exact fractions), so the first and last index of every inverse-CDF draw is reached on purpose.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metarl_fast.replay import PrioritizedReplayBuffer, ReplayBuffer

from scripted import TOP, scripted_rng


def picking(j, count):
    """A uniform u (a multiple of 2**-53) with floor(u * count) == j, in the middle of its cell."""
    return np.floor((j + 0.5) / count * 2.0 ** 53) / 2.0 ** 53


def test_scripted_rng_returns_the_script():
    script = [0.0, TOP, 0.5, 0.25, picking(3, 7)]
    rng = scripted_rng(script)
    assert [rng.random() for _ in script] == script
    np.testing.assert_array_equal(scripted_rng(script).random(5), script)


# ---------------------------------------------------------------------------------------------
# A model of the documented semantics
# ---------------------------------------------------------------------------------------------

class Model:
    """FIFO of the last ``capacity`` transitions; episode ids by the rule of the module docstring:
    a transition gets the counter; the counter advances after done or truncated, and before a
    transition whose task differs from the open episode's task; end_episode() closes it."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.rows = []  # (obs, action, reward, next_obs, done, truncated, task, episode, logp)
        self.next_episode = 0
        self.open_task = -1

    def add(self, obs, action, reward, next_obs, done, truncated, task, logp):
        if self.open_task >= 0 and task != self.open_task:
            self.next_episode += 1
        self.rows.append((obs, action, reward, next_obs, bool(done), bool(truncated), task,
                          self.next_episode, logp))
        if done or truncated:
            self.next_episode += 1
            self.open_task = -1
        else:
            self.open_task = task

    def end_episode(self):
        if self.open_task >= 0:
            self.next_episode += 1
            self.open_task = -1

    @property
    def stored(self):
        return self.rows[-self.capacity:]

    def slot(self, i):
        """Storage slot of the i-th oldest stored transition."""
        return (len(self.rows) - len(self.stored) + i) % self.capacity

    def task_slots(self, task):
        return [self.slot(i) for i, row in enumerate(self.stored) if row[6] == task]


FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id", "episode_id", "logp")


def assert_matches(buf, model, tasks=range(5)):
    n = len(model.rows)
    assert len(buf) == min(n, model.capacity)
    assert buf.n_added == n
    assert buf.write_position == n % model.capacity
    assert buf.is_full == (n >= model.capacity)
    assert buf.next_episode_id == model.next_episode
    stored = model.stored
    if stored:
        got = buf.gather(np.array([model.slot(i) for i in range(len(stored))]))
        for k, name in enumerate(FIELDS):
            want = np.array([row[k] for row in stored])
            np.testing.assert_array_equal(getattr(got, name), want.reshape(getattr(got, name).shape),
                                          err_msg=name)
    for k in tasks:
        slots = model.task_slots(k)
        assert buf.task_count(k) == len(slots), k
        np.testing.assert_array_equal(buf._tasks.slots(k), slots, err_msg=f"task {k} ring")


class Feeder:
    """Writes numbered transitions to a buffer and to the model alike."""

    def __init__(self, buf, vector):
        self.buf, self.vector, self.step = buf, vector, 0
        self.model = Model(buf.capacity)

    def _obs(self, steps):
        steps = np.asarray(steps)
        if self.vector:
            return np.stack([steps, -steps], axis=-1).astype(np.float32)
        return steps.astype(np.int64)

    def add(self, done, truncated, task, python_scalars=True):
        s = self.step
        obs, nxt = self._obs(s), self._obs(s + 1)
        if python_scalars and not self.vector:
            self.buf.add(int(obs), s % 3, s * 0.5, int(nxt), done, truncated=truncated, task_id=task,
                         logp=-(s % 5) * 0.25)
        else:
            self.buf.add(obs, np.int64(s % 3), np.float64(s * 0.5), nxt, np.bool_(done),
                         truncated=np.bool_(truncated), task_id=np.int32(task),
                         logp=np.float64(-(s % 5) * 0.25))
        self.model.add(self._obs(s).tolist(), s % 3, s * 0.5, self._obs(s + 1).tolist(), done,
                       truncated, task, -(s % 5) * 0.25)
        self.step += 1

    def add_batch(self, done, truncated, task, scalar_logp=False):
        n = len(done)
        steps = np.arange(self.step, self.step + n)
        logp = -0.75 if scalar_logp else -(steps % 5) * 0.25
        self.buf.add_batch(self._obs(steps), steps % 3, steps * 0.5, self._obs(steps + 1),
                           np.asarray(done, dtype=bool), truncated=truncated, task_id=task, logp=logp)
        tasks = np.broadcast_to(task, (n,))
        truncs = np.broadcast_to(truncated, (n,))
        for i, s in enumerate(steps):
            self.model.add(self._obs(s).tolist(), s % 3, s * 0.5, self._obs(s + 1).tolist(), done[i],
                           truncs[i], int(tasks[i]), -0.75 if scalar_logp else -(s % 5) * 0.25)
        self.step += n

    def end_episode(self):
        self.buf.end_episode()
        self.model.end_episode()


def run_ops(buf, ops, vector=False):
    """ops: ("add", done, truncated, task, python_scalars) | ("batch", n, task or None, seed,
    scalar_logp) | ("end",); the model is checked after every op."""
    feed = Feeder(buf, vector)
    for op in ops:
        if op[0] == "add":
            feed.add(*op[1:])
        elif op[0] == "batch":
            _, n, task, seed, scalar_logp = op
            r = np.random.default_rng(seed)
            done = r.random(n) < 0.25
            truncated = (r.random(n) < 0.2) if seed % 2 else bool(seed % 3 == 0)
            tasks = r.integers(0, 4, n).astype(np.int32 if seed % 4 else np.int64) if task is None else task
            feed.add_batch(done, truncated, tasks, scalar_logp)
        else:
            feed.end_episode()
        assert_matches(buf, feed.model)
    return feed


OP = st.one_of(
    st.tuples(st.just("add"), st.booleans(), st.booleans(), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("batch"), st.integers(0, 20), st.one_of(st.none(), st.integers(0, 3)),
              st.integers(0, 2 ** 16), st.booleans()),
    st.tuples(st.just("end")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capacity=st.integers(1, 9), ops=st.lists(OP, max_size=10), vector=st.booleans())
# capacity 1: every write overwrites; a batch longer than the ring with truncations, task
# switches and done in its skipped rows
@example(capacity=1, ops=[("add", False, False, 2, True), ("add", False, False, 3, False), ("end",),
                          ("batch", 5, None, 1, False), ("batch", 1, 2, 7, True),
                          ("add", False, True, 2, True), ("batch", 3, 0, 3, False)], vector=False)
# one-task batches ending exactly at the ring's end, wrapping by one, the whole ring, one more
@example(capacity=7, ops=[("batch", 5, 1, 2, False), ("batch", 2, 1, 4, True), ("batch", 7, 2, 6, False),
                          ("batch", 3, 2, 8, False), ("batch", 5, 0, 10, True), ("batch", 8, 3, 12, False),
                          ("batch", 0, 1, 14, False), ("add", True, False, 1, True)], vector=False)
@example(capacity=7, ops=[("batch", 6, 1, 3, False), ("batch", 2, None, 5, False), ("batch", 7, None, 9, True),
                          ("batch", 15, None, 11, False), ("add", False, False, 0, True), ("end",), ("end",),
                          ("batch", 1, None, 13, False)], vector=True)
@example(capacity=2, ops=[("add", False, False, 0, True), ("add", False, False, 0, True),
                          ("add", False, False, 1, True), ("batch", 4, 1, 0, True)], vector=False)
def test_writes_match_the_model(backend, capacity, ops, vector):
    buf = ReplayBuffer(capacity, obs_shape=(2,) if vector else (), obs_dtype=np.float32 if vector else np.int64)
    run_ops(buf, ops, vector)


def test_batch_longer_than_capacity_hand_computed(backend):
    """Skipped rows still count for episode ids: done, truncated and task switches in them."""
    done = np.array([0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    trunc = np.array([0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    task = np.array([0, 0, 0, 0, 1, 1, 2, 2], dtype=np.int32)
    # ids: 0 0 | 1 1 (truncated) | 2 2 (task 1) | 3 3 (task 2, still open)
    for cap in (1, 3):
        buf = ReplayBuffer(cap)
        buf.add_batch(np.arange(8), np.zeros(8, np.int64), np.arange(8) * 1.0, np.arange(8) + 1, done,
                      truncated=trunc, task_id=task)
        got = buf.gather(np.arange(cap))
        np.testing.assert_array_equal(np.roll(got.obs, -(8 % cap)), np.arange(8 - cap, 8))
        np.testing.assert_array_equal(np.sort(got.episode_id), [2, 3, 3][-cap:])
        assert buf.next_episode_id == 3 and buf.task_count(2) == min(cap, 2)
        assert buf.task_count(0) == 0 and buf.task_count(1) == (1 if cap == 3 else 0)
        buf.end_episode()
        buf.add(9, 0, 0.0, 10, False, task_id=2)  # same task, but the episode was closed
        assert buf.gather(np.array([(buf.write_position - 1) % cap])).episode_id[0] == 4


# ---------------------------------------------------------------------------------------------
# Uniform and per-task sampling: first and last index, one stored item, wrapped rings
# ---------------------------------------------------------------------------------------------

def test_uniform_sampling_reaches_first_and_last_slot(backend):
    buf = ReplayBuffer(8)
    buf.add_batch(np.arange(5), np.zeros(5, np.int64), np.zeros(5), np.arange(5), np.zeros(5, bool))
    script = [0.0, TOP, 0.5, picking(1, 5), picking(3, 5)]
    np.testing.assert_array_equal(buf.sample_indices(5, scripted_rng(script)), [0, 4, 2, 1, 3])
    np.testing.assert_array_equal(buf.sample(5, scripted_rng(script)).obs, [0, 4, 2, 1, 3])
    buf.add_batch(np.arange(5, 13), np.zeros(8, np.int64), np.zeros(8), np.arange(8), np.zeros(8, bool))
    np.testing.assert_array_equal(buf.sample_indices(3, scripted_rng([0.0, TOP, 0.5])), [0, 7, 4])
    np.testing.assert_array_equal(buf.sample(3, scripted_rng([0.0, TOP, 0.5])).obs, [8, 7, 12])
    one = ReplayBuffer(8)  # a single stored transition, in a larger ring
    one.add(5, 1, 0.5, 6, False)
    np.testing.assert_array_equal(one.sample_indices(3, scripted_rng([0.0, TOP, 0.5])), [0, 0, 0])
    np.testing.assert_array_equal(one.sample_sequences(2, 1, scripted_rng([TOP, 0.0])).obs, [[5], [5]])


def test_capacity_one(backend):
    buf = ReplayBuffer(1)
    model = Model(1)
    for s in range(6):
        task = s % 3
        buf.add(s, s, float(s), s + 1, s == 2, truncated=s == 4, task_id=task, logp=-float(s))
        model.add(s, s, float(s), s + 1, s == 2, s == 4, task, -float(s))
        assert_matches(buf, model)
        batch = buf.sample(4, scripted_rng([0.0, TOP, 0.5, 0.25]), task_id=task)
        np.testing.assert_array_equal(batch.indices, [0, 0, 0, 0])
        np.testing.assert_array_equal(batch.obs, [s] * 4)
        for other in {0, 1, 2} - {task}:
            with pytest.raises(ValueError, match=f"no transitions of task {other}"):
                buf.sample(1, np.random.default_rng(0), task_id=other)
        seq = buf.sample_sequences(3, 1, scripted_rng([TOP, 0.0, 0.5]))
        assert seq.obs.shape == (3, 1) and np.all(seq.obs == s)
        with pytest.raises(ValueError, match="longer than any episode"):
            buf.sample_sequences(1, 2, np.random.default_rng(0))
    pbuf = PrioritizedReplayBuffer(1, alpha=0.5)
    for s in range(3):
        pbuf.add(s, 0, 0.0, s, False)
        pbuf.update_priorities(np.array([0]), np.array([float(s)]))
        batch = pbuf.sample(3, scripted_rng([0.0, TOP, 0.5]), beta=0.7)
        np.testing.assert_array_equal(batch.indices, [0, 0, 0])
        np.testing.assert_array_equal(batch.weights, [1.0, 1.0, 1.0])
        assert batch.obs[0] == s


def test_task_with_exactly_one_stored_item(backend):
    buf = ReplayBuffer(6)
    task = np.array([0, 0, 3, 0, 0], dtype=np.int32)
    buf.add_batch(np.arange(5), np.zeros(5, np.int64), np.zeros(5), np.arange(5), np.zeros(5, bool),
                  task_id=task)
    for script in ([0.0, TOP, 0.5], [TOP, 0.0, picking(0, 1)]):
        assert buf.task_count(3) == 1
        batch = buf.sample(3, scripted_rng(script), task_id=3)
        np.testing.assert_array_equal(batch.indices, [2, 2, 2])
        np.testing.assert_array_equal(batch.obs, [2, 2, 2])
        np.testing.assert_array_equal(batch.task_id, [3, 3, 3])
        if len(buf) == 5:  # wrap: slots 5, 0, 1 (task 0)
            buf.add_batch(np.arange(5, 8), np.zeros(3, np.int64), np.zeros(3), np.arange(3),
                          np.zeros(3, bool))
    # the next write overwrites slot 2: task 3 has nothing left
    buf.add(8, 0, 0.0, 9, False)
    assert buf.task_count(3) == 0
    with pytest.raises(ValueError, match="no transitions of task 3"):
        buf.sample(1, np.random.default_rng(0), task_id=3)
    buf.add(9, 0, 0.0, 10, False, task_id=3)  # slot 3, the task's ring no longer starts at 0
    np.testing.assert_array_equal(buf.sample(2, scripted_rng([TOP, 0.0]), task_id=3).obs, [9, 9])
    # task 0 (slots 4, 5, 0, 1, 2 oldest first): first and last of its time order
    np.testing.assert_array_equal(buf.sample_indices(3, scripted_rng([0.0, TOP, 0.5]), task_id=0),
                                  [4, 2, 0])


@pytest.mark.parametrize("chunks", [[37, 64, 1, 99, 100, 101, 250, 3, 128, 200],
                                    [1] * 150 + [300, 65, 63, 129]])
def test_per_task_rings_wrap_in_time_order(backend, chunks):
    """Per-task draw u -> the floor(u * count)-th oldest stored transition of the task, after the
    task's ring has wrapped many times: checked for every j with a scripted Generator."""
    buf = ReplayBuffer(100)
    feed = Feeder(buf, vector=False)
    for c, n in enumerate(chunks):
        if c % 3 == 2:
            tasks = np.where(np.arange(n) % 7 == 3, 1, 0).astype(np.int32)
        else:
            tasks = c % 2
        feed.add_batch(np.zeros(n, bool), False, tasks)
        for k in (0, 1):
            slots = feed.model.task_slots(k)
            count = len(slots)
            assert buf.task_count(k) == count
            if count == 0:
                continue
            js = np.arange(count)
            got = buf.sample_indices(count, scripted_rng([picking(j, count) for j in js]), task_id=k)
            np.testing.assert_array_equal(got, slots, err_msg=f"chunk {c}, task {k}")
            edge = buf.sample(2, scripted_rng([0.0, TOP]), task_id=k)
            np.testing.assert_array_equal(edge.indices, [slots[0], slots[-1]])
            np.testing.assert_array_equal(edge.task_id, [k, k])


def test_single_adds_keep_per_task_rings_through_wraps(backend):
    """The compiled single add pops the overwritten slot from its task's ring (write_one)."""
    buf = ReplayBuffer(70)
    feed = Feeder(buf, vector=False)
    for s in range(400):
        feed.add(s % 11 == 0, False, 0 if (s // 50) % 2 == 0 or s % 5 == 0 else 1, python_scalars=s % 4 != 0)
        if s % 37 == 0 or s > 390:
            assert_matches(buf, feed.model, tasks=(0, 1))
            for k in (0, 1):
                slots = feed.model.task_slots(k)
                if slots:
                    got = buf.sample_indices(2, scripted_rng([0.0, TOP]), task_id=k)
                    np.testing.assert_array_equal(got, [slots[0], slots[-1]])


# ---------------------------------------------------------------------------------------------
# Sequence windows
# ---------------------------------------------------------------------------------------------

def _singles_then_open_episode(buf, n_singles, length, start=0):
    """n_singles one-step episodes (done), then an open episode of ``length`` steps (task 1)."""
    obs = np.arange(start, start + n_singles)
    buf.add_batch(obs, obs, np.zeros(n_singles), obs + 1, np.ones(n_singles, bool))
    obs = np.arange(start + n_singles, start + n_singles + length)
    buf.add_batch(obs, obs, np.zeros(length), obs + 1, np.zeros(length, bool), task_id=1)
    return obs


@pytest.mark.parametrize("capacity,filler", [(400, 0), (400, 150), (400, 2), (500, 0)])
def test_only_valid_window_is_the_last_candidate(backend, capacity, filler):
    """Among ~400 candidates only the last is inside one episode: rejection rounds almost never
    find it, so the exact scan must include the last candidate.  filler=2 puts that window
    across the physical end of the ring (slots 399, 0, 1); capacity 500 leaves it not full."""
    buf = ReplayBuffer(capacity)
    if filler:
        _singles_then_open_episode(buf, filler, 0)
    last = _singles_then_open_episode(buf, 397, 3, start=filler)
    assert len(buf) == 400
    batch = buf.sample_sequences(40, 3, np.random.default_rng(filler))
    np.testing.assert_array_equal(batch.obs, np.tile(last, (40, 1)))
    np.testing.assert_array_equal(batch.episode_id, np.full((40, 3), batch.episode_id[0, 0]))
    # a proposal of the last candidate (u -> 1) is accepted in the first round
    batch = buf.sample_sequences(1, 3, scripted_rng([TOP]))
    np.testing.assert_array_equal(batch.obs, [last])
    assert buf.write_position == (filler + 400) % capacity


def test_long_episode_windows_are_uniform_over_the_valid_starts(backend):
    """A 150-step episode ending in done (its task ring grows past 64 entries), then an open
    30-step episode, in a ring of 200 that has wrapped: windows of 30 steps start uniformly over
    the 121 + 1 valid starts (the last candidate is the second episode, whole); windows of 150
    steps are the first episode; 151 steps exist nowhere."""
    buf = ReplayBuffer(200)
    feed = Feeder(buf, vector=False)
    feed.add_batch(np.zeros(40, bool), False, 1)    # 20 of them overwritten later
    feed.end_episode()
    done = np.zeros(150, bool)
    done[-1] = True
    feed.add_batch(done, False, 0)                  # obs 40 .. 189
    feed.add_batch(np.zeros(30, bool), False, 0)    # obs 190 .. 219, open
    assert len(buf) == 200 and buf.write_position == 20
    assert buf.task_count(0) == 180 and buf.task_count(1) == 20
    first = 40
    whole = buf.sample_sequences(20, 150, np.random.default_rng(0))
    np.testing.assert_array_equal(whole.obs, np.tile(np.arange(first, first + 150), (20, 1)))
    with pytest.raises(ValueError, match="longer than any episode"):
        buf.sample_sequences(1, 151, np.random.default_rng(0))
    n = 24400
    batch = buf.sample_sequences(n, 30, np.random.default_rng(1))
    counts = np.bincount(batch.obs[:, 0] - first, minlength=151)
    valid = np.r_[np.arange(121), 150]
    assert counts.sum() == counts[valid].sum() == n
    expected = n / valid.size
    chi2 = float(((counts[valid] - expected) ** 2 / expected).sum())
    dof = valid.size - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), chi2
    assert np.all(batch.episode_id == batch.episode_id[:, :1])


def test_windows_never_run_past_the_newest_transition(backend):
    """A non-full buffer holding one open episode (id 0): the empty slots after it also read
    episode id 0, and no window may reach into them."""
    buf = ReplayBuffer(10)
    buf.add_batch(np.arange(10, 14), np.zeros(4, np.int64), np.zeros(4), np.arange(11, 15), np.zeros(4, bool))
    batch = buf.sample_sequences(100, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(batch.obs, np.tile(np.arange(10, 14), (100, 1)))
    batch = buf.sample_sequences(4, 2, scripted_rng([0.0, TOP, picking(1, 3), 0.5]))
    np.testing.assert_array_equal(batch.obs[:, 0], [10, 12, 11, 11])
    with pytest.raises(ValueError, match="longer than any episode"):
        buf.sample_sequences(1, 5, np.random.default_rng(0))


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_sequence_proposals_accepted_exactly_when_inside_one_episode(backend, length):
    """Round one proposes candidate j for sample j (scripted u): valid candidates are kept at
    once (their logical start), invalid ones end in some valid window.  The buffer is wrapped,
    with done, truncated, a task switch and end_episode() between episodes."""
    buf = ReplayBuffer(12)
    feed = Feeder(buf, vector=False)
    feed.add_batch(np.zeros(5, bool), False, 0)
    feed.add(False, True, 0)               # truncated: episode 0 ends (6 steps)
    feed.add_batch(np.array([0, 0, 1], bool), False, 2)   # episode 1 (3 steps)
    feed.add_batch(np.zeros(2, bool), False, 2)
    feed.end_episode()                     # episode 2 (2 steps)
    feed.add_batch(np.zeros(3, bool), False, 2)
    feed.add_batch(np.zeros(4, bool), False, 3)   # task switch: episodes 3 (3 steps), 4 (4, open)
    assert_matches(buf, feed.model)
    stored = feed.model.stored
    episode = [row[7] for row in stored]
    n_cand = len(stored) - length + 1
    valid = [s for s in range(n_cand) if episode[s] == episode[s + length - 1]]
    assert valid and (length == 1 or len(valid) < n_cand)
    script = [picking(j, n_cand) for j in range(n_cand)]
    batch = buf.sample_sequences(n_cand, length, scripted_rng(script))
    starts = batch.indices[:, 0]
    for j in range(n_cand):
        if j in valid:
            assert starts[j] == feed.model.slot(j), j
        assert any(starts[j] == feed.model.slot(s) for s in valid), j
    np.testing.assert_array_equal(batch.indices, (starts[:, None] + np.arange(length)) % 12)
    assert np.all(batch.episode_id == batch.episode_id[:, :1])
    assert not np.any((batch.terminated | batch.truncated)[:, :-1])


# ---------------------------------------------------------------------------------------------
# Prioritized replay
# ---------------------------------------------------------------------------------------------

def test_prioritized_sampling_boundaries_follow_the_inverse_cdf(backend):
    """Leaf i is drawn iff sum_{j<i} p_j <= u * total < sum_{j<=i} p_j (u = a boundary exactly)."""
    buf = PrioritizedReplayBuffer(4, alpha=1.0, eps=0.0)
    buf.add_batch(np.arange(4), np.zeros(4, np.int64), np.zeros(4), np.arange(4), np.zeros(4, bool))
    buf.update_priorities(np.arange(4), np.array([1.0, 1.0, 2.0, 4.0]))  # running sums 1 2 4 8
    script = [0.0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, TOP, 1 / 8 - 2.0 ** -53]
    np.testing.assert_array_equal(buf.sample_indices(7, scripted_rng(script)), [0, 1, 2, 2, 3, 3, 0])
    batch = buf.sample(7, scripted_rng(script), beta=1.0)
    np.testing.assert_array_equal(batch.indices, [0, 1, 2, 2, 3, 3, 0])
    # weights (N P(i)) ** -beta / max_j (N P(j)) ** -beta = p_min / p_i for beta = 1
    np.testing.assert_allclose(batch.weights, [1, 1, 0.5, 0.5, 0.25, 0.25, 1], rtol=1e-15)
    # capacity 3: the tree's fourth leaf is empty and never drawn, even for u -> 1
    three = PrioritizedReplayBuffer(3, alpha=1.0, eps=0.0)
    three.add_batch(np.arange(3), np.zeros(3, np.int64), np.zeros(3), np.arange(3), np.zeros(3, bool))
    three.update_priorities(np.arange(3), np.array([1.0, 1.0, 2.0]))
    np.testing.assert_array_equal(three.sample_indices(4, scripted_rng([TOP, 0.5, 0.25, 0.0])), [2, 2, 1, 0])


def test_priorities_eps_alpha_and_the_largest_ever(backend):
    """Leaves are (p + eps) ** alpha; a new transition gets the largest leaf ever set (1 at first),
    even after that leaf was lowered again."""
    buf = PrioritizedReplayBuffer(3, alpha=0.5, eps=0.25)
    buf.add_batch(np.arange(2), np.zeros(2, np.int64), np.zeros(2), np.arange(2), np.zeros(2, bool))
    np.testing.assert_array_equal(buf.priorities(), [1.0, 1.0, 0.0])
    buf.update_priorities(np.array([0, 1]), np.array([8.75, 0.0]))
    np.testing.assert_allclose(buf.priorities(), [3.0, 0.5, 0.0], rtol=1e-15)
    buf.update_priorities(np.array([0]), np.array([0.75]))
    np.testing.assert_allclose(buf.priorities(), [1.0, 0.5, 0.0], rtol=1e-15)
    buf.add(2, 0, 0.0, 3, False)
    np.testing.assert_allclose(buf.priorities(), [1.0, 0.5, 3.0], rtol=1e-15)
    assert buf.total_priority == pytest.approx(4.5, rel=1e-15)
    buf.add_batch(np.arange(2), np.zeros(2, np.int64), np.zeros(2), np.arange(2), np.zeros(2, bool))
    np.testing.assert_allclose(buf.priorities(), [3.0, 3.0, 3.0], rtol=1e-15)  # slots 0, 1 rewritten


# ---------------------------------------------------------------------------------------------
# Stored values equal what was added, at the integer edges
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,values", [
    (np.int64, [2 ** 63 - 1, -(2 ** 63) + 1, 2 ** 62, -(2 ** 31), 2 ** 31, 2 ** 30, -(2 ** 30), -1, 0]),
    (np.int32, [2 ** 31 - 1, -(2 ** 31), 2 ** 30, -(2 ** 30) - 1, -1]),
])
def test_stored_integers_equal_what_was_added(backend, dtype, values):
    buf = ReplayBuffer(len(values) + 1, obs_dtype=dtype, action_dtype=dtype)
    for v in values:
        buf.add(v, v, float(v), v, False, task_id=1, logp=-float(abs(v)))
    got = buf.gather(np.arange(len(values)))
    np.testing.assert_array_equal(got.obs, np.array(values, dtype=dtype))
    np.testing.assert_array_equal(got.action, np.array(values, dtype=dtype))
    np.testing.assert_array_equal(got.next_obs, np.array(values, dtype=dtype))
    np.testing.assert_array_equal(got.reward, np.array(values, dtype=np.float64))
    too_big = 2 ** 63 if dtype == np.int64 else 2 ** 31
    with pytest.raises(ValueError, match="obs out of range for int"):
        buf.add(too_big, 0, 0.0, 0, False)
    assert len(buf) == len(values)


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_clear_resets_every_counter(backend, cls):
    """clear() empties the buffer and resets write position, episode counter and n_added: the
    buffer then behaves as a new one (checked against a fresh model)."""
    buf = cls(4)
    feed = Feeder(buf, vector=False)
    feed.add_batch(np.array([0, 1, 0, 1, 0, 0], bool), False, np.array([0, 0, 1, 1, 2, 2], np.int32))
    assert buf.next_episode_id == 2 and buf.n_added == 6
    buf.clear()
    feed.model = Model(4)
    assert_matches(buf, feed.model)
    assert buf.next_episode_id == 0 and buf.n_added == 0 and buf.write_position == 0 and len(buf) == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1, np.random.default_rng(0))
    if cls is PrioritizedReplayBuffer:
        assert buf.total_priority == 0.0 and not buf.priorities().any()
    feed.add(False, False, 2)  # the open episode of task 2 was forgotten: this is episode 0
    feed.add_batch(np.array([0, 0, 1], bool), False, 2)
    assert_matches(buf, feed.model)
    assert buf.next_episode_id == 1


def test_large_task_ids_cost_what_is_stored():
    """Issue 13, class 3: the largest task id in a 4-slot buffer takes a small fixed table (about
    40 bytes per id below it, lazily paged), not hundreds of MB, on both backends; in a child
    process, whose peak memory is measured."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, numpy as np, metarl_fast as mf
        grown = []
        for backend in mf.BACKENDS:
            if not mf.is_available(backend):
                continue
            mf.set_backend(backend)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            buf = mf.ReplayBuffer(4)
            buf.add(0, 0, 1.0, 0, False, task_id=(1 << 20) - 1)
            for _ in range(50):
                buf.add_batch(np.arange(4), np.zeros(4, np.int64), np.ones(4), np.arange(4),
                              np.zeros(4, bool), task_id=np.array([5, (1 << 20) - 1, 7, 9]))
            assert buf.task_count((1 << 20) - 1) == 1 and buf.task_count(9) == 1
            grown.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
        print(max(grown))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 64, f"peak memory grew by {out.stdout.strip()} MB"


@pytest.mark.parametrize("ids", [[5, (1 << 20) - 1, 7, 9], [3, 3, 3, 100_000], [1 << 19] * 4])
def test_twins_agree_with_large_task_ids(ids):
    import metarl_fast as mf

    if not mf.is_available("cython"):
        pytest.skip("compiled extension not used in this run")
    bufs = []
    for backend in ("cython", "numpy"):
        with mf.use_backend(backend):
            buf = mf.ReplayBuffer(6)
            for step in range(5):
                buf.add_batch(np.arange(4) + step, np.zeros(4, np.int64), np.ones(4), np.arange(4),
                              np.zeros(4, bool), task_id=np.array(ids))
            bufs.append(buf)
    a, b = bufs
    for field_a, field_b in zip(a._store, b._store):
        np.testing.assert_array_equal(field_a, field_b)
    for task in set(ids):
        np.testing.assert_array_equal(a._tasks.slots(task), b._tasks.slots(task))
