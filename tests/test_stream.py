"""Continual streams (FoMo-in-Flux, methods.md section 8): tasks, orderings, chunking, equal budgets, validation."""

import numpy as np
import pytest

from fluxforge.config import WorldConfig
from fluxforge.config.stream import validate_stream
from fluxforge.continual.stream import (
    Stream,
    StreamError,
    Task,
    chunk_stream,
    order_tasks,
    resolve_slices,
    steps_for_budget,
    unigram_similarity,
)
from fluxforge.errors import FluxForgeError

KNOWN = WorldConfig().slices()  # the world's real slice names: general-2021..2024, cyber-2021..2024


def _tasks() -> list[Task]:
    return [Task("g24", ["general-2024"], 10_000), Task("g21", ["general-2021"], 10_000),
            Task("c23", ["cyber-2023"], 10_000), Task("g22", ["general-2022"], 10_000)]


def test_chunker_gives_disjoint_tasks_whose_union_is_the_stream():
    """methods.md section 8 test 1: 20 disjoint tasks whose union is the stream."""
    items = [f"DS{d}+++class{c}" for d in range(7) for c in range(33)]  # 231 items: not a multiple of 20
    chunks = chunk_stream(items, 20)
    assert len(chunks) == 20
    assert [x for c in chunks for x in c] == items, "concatenated in order, the chunks are the stream"
    sets = [set(c) for c in chunks]
    assert all(not (sets[a] & sets[b]) for a in range(20) for b in range(a + 1, 20))
    sizes = [len(c) for c in chunks]
    assert max(sizes) - min(sizes) == 1 and sum(sizes) == 231 and sizes[0] == 12 and sizes[-1] == 11


def test_chunker_rejects_bad_counts_and_repeated_items():
    with pytest.raises(StreamError, match=r"5 items into 6 tasks"):
        chunk_stream(list("abcde"), 6)
    with pytest.raises(StreamError, match=r"into 0 tasks"):
        chunk_stream(list("abcde"), 0)
    with pytest.raises(StreamError, match=r"\['b'\] appear more than once"):
        chunk_stream(list("abcb"), 2)


def test_steps_for_budget_is_samples_over_batch():
    """methods.md section 8 test 2: per-task steps = n_samples / batch (727,040 / 512 = 1,420)."""
    assert steps_for_budget(727_040, 512, 1) == 727_040 // 512 == 1420
    assert steps_for_budget(16 * 128 * 150, 16, 128) == 150
    assert steps_for_budget(16 * 128 * 150 + 16 * 128 - 1, 16, 128) == 150, "rounded down: never over the budget"
    with pytest.raises(StreamError, match=r"less than one batch \(batch_size\*seq_len = 2048 tokens\)"):
        steps_for_budget(2047, 16, 128)


def test_orderings_given_random_time_difficulty():
    tasks = _tasks()
    assert order_tasks(tasks, "given", seed=0).names == ["g24", "g21", "c23", "g22"]
    assert order_tasks(tasks, "time", seed=0).names == ["g21", "g22", "c23", "g24"]  # years read from slice names
    ts = {"g24": 3, "g21": 1, "c23": 1, "g22": 0}
    assert order_tasks(tasks, "time", seed=0, timestamps=ts).names == ["g22", "g21", "c23", "g24"]  # tie keeps given order
    loss = {"g24": 2.5, "g21": 3.1, "c23": 4.0, "g22": 1.2}
    assert order_tasks(tasks, "difficulty", seed=0, difficulty=loss).names == ["g22", "g24", "g21", "c23"]
    rev = order_tasks(tasks, "difficulty", seed=0, difficulty=loss, reverse=True)
    assert rev.names == ["c23", "g21", "g24", "g22"] and rev.ordering == "difficulty_reverse"
    randoms = {seed: tuple(order_tasks(tasks, "random", seed=seed).names) for seed in range(8)}
    assert all(sorted(r) == sorted(t.name for t in tasks) for r in randoms.values())
    assert randoms[3] == tuple(order_tasks(tasks, "random", seed=3).names), "same seed, same order"
    assert len(set(randoms.values())) > 1, "the order depends on the seed"


def test_similarity_order_is_a_greedy_nearest_neighbour_chain():
    tasks = [Task(n, [n], 1) for n in "abcd"]
    sim = np.array([[1.0, 0.1, 0.9, 0.2],
                    [0.1, 1.0, 0.3, 0.8],
                    [0.9, 0.3, 1.0, 0.4],
                    [0.2, 0.8, 0.4, 1.0]])
    # from a: nearest is c (0.9); from c: d (0.4) beats b (0.3); from d: b
    assert order_tasks(tasks, "similarity", seed=0, similarity=sim).names == ["a", "c", "d", "b"]
    with pytest.raises(StreamError, match=r"shape \(3, 3\), expected \(4, 4\)"):
        order_tasks(tasks, "similarity", seed=0, similarity=sim[:3, :3])


def test_similarity_from_unigram_distributions_of_the_tasks_tokens():
    rng = np.random.default_rng(0)
    streams = {  # two vocabularies: general slices use tokens 0-49, cyber slices 50-99 (more in common within a domain)
        "general-2021": rng.integers(0, 50, 4000), "general-2022": rng.integers(0, 50, 4000),
        "cyber-2021": rng.integers(50, 100, 4000), "cyber-2022": rng.integers(45, 100, 4000),
    }
    tasks = [Task("g1", ["general-2021"], 1), Task("c1", ["cyber-2021"], 1), Task("c2", ["cyber-2022"], 1), Task("g2", ["general-202[2]"], 1)]
    sim = unigram_similarity([streams["general-2021"], streams["cyber-2021"]])
    assert sim.shape == (2, 2) and np.allclose(np.diag(sim), 1.0) and sim[0, 1] == pytest.approx(0.0)
    # from g1 the nearest is g2 (same vocabulary); then c2 (shares tokens 45-49 with general); then c1
    assert order_tasks(tasks, "similarity", seed=0, streams=streams).names == ["g1", "g2", "c2", "c1"]
    with pytest.raises(StreamError, match="needs similarity=<n x n matrix> or streams="):
        order_tasks(tasks, "similarity", seed=0)


def test_ordering_errors_name_the_problem():
    tasks = _tasks()
    with pytest.raises(StreamError, match=r"unknown ordering 'alphabetical'; choose one of"):
        order_tasks(tasks, "alphabetical", seed=0)
    with pytest.raises(StreamError, match=r"no difficulty score for tasks \['c23'\]"):
        order_tasks(tasks, "difficulty", seed=0, difficulty={"g24": 1, "g21": 2, "g22": 3})
    with pytest.raises(StreamError, match=r"task 'cy': cannot read a year from slices \['cyber-\*'\]"):
        order_tasks([Task("cy", ["cyber-*"], 1)], "time", seed=0)
    with pytest.raises(StreamError, match=r"difficulty score of tasks \['g21'\] is not a finite number"):
        order_tasks(tasks, "difficulty", seed=0, difficulty={"g24": 1, "g21": float("nan"), "c23": 0, "g22": 3})


def test_validate_stream_resolves_globs_like_params_expand(tiny_params):
    known = tiny_params.world.slices()  # the tiny profile's world: two years
    stream = Stream((Task("slice2024", [known[-1]], 2048 * 150), Task("cyber", ["cyber-*"], 2048 * 400),
                     Task("old", ["general-202[1-3]"], 2048)))
    resolved = validate_stream(stream, known, batch_size=16, seq_len=128)
    assert resolved["cyber"] == tiny_params.expand(["cyber-*"]) and len(resolved["cyber"]) == len(tiny_params.world.years)
    assert resolved["old"] == tiny_params.expand(["general-202[1-3]"])
    assert validate_stream(stream, KNOWN, 16, 128)["old"] == ["general-2021", "general-2022", "general-2023"]


def test_validate_stream_lists_every_problem():
    stream = Stream((Task("a", ["general-2024", "medical-*"], 4096), Task("a", ["cyber-2021"], 100), Task("b", [], 4096)))
    with pytest.raises(StreamError) as err:
        validate_stream(stream, KNOWN, batch_size=16, seq_len=128)
    msg = str(err.value)
    assert "invalid stream (4 problems)" in msg
    assert "task name 'a' is used more than once" in msg
    assert "task 'a': slice 'medical-*' matches no known slice (known: ['general-2021'" in msg
    assert "task 'a': budget_tokens 100 is below one batch (batch_size*seq_len = 16*128 = 2048 tokens)" in msg
    assert "task 'b' names no slices" in msg
    assert isinstance(err.value, FluxForgeError)
    with pytest.raises(StreamError, match="the stream has no tasks"):
        validate_stream(Stream(()), KNOWN, 16, 128)


def test_resolve_keeps_known_order_without_repeats():
    t = Task("x", ["general-2022", "general-*"], 1)
    assert resolve_slices(t, KNOWN) == [s for s in KNOWN if s.startswith("general-")]
    assert Stream((t,)).to_dict() == {"ordering": "given", "seed": 0, "tasks": [{"name": "x", "slices": ["general-2022", "general-*"], "budget_tokens": 1}]}
