"""Stability-gap strategies (Guo et al., methods.md section 4): subset x epochs, top-k sub-corpus, pretraining-like mixture."""

import numpy as np
import pytest
import torch

from fluxforge.continual.stability import (
    EpochSubsetSampler,
    pretraining_like_mixture,
    subset_for_budget,
    top_k_subset,
    unigram_scorer,
)
from fluxforge.errors import DataError
from fluxforge.train.sampler import MixtureSampler

EOS = 0


def _docs(n: int, lengths: tuple[int, int] | int, seed: int = 0) -> list[np.ndarray]:
    """Document i is [i+1, ..., i+1, EOS]: every token tells which document it came from."""
    rng = np.random.default_rng(seed)
    sizes = [lengths] * n if isinstance(lengths, int) else rng.integers(*lengths, size=n).tolist()
    return [np.r_[np.full(int(k) - 1, i + 1), EOS].astype(np.uint16) for i, k in enumerate(sizes)]


def _tokens(batch) -> torch.Tensor:  # noqa: ANN001 - a Batch (tokens + loss mask) or the token tensor itself
    return getattr(batch, "tokens", batch)


def _targets(s: EpochSubsetSampler) -> np.ndarray:
    """Every target token of the run, in order (the windows' tokens after the first)."""
    return np.concatenate([_tokens(s.batch(k))[:, 1:].reshape(-1).numpy() for k in range(s.steps)])


def test_total_tokens_seen_is_subset_times_epochs():
    """Section 4 test 1."""
    docs = _docs(100, 8)  # equal lengths: a subset of exactly 160 tokens is 20 whole documents
    budget, epochs = 640, 4
    subset = subset_for_budget(budget, epochs)
    s = EpochSubsetSampler(docs, subset_tokens=subset, epochs=epochs, seq_len=8, batch_size=4, seed=3)
    assert s.subset_size == subset == 160 and len(s.subset) == 20
    assert s.steps == 640 // (4 * 8) == 20
    assert s.tokens_seen == len(_targets(s)) == subset * epochs and s.dropped_tokens == 0


def test_every_epoch_visits_every_subset_document_once_reshuffled():
    """Section 4 test 2: each epoch's targets are the subset's documents, each exactly once, in a new order."""
    docs = _docs(60, (3, 15), seed=1)
    # seq_len = epochs and batch_size 1 divide subset_size x epochs whatever the subset's real size: the whole run is trained
    s = EpochSubsetSampler(docs, subset_tokens=200, epochs=3, seq_len=3, batch_size=1, seed=5)
    size = s.subset_size
    assert s.dropped_tokens == 0 and 190 <= size <= 200
    targets = _targets(s)
    subset_ids = {int(i) + 1 for i in s.subset}
    orders = []
    for e in range(3):
        epoch = targets[e * size : (e + 1) * size]
        # cut at EOS: each piece is one whole document
        ends = np.flatnonzero(epoch == EOS) + 1
        pieces = [epoch[a:b] for a, b in zip(np.r_[0, ends[:-1]], ends)]
        ids = [int(p[0]) for p in pieces]
        assert sorted(ids) == sorted(subset_ids), f"epoch {e} visits every subset document exactly once"
        for p in pieces:
            np.testing.assert_array_equal(p, docs[int(p[0]) - 1])
        orders.append(ids)
    assert orders[0] != orders[1] != orders[2], "reshuffled per epoch"
    assert s.epoch_of(0)[0] == 0 and s.epoch_of(s.steps - 1)[-1] == 2


def test_sampler_is_a_pure_function_of_the_step():
    docs = _docs(50, (4, 20), seed=2)
    a = EpochSubsetSampler(docs, 300, 2, seq_len=16, batch_size=4, seed=9)
    b = EpochSubsetSampler(docs, 300, 2, seq_len=16, batch_size=4, seed=9)
    for k in (a.steps - 1, 0, 3):  # any order: no state between calls
        ta, tb = _tokens(a.batch(k)), _tokens(b.batch(k))
        assert ta.shape == (4, 17) and ta.dtype == torch.int64 and torch.equal(ta, tb)
    assert a.signature() == b.signature()
    c = EpochSubsetSampler(docs, 300, 2, seq_len=16, batch_size=4, seed=10)
    assert c.signature() != a.signature()
    # windows overlap by one token: the last input of row r is the first token of row r+1
    first = _tokens(a.batch(0))
    assert torch.equal(first[:-1, -1], first[1:, 0]) and first[0, 0] == EOS
    with pytest.raises(DataError, match=rf"step {a.steps} is outside this run of {a.steps} steps"):
        a.batch(a.steps)


def test_an_undivisible_budget_drops_less_than_one_batch():
    s = EpochSubsetSampler(_docs(40, (3, 12), seed=4), 150, 3, seq_len=8, batch_size=4, seed=0)
    assert 0 <= s.dropped_tokens < 4 * 8
    assert s.tokens_seen + s.dropped_tokens == s.subset_size * 3


def test_subset_sampler_errors():
    docs = _docs(5, 10)
    with pytest.raises(DataError, match=r"holds 50 tokens, fewer than subset_tokens=60"):
        EpochSubsetSampler(docs, 60, 2, 4, 2, seed=0)
    with pytest.raises(DataError, match=r"end with different tokens"):
        EpochSubsetSampler([np.array([1, 2, 0]), np.array([3, 4])], 3, 2, 1, 1, seed=0)
    with pytest.raises(DataError, match=r"less than one batch"):
        EpochSubsetSampler(docs, 10, 1, seq_len=8, batch_size=4, seed=0)
    with pytest.raises(DataError, match=r"cannot spread a budget of 3 tokens over 4 epochs"):
        subset_for_budget(3, 4)


def test_top_k_is_the_best_fraction_by_score():
    """Section 4 test 3."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    idx = top_k_subset(list(range(200)), scores, 0.25)
    assert len(idx) == 50
    assert set(idx.tolist()) == set(np.argsort(scores)[-50:].tolist())
    assert scores[idx].min() >= np.delete(scores, idx).max()
    assert np.all(np.diff(scores[idx]) <= 0), "best first"
    assert top_k_subset(["a", "b", "c", "d"], [1.0, 2.0, 2.0, 0.0], 0.5).tolist() == [1, 2], "ties: earlier document first"
    assert len(top_k_subset(list(range(10)), np.arange(10.0), 0.01)) == 1, "a positive fraction keeps at least one document"


def test_top_k_with_the_default_unigram_scorer():
    reference = ["the network service uses a secure protocol for the server"] * 3
    texts = ["lorem ipsum dolor sit amet consectetur", "the server uses the secure network protocol",
             "zzqx vvrt kkpl", "a service for the network"]
    idx = top_k_subset(texts, unigram_scorer(reference), 0.5)
    assert sorted(idx.tolist()) == [1, 3], "texts close to the reference are the high-quality half"


def test_top_k_errors():
    with pytest.raises(DataError, match=r"3 documents but 2 quality scores"):
        top_k_subset([1, 2, 3], [0.1, 0.2], 0.5)
    with pytest.raises(DataError, match=r"documents \[1\] are NaN"):
        top_k_subset([1, 2], [0.1, float("nan")], 0.5)
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\], got 0"):
        top_k_subset([1, 2], [0.1, 0.2], 0)


def test_pretraining_like_mixture_weights():
    w = pretraining_like_mixture({"general-2021": 2, "general-2022": 1, "general-2023": 1}, ["cyber-2021", "cyber-2022"], 0.4)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w == pytest.approx({"general-2021": 0.3, "general-2022": 0.15, "general-2023": 0.15, "cyber-2021": 0.2, "cyber-2022": 0.2})
    assert pretraining_like_mixture({"a": 1}, {"a": 3, "b": 1}, 0.5) == pytest.approx({"a": 0.875, "b": 0.125})
    with pytest.raises(DataError, match=r"domain_share must be in \[0, 1\], got 1.5"):
        pretraining_like_mixture({"a": 1}, ["b"], 1.5)
    with pytest.raises(DataError, match=r"no domain slices"):
        pretraining_like_mixture({"a": 1}, [], 0.2)
    with pytest.raises(DataError, match=r"base pretraining weights must be finite numbers >= 0; bad: \{'a': -1\}"):
        pretraining_like_mixture({"a": -1}, ["b"], 0.2)


def test_sampled_source_proportions_match_the_mixture():
    """Section 4 test 4: the real MixtureSampler draws each source in its configured share, within sampling tolerance."""
    weights = pretraining_like_mixture({"g1": 0.5, "g2": 0.3, "g3": 0.2}, ["cyber"], 0.25)
    names = list(weights)
    streams = {n: np.full(500, i + 1, dtype=np.uint16) for i, n in enumerate(names)}  # a window's tokens name its source
    s = MixtureSampler(streams, weights, seq_len=8, batch_size=64, seed=0)
    first = np.concatenate([_tokens(s.batch(k))[:, 0].numpy() for k in range(100)])
    n = len(first)
    for i, name in enumerate(names):
        p = weights[name]
        observed = np.mean(first == i + 1)
        assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / n), (name, observed, p)
