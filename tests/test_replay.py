"""Replay buffer: token cap, the three policies, determinism, checkpoint state round-trip, replay ratio."""

import json

import numpy as np
import pytest

from fluxforge.continual.replay import ReplayBuffer, ReplayError, fair_shares, validate_ratio
from fluxforge.train.sampler import MixtureSampler

EOS = 0


def _stream(task_id: int, n_docs: int, seed: int, lengths: tuple[int, int] = (3, 20)) -> np.ndarray:
    """A packed stream whose documents are [task_id*1000 + doc_index, ..., EOS]: every token tells task and document."""
    rng = np.random.default_rng([seed, task_id])
    docs = [np.r_[np.full(int(rng.integers(*lengths)) - 1, task_id * 1000 + i), EOS] for i in range(n_docs)]
    return np.concatenate(docs).astype(np.uint16)


def _doc_ids(buf: ReplayBuffer) -> list[int]:
    return [int(d[0]) for d in buf.documents()]


def _split(stream: np.ndarray) -> list[np.ndarray]:
    ends = np.flatnonzero(stream == EOS) + 1
    return [stream[a:b] for a, b in zip(np.r_[0, ends[:-1]], ends)]


@pytest.mark.parametrize("policy", ["uniform", "recent", "balanced"])
def test_cap_is_never_exceeded_and_documents_stay_whole(policy):
    buf = ReplayBuffer(cap_tokens=300, policy=policy, eos_id=EOS, seed=7)
    originals = {}
    for t in range(1, 6):
        s = _stream(t, 60, seed=1)
        originals.update({int(d[0]): d for d in _split(s)})
        buf.add(f"task{t}", s)
        assert 0 < buf.tokens <= 300
        assert len(buf.stream()) == buf.tokens
    slack = 20 * (5 if policy == "balanced" else 1)  # balanced: each task's share may fall short by one document
    assert buf.tokens > 300 - slack, "the buffer fills to within one document (per share) of its cap"
    for doc in buf.documents():  # every kept document is a whole original document, EOS included
        assert doc[-1] == EOS and np.array_equal(doc, originals[int(doc[0])])
    assert buf.stream().dtype == np.uint16


def test_recent_keeps_the_newest_documents():
    buf = ReplayBuffer(cap_tokens=200, policy="recent", eos_id=EOS, seed=0)
    streams = [_stream(t, 40, seed=2) for t in (1, 2, 3)]
    for t, s in zip((1, 2, 3), streams):
        buf.add(f"t{t}", s)
    all_docs = [int(d[0]) for s in streams for d in _split(s)]
    kept = _doc_ids(buf)
    assert kept == all_docs[-len(kept):], "FIFO: exactly the newest documents, in arrival order"
    assert set(buf.task_tokens()) == {"t1", "t2", "t3"} and buf.task_tokens()["t1"] == 0 and buf.task_tokens()["t2"] == 0


def test_uniform_is_a_sample_of_everything_seen_independent_of_order():
    cap = 2000
    streams = {f"t{t}": _stream(t, 400, seed=3) for t in (1, 2, 3, 4)}
    a = ReplayBuffer(cap, "uniform", EOS, seed=11)
    for name, s in streams.items():
        a.add(name, s)
    b = ReplayBuffer(cap, "uniform", EOS, seed=11)
    for name in reversed(list(streams)):
        b.add(name, streams[name])
    assert sorted(_doc_ids(a)) == sorted(_doc_ids(b)), "reservoir: the kept set does not depend on arrival order"
    # every task got a share close to its share of what was seen (equal here), unlike FIFO which keeps only the last task
    shares = np.array(list(a.task_tokens().values())) / a.tokens
    assert np.all(np.abs(shares - 0.25) < 0.1), shares
    c = ReplayBuffer(cap, "uniform", EOS, seed=12)
    for name, s in streams.items():
        c.add(name, s)
    assert sorted(_doc_ids(c)) != sorted(_doc_ids(a)), "a different seed draws a different sample"


def test_uniform_keeps_early_tasks_in_proportion_over_seeds():
    """Over seeds, a task that was 1/5 of what was seen holds about 1/5 of the buffer, even when it came first."""
    fractions = []
    for seed in range(20):
        buf = ReplayBuffer(500, "uniform", EOS, seed=seed)
        buf.add("first", _stream(1, 100, seed=4, lengths=(10, 11)))  # equal-length documents: shares are counts
        buf.add("later", _stream(2, 400, seed=4, lengths=(10, 11)))
        fractions.append(buf.task_tokens()["first"] / buf.tokens)
    assert abs(np.mean(fractions) - 0.2) < 0.03, np.mean(fractions)


def test_balanced_gives_each_task_an_equal_share():
    buf = ReplayBuffer(cap_tokens=900, policy="balanced", eos_id=EOS, seed=5)
    buf.add("a", _stream(1, 300, seed=6))
    assert buf.task_tokens()["a"] > 900 - 20, "one task: the whole cap"
    buf.add("b", _stream(2, 300, seed=6))
    buf.add("c", _stream(3, 300, seed=6))
    tok = buf.task_tokens()
    assert all(300 - 20 < v <= 300 for v in tok.values()), tok
    buf.add("small", _stream(4, 5, seed=6))  # smaller than its share: keeps everything, the rest split among the others
    tok = buf.task_tokens()
    small = len(_stream(4, 5, seed=6))
    assert tok["small"] == small
    assert all((900 - small) // 3 - 20 < tok[t] <= (900 - small) // 3 for t in "abc"), tok


def test_fair_shares():
    assert fair_shares({"a": 1000, "b": 1000, "c": 10}, 310) == {"a": 150, "b": 150, "c": 10}
    assert fair_shares({"a": 50, "b": 60}, 310) == {"a": 50, "b": 60}


def test_same_seed_same_buffer_and_stream_is_sampler_ready():
    def build(seed: int) -> ReplayBuffer:
        buf = ReplayBuffer(400, "balanced", EOS, seed)
        for t in (1, 2, 3):
            buf.add(f"t{t}", _stream(t, 80, seed=8))
        return buf

    a, b = build(3), build(3)
    assert np.array_equal(a.stream(), b.stream())
    assert not np.array_equal(a.stream(), build(4).stream())
    sampler = MixtureSampler({"new": _stream(9, 50, seed=8), "replay": a.stream()}, {"new": 0.7, "replay": 0.3},
                             seq_len=8, batch_size=4, seed=0)
    batch = sampler.batch(0)
    tokens = getattr(batch, "tokens", batch)  # a Batch (tokens + loss mask) or, in older samplers, the token tensor itself
    assert tuple(tokens.shape) == (4, 9)


def test_state_round_trips_through_json_and_continues_identically():
    buf = ReplayBuffer(350, "uniform", EOS, seed=9)
    buf.add("t1", _stream(1, 100, seed=10))
    buf.add("t2", _stream(2, 100, seed=10))
    state = json.loads(json.dumps(buf.state_dict()))  # what a checkpoint writes and reads back
    restored = ReplayBuffer(350, "uniform", EOS, seed=9)
    restored.load_state_dict(state)
    assert np.array_equal(restored.stream(), buf.stream()) and restored.stream().dtype == buf.stream().dtype
    assert restored.stats() == buf.stats()
    for b in (buf, restored):  # the resumed buffer makes the same choices as the uninterrupted one
        b.add("t3", _stream(3, 100, seed=10))
    assert np.array_equal(restored.stream(), buf.stream())
    with pytest.raises(ReplayError, match=r"saved replay buffer has policy='uniform' but this run uses 'recent'"):
        ReplayBuffer(350, "recent", EOS, seed=9).load_state_dict(state)


def test_overlong_documents_are_recorded_as_rejected():
    buf = ReplayBuffer(10, "recent", EOS, seed=0)
    buf.add("t", np.array([5, 5, EOS, *([6] * 20), EOS, 7, EOS], dtype=np.int64))
    assert buf.rejected == [{"task": "t", "doc": 1, "tokens": 21, "reason": "document longer than the buffer cap (10 tokens)"}]
    assert buf.stream().tolist() == [5, 5, EOS, 7, EOS]


def test_bad_input_errors():
    with pytest.raises(ReplayError, match=r"does not end with EOS \(0\)"):
        ReplayBuffer(10, "uniform", EOS, 0).add("t9", np.array([1, 2, 0, 3]))
    with pytest.raises(ReplayError, match=r"unknown replay policy 'lifo'"):
        ReplayBuffer(10, "lifo", EOS, 0)
    with pytest.raises(ReplayError, match=r"positive number of tokens, got 0"):
        ReplayBuffer(0, "uniform", EOS, 0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.3", True, None])
def test_validate_ratio_rejects_values_outside_0_1(bad):
    with pytest.raises(ReplayError, match=r"replay ratio must be a number in \[0, 1\]"):
        validate_ratio(bad)


def test_validate_ratio_accepts_the_closed_interval():
    assert [validate_ratio(r) for r in (0, 0.33, 1)] == [0.0, 0.33, 1.0]
