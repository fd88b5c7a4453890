"""Quality curriculum (Luo et al. 2025, methods.md section 5): ordering, the sampler, the world quality score."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fluxforge.config import TrainConfig, WorldConfig
from fluxforge.errors import DataError
from fluxforge.io import read_jsonl
from fluxforge.train.curriculum import (
    CurriculumSampler,
    grouped_unigram_quality,
    quality_order,
    split_documents,
    unigram_quality,
)


def _docs(n: int = 40, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Documents whose tokens spell their own index (so a window tells which document it came from), few distinct scores."""
    rng = np.random.default_rng(seed)
    docs = [np.full(int(rng.integers(5, 30)), i, dtype=np.uint16) for i in range(n)]
    return docs, rng.integers(0, 5, size=n).astype(np.float64)


def test_order_is_ascending_with_ties_shuffled_by_seed():
    scores = np.array([3, 1, 2, 1, 1, 3, 2, 1, 1, 1, 1, 2], dtype=float)
    orders = {seed: quality_order(scores, seed) for seed in range(6)}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(len(scores)))
        assert np.all(np.diff(scores[order]) >= 0)
    assert np.array_equal(quality_order(scores, 3), orders[3])
    ties = {tuple(o[scores[o] == 1]) for o in orders.values()}
    assert len(ties) > 1, "equal scores must not keep their input order for every seed"
    with pytest.raises(DataError, match=r"documents \[1\] are NaN"):
        quality_order([1.0, float("nan")], 0)


def test_sampler_yields_non_decreasing_quality_and_ends_on_the_best_data():
    docs, scores = _docs()
    s = CurriculumSampler(docs, scores, seq_len=8, batch_size=4, steps=25, seed=1)
    seen = np.concatenate([s.quality(k) for k in range(25)])
    assert np.all(np.diff(seen) >= 0) and seen[0] == scores.min() and seen[-1] == scores.max()
    for k in (0, 12, 24):
        b = s.batch(k)
        assert b.shape == (4, 9) and b.dtype == torch.int64
        # a window's first token is its document's index: its score is what quality() reports
        np.testing.assert_array_equal(scores[b[:, 0].numpy()], s.quality(k))
    last = s.batch(24)[-1].numpy()
    assert np.array_equal(last, s.stream[-9:].astype(np.int64)), "the run ends on the last window of the best data"


def test_ties_are_walked_in_a_seeded_order():
    docs, scores = _docs()
    walk = {seed: np.concatenate([CurriculumSampler(docs, scores, 8, 4, 25, seed).batch(k)[:, 0].numpy() for k in range(25)])
            for seed in (1, 2)}
    assert not np.array_equal(walk[1], walk[2]), "documents of equal quality come in a seed-dependent order"
    assert np.array_equal(scores[walk[1]], scores[walk[1]][np.argsort(scores[walk[1]], kind="stable")])


def test_deterministic_for_a_seed_and_a_pure_function_of_the_step():
    docs, scores = _docs()
    a, b = CurriculumSampler(docs, scores, 8, 4, 25, seed=5), CurriculumSampler(docs, scores, 8, 4, 25, seed=5)
    assert a.signature() == b.signature()
    assert a.signature() != CurriculumSampler(docs, scores, 8, 4, 25, seed=6).signature()
    assert a.signature() != CurriculumSampler(docs, scores[::-1].copy(), 8, 4, 25, seed=5).signature()
    forward = [a.batch(k) for k in range(25)]
    for k in (17, 3, 24, 0):  # any order, a fresh sampler: what a resumed run asks for
        assert torch.equal(b.batch(k), forward[k])
    with pytest.raises(DataError, match="step 25 is outside this curriculum of 25 steps"):
        a.batch(25)


@pytest.mark.parametrize("steps", [5, 30, 400])
def test_stride_covers_the_stream_whatever_the_budget(steps):
    docs, scores = _docs()
    s = CurriculumSampler(docs, scores, 8, 4, steps, seed=0)
    starts = np.concatenate([s.starts(k) for k in range(steps)])
    assert starts[0] == 0 and starts[-1] == len(s.stream) - 9 and np.all(np.diff(starts) >= 0)
    assert s.stride == pytest.approx((len(s.stream) - 9) / (steps * 4 - 1))


def test_drives_the_training_loop(tiny_lm):  # noqa: ANN001
    from fluxforge.train.loop import train

    docs, scores = _docs()
    s = CurriculumSampler([d + 2 for d in docs], scores, 8, 2, 6, seed=0)
    cfg = TrainConfig(slices=["x"], steps=6, batch_size=2, seq_len=8, lr=1e-3, warmup_steps=1, log_every=3)
    hist = train(tiny_lm, s, cfg)
    assert [h["step"] for h in hist] == [3, 6] and all(np.isfinite(h["loss"]) for h in hist)


def test_bad_inputs_are_named():
    docs, scores = _docs()
    with pytest.raises(DataError, match="40 documents but 39 quality scores"):
        CurriculumSampler(docs, scores[:-1], 8, 4, 5, 0)
    with pytest.raises(DataError, match=r"documents \[2\] have no tokens"):
        CurriculumSampler(docs[:2] + [np.zeros(0, np.uint16)], scores[:3], 8, 4, 5, 0)
    with pytest.raises(DataError, match="fewer than seq_len"):
        CurriculumSampler(docs[:1], scores[:1], 64, 4, 5, 0)


def test_split_documents_inverts_packing():
    stream = np.array([5, 6, 0, 7, 0, 8, 9, 9, 0], dtype=np.uint16)
    parts = split_documents(stream, eos_id=0)
    assert [p.tolist() for p in parts] == [[5, 6, 0], [7, 0], [8, 9, 9, 0]]
    with pytest.raises(DataError, match="does not end with EOS"):
        split_documents(stream[:-1], eos_id=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> pd.DataFrame:
    from fluxforge.world import generate_world

    out: Path = tmp_path_factory.mktemp("w") / "world"
    generate_world(WorldConfig(), out)
    docs = pd.DataFrame([r for f in sorted((out / "sources").glob("*.jsonl")) for r in read_jsonl(f)])
    labels = pd.read_parquet(out / "labels.parquet").set_index("doc_id")
    docs["defect"] = labels.loc[docs["doc_id"], "defect"].to_numpy()
    return docs


def test_world_defects_score_below_clean_documents_of_their_domain(world):
    from fluxforge.world import HOSTS

    trusted = {"general": HOSTS["encyclopedia"], "cyber": HOSTS["advisories"]}  # references need no defect labels
    refs = {d: world.loc[world["url"].str.contains(h, regex=False), "text"].tolist() for d, h in trusted.items()}
    q = pd.Series(grouped_unigram_quality(world["text"].tolist(), world["domain"].tolist(), refs), index=world.index)
    for domain in trusted:
        here = world["domain"] == domain
        clean = q[here & (world["defect"] == "none")]
        for defect in ("lorem", "foreign", "symbols", "repetition", "short"):
            assert q[here & (world["defect"] == defect)].median() < clean.quantile(0.1), (domain, defect)
    assert unigram_quality(["", "the"], refs["general"])[0] == -np.inf
    with pytest.raises(DataError, match=r"no quality reference for groups \['cyber'\]"):
        grouped_unigram_quality(["a", "b"], ["general", "cyber"], {"general": ["a"]})


def test_unigram_quality_is_the_mean_log_probability():
    ref = ["a a a b"]  # counts a=3 b=1, total 4, vocabulary 2 + 1 unseen bucket
    got = unigram_quality(["a b", "c", "A"], ref)
    np.testing.assert_allclose(got, [(np.log(4 / 7) + np.log(2 / 7)) / 2, np.log(1 / 7), np.log(4 / 7)])
    with pytest.raises(DataError, match="reference has no words"):
        unigram_quality(["a"], [""])
