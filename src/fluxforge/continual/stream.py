"""A continual-pretraining stream: an ordered list of tasks, each a slice of the corpus with a token budget.

FoMo-in-Flux (Roth et al. 2024, arXiv 2408.14471; methods.md section 8) builds a stream as an ordered
list of items cut into ``task.num`` chunks (default 20), orders it in several ways (random, time,
semantic similarity, zero-shot performance i.e. difficulty, each also reversed) and gives every task the
same update budget (``n_samples = 727,040`` at batch 512, so 1,420 steps a task) so that methods are
compared at equal compute. Here a task is a set of corpus slices (``general-2024``, ``cyber-*``, ...:
a time window, a domain or a set of sources) and the budget is counted in tokens.

Slice names may be globs, matched with :func:`fnmatch.fnmatch` as :meth:`fluxforge.config.Params.expand`
matches them, so ``general-202[1-3]`` names three slices.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

# the checks on a stream's tasks are params validation: they live in config (used here on running streams too)
from fluxforge.config.stream import StreamError, resolve_slices

ORDERINGS = ("given", "time", "random", "similarity", "difficulty")
_YEAR = re.compile(r"(?:^|\D)(\d{4})$")  # a slice name ending in a four-digit year: "general-2024"

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Task:
    """One stage of the stream: train on ``slices`` (names or globs) for ``budget_tokens`` tokens."""

    name: str
    slices: tuple[str, ...]
    budget_tokens: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "slices", tuple(self.slices))  # accept a list, keep the dataclass hashable


@dataclass(frozen=True)
class Stream:
    """Tasks in the order they are trained, with how that order was made (for the run's record)."""

    tasks: tuple[Task, ...]
    ordering: str = "given"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, object]:
        return {"ordering": self.ordering, "seed": self.seed,
                "tasks": [{"name": t.name, "slices": list(t.slices), "budget_tokens": t.budget_tokens} for t in self.tasks]}


# ----------------------------------------------------------------------------- budget
def steps_for_budget(budget_tokens: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that spend ``budget_tokens``: ``budget // (batch_size * seq_len)``, rounded down.

    WHY rounded down: every method must get the same budget and none may exceed it (FoMo-in-Flux's
    per-task ``n_samples / batch``). A step trains ``batch_size * seq_len`` target tokens (the extra
    ``+1`` token of a window is the last target's input shift, not an extra trained token). With
    ``seq_len=1`` the budget counts samples: ``steps_for_budget(727_040, 512, 1) == 1420``.
    """
    if batch_size < 1 or seq_len < 1:
        raise StreamError(f"batch_size and seq_len must be >= 1, got batch_size={batch_size}, seq_len={seq_len}")
    per_step = batch_size * seq_len
    steps = int(budget_tokens) // per_step
    if steps < 1:
        raise StreamError(f"a budget of {budget_tokens} tokens is less than one batch (batch_size*seq_len = {per_step} tokens); "
                          "raise the budget or shrink the batch")
    return steps


# ----------------------------------------------------------------------------- FoMo-in-Flux chunking
def chunk_stream(items: Sequence[T], num_tasks: int) -> list[list[T]]:
    """Cut an ordered stream of items (FoMo: ``"DATASET+++classname"``) into ``num_tasks`` contiguous chunks.

    Chunk sizes differ by at most one (the first ``len % num_tasks`` chunks get the extra item, as
    :func:`numpy.array_split`); the chunks are disjoint and their concatenation is the stream. Repeated
    items are an error: they would land in two tasks and break disjointness.
    """
    n = len(items)
    if not 1 <= num_tasks <= n:
        raise StreamError(f"cannot cut a stream of {n} items into {num_tasks} tasks; num_tasks must be in [1, {n}]")
    counts: dict[T, int] = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    dups = [x for x, c in counts.items() if c > 1]
    if dups:
        raise StreamError(f"stream items {dups[:5]} appear more than once; each item must belong to exactly one task")
    base, extra = divmod(n, num_tasks)
    out, start = [], 0
    for k in range(num_tasks):
        size = base + (1 if k < extra else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


# ----------------------------------------------------------------------------- orderings
def unigram_similarity(token_arrays: Sequence[np.ndarray], vocab_size: int | None = None) -> np.ndarray:
    """Cosine similarity of the unigram (token frequency) distributions of each array: an ``n x n`` matrix."""
    if not token_arrays:
        raise StreamError("no token arrays to compare")
    empty = [i for i, a in enumerate(token_arrays) if len(a) == 0]
    if empty:
        raise StreamError(f"token arrays {empty} are empty; a task needs tokens to compare its distribution")
    v = vocab_size or int(max(int(np.max(a)) for a in token_arrays)) + 1
    hist = np.stack([np.bincount(np.asarray(a, dtype=np.int64), minlength=v).astype(np.float64) for a in token_arrays])
    unit = hist / np.linalg.norm(hist, axis=1, keepdims=True)
    return unit @ unit.T


def _similarity_chain(sim: np.ndarray) -> list[int]:
    """Greedy nearest-neighbour chain from item 0: always step to the most similar unvisited item (ties: lowest index)."""
    order, left = [0], list(range(1, len(sim)))
    while left:
        cur = order[-1]
        nxt = max(left, key=lambda j: (sim[cur, j], -j))
        order.append(nxt)
        left.remove(nxt)
    return order


def _year_of(task: Task) -> int:
    years = [int(m.group(1)) for s in task.slices if (m := _YEAR.search(s))]
    if not years or len(years) != len(task.slices):
        raise StreamError(f"task '{task.name}': cannot read a year from slices {list(task.slices)} "
                          "(need names ending in a year, like 'general-2024'); pass timestamps={task name: time}")
    return max(years)


def _scores_for(tasks: Sequence[Task], scores: Mapping[str, float], what: str) -> np.ndarray:
    missing = [t.name for t in tasks if t.name not in scores]
    if missing:
        raise StreamError(f"no {what} for tasks {missing} (given for {sorted(scores)})")
    out = np.array([float(scores[t.name]) for t in tasks])
    bad = [t.name for t, v in zip(tasks, out) if not np.isfinite(v)]
    if bad:
        raise StreamError(f"{what} of tasks {bad} is not a finite number")
    return out


def order_tasks(tasks: Sequence[Task], ordering: str, *, seed: int, timestamps: Mapping[str, float] | None = None,
                similarity: np.ndarray | Sequence[Sequence[float]] | None = None,
                difficulty: Mapping[str, float] | None = None,
                streams: Mapping[str, np.ndarray] | None = None, reverse: bool = False) -> Stream:
    """Order tasks into a :class:`Stream` (FoMo-in-Flux's stream orderings).

    - ``given``: as listed.
    - ``time``: ascending ``timestamps[task name]``; without timestamps, the latest year in the task's
      slice names (``general-2024`` -> 2024). Ties keep the given order.
    - ``random``: a permutation seeded by ``seed``.
    - ``similarity``: greedy nearest-neighbour chain from the first given task, by ``similarity`` (an
      ``n x n`` matrix in the given task order) or, without it, by the cosine of the tasks' unigram
      token distributions, the tokens taken from ``streams`` (slice name -> token array, as
      :func:`fluxforge.data.tokenize.load_streams` gives them; globs resolved against its keys).
    - ``difficulty``: ascending ``difficulty[task name]`` (e.g. the current model's loss on the task:
      easy first, as FoMo's performance ordering). The score is an input; ties keep the given order.

    ``reverse=True`` reverses the result (FoMo's ``*_reverse`` streams).
    """
    tasks = list(tasks)
    if not tasks:
        raise StreamError("no tasks to order; give at least one task")
    if ordering not in ORDERINGS:
        raise StreamError(f"unknown ordering '{ordering}'; choose one of {list(ORDERINGS)}")
    n = len(tasks)
    if ordering == "given":
        idx = list(range(n))
    elif ordering == "random":
        idx = np.random.default_rng(seed).permutation(n).tolist()
    elif ordering == "time":
        keys = _scores_for(tasks, timestamps, "timestamp") if timestamps is not None else np.array([_year_of(t) for t in tasks])
        idx = np.argsort(keys, kind="stable").tolist()
    elif ordering == "difficulty":
        if difficulty is None:
            raise StreamError("ordering 'difficulty' needs difficulty={task name: score} (e.g. the model's loss on each task)")
        idx = np.argsort(_scores_for(tasks, difficulty, "difficulty score"), kind="stable").tolist()
    else:
        idx = _similarity_chain(_similarity_matrix(tasks, similarity, streams))
    if reverse:
        idx = idx[::-1]
    return Stream(tuple(tasks[i] for i in idx), ordering=ordering + ("_reverse" if reverse else ""), seed=seed)


def _similarity_matrix(tasks: Sequence[Task], similarity: np.ndarray | Sequence[Sequence[float]] | None,
                       streams: Mapping[str, np.ndarray] | None) -> np.ndarray:
    n = len(tasks)
    if similarity is not None:
        sim = np.asarray(similarity, dtype=np.float64)
        if sim.shape != (n, n):
            raise StreamError(f"similarity matrix has shape {sim.shape}, expected ({n}, {n}) for {n} tasks in the given order")
        if not np.all(np.isfinite(sim)):
            raise StreamError("similarity matrix holds NaN or infinite values")
        return sim
    if streams is None:
        raise StreamError("ordering 'similarity' needs similarity=<n x n matrix> or streams={slice name: tokens} to compare tasks")
    known = list(streams)
    arrays = []
    for t in tasks:
        names = resolve_slices(t, known)
        if not names:
            raise StreamError(f"task '{t.name}': slices {list(t.slices)} match no stream (streams: {known})")
        arrays.append(np.concatenate([np.asarray(streams[s]) for s in names]))
    return unigram_similarity(arrays)
