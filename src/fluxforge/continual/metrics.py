"""Forgetting and accumulation metrics of a continual run, from a matrix of scores after each task.

The matrix: ``m[i][j]`` is the score on column ``j``'s held-out set after training task ``i``; row 0 is
the model before any task (zero-shot), row ``i`` (1..T) the model after the ``i``-th task. The first T
columns are the adaptation tasks in training order (column ``j`` is the task trained at row ``j+1``);
any further columns are held-out domains never trained on.

- ``A_KA`` (knowledge accumulation) and ``A_ZS`` (zero-shot retention), FoMo-in-Flux (Roth et al.
  2024, arXiv 2408.14471; methods.md section 8): count-weighted means over the adaptation columns and
  over the held-out columns, and their geometric mean ``sqrt(A_KA * A_ZS)``. A column may summarise
  several datasets: ``counts`` weights it (FoMo's ``(40*acc + 1*R@5)/41`` is two columns with counts 40
  and 1). By default A_KA at row i averages the tasks seen so far (columns < i; undefined at row 0);
  ``ka_over="all"`` averages every adaptation column at every row, as FoMo reports it. Both agree at
  the final row, the headline number.
- Forgetting (Chaudhry et al. 2018, arXiv 1801.10112): per task trained before the last, the best
  score it had after being learned and before the final row, minus its final score; averaged.
- BWT and FWT (Lopez-Paz & Ranzato 2017, arXiv 1706.08840, GEM section 4):
  ``BWT = mean_{j < T-1} m[T][j] - m[j+1][j]`` (how later tasks changed earlier ones) and
  ``FWT = mean_{1 <= j < T} m[j][j] - m[0][j]`` (score on a task just before training it, against the
  zero-shot model, which stands in for GEM's random-init baseline ``b_j``).

Perplexity, where lower is better (``higher_is_better=False``): every metric keeps its meaning, so the
signs flip in the formulas: forgetting is ``final - min(earlier)`` (still > 0 means forgot),
``BWT = mean m[j+1][j] - m[T][j]`` and ``FWT = mean m[0][j] - m[j][j]`` (still > 0 means helped). A_KA,
A_ZS and the geometric mean stay plain (weighted) means of perplexity: there lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from fluxforge.errors import FluxForgeError


class MetricsError(FluxForgeError):
    """A score matrix the metrics cannot be computed from: empty, ragged, non-finite, mislabelled."""


def as_2d(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """The matrix as a non-empty, rectangular, finite 2-D float array (else a clear error)."""
    try:
        rows = matrix.tolist() if isinstance(matrix, np.ndarray) else [list(r) for r in matrix]
        rows = [list(r) for r in rows]
    except TypeError:
        raise MetricsError("the score matrix must be a list of rows (a 2-D array), got a flat sequence") from None
    if not rows or not rows[0]:
        raise MetricsError("the score matrix is empty; give one row per model (zero-shot first) and one column per evaluation set")
    bad = [i for i, r in enumerate(rows) if len(r) != len(rows[0])]
    if bad:
        raise MetricsError(f"the score matrix is ragged: row 0 has {len(rows[0])} columns but rows {bad} have "
                           f"{[len(rows[i]) for i in bad]}")
    m = np.array(rows, dtype=np.float64)
    bad_cells = np.argwhere(~np.isfinite(m))
    if len(bad_cells):
        raise MetricsError(f"the score matrix has NaN/infinite cells at (row, col) {[tuple(map(int, c)) for c in bad_cells[:5]]}")
    return m


def as_matrix(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """:func:`as_2d` plus the task layout: at least one task row after the zero-shot row, and at least T columns."""
    m = as_2d(matrix)
    tasks = m.shape[0] - 1
    if tasks < 1:
        raise MetricsError("the score matrix has only the zero-shot row; add one row per trained task")
    if m.shape[1] < tasks:
        raise MetricsError(f"{tasks} trained tasks (rows after the zero-shot row) but only {m.shape[1]} columns; "
                           "the first T columns must be the tasks' own evaluation sets")
    return m


def _weights(counts: Sequence[float] | None, ncols: int) -> np.ndarray:
    if counts is None:
        return np.ones(ncols)
    w = np.asarray(counts, dtype=np.float64)
    if w.shape != (ncols,):
        raise MetricsError(f"{len(w)} counts for {ncols} columns; give one count per column")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise MetricsError(f"counts must be positive numbers, got {w.tolist()}")
    return w


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.dot(values, weights) / weights.sum()) if len(values) else math.nan


def knowledge_accumulation(matrix: Any, counts: Sequence[float] | None = None, over: Literal["seen", "all"] = "seen") -> np.ndarray:
    """A_KA after each row: weighted mean over adaptation columns seen so far (``seen``; NaN at row 0) or all of them."""
    m = as_matrix(matrix)
    tasks, w = m.shape[0] - 1, _weights(counts, m.shape[1])
    if over not in ("seen", "all"):
        raise MetricsError(f"ka_over must be 'seen' or 'all', got {over!r}")
    upto = [(i if over == "seen" else tasks) for i in range(tasks + 1)]
    return np.array([weighted_mean(m[i, :k], w[:k]) for i, k in enumerate(upto)])


def zero_shot_retention(matrix: Any, counts: Sequence[float] | None = None) -> np.ndarray:
    """A_ZS after each row: weighted mean over the held-out columns (after the T task columns); NaN if there are none."""
    m = as_matrix(matrix)
    tasks, w = m.shape[0] - 1, _weights(counts, m.shape[1])
    return np.array([weighted_mean(m[i, tasks:], w[tasks:]) for i in range(tasks + 1)])


def forgetting_per_task(matrix: Any, higher_is_better: bool = True) -> np.ndarray:
    """For each task j < T-1: best score after learning it (rows j+1..T-1) minus final score (sign-flipped for lower-is-better)."""
    m = as_matrix(matrix)
    tasks = m.shape[0] - 1
    out = []
    for j in range(tasks - 1):
        earlier = m[j + 1 : tasks, j]
        best = earlier.max() if higher_is_better else earlier.min()
        out.append((best - m[tasks, j]) * (1 if higher_is_better else -1))
    return np.array(out)


def backward_transfer(matrix: Any, higher_is_better: bool = True) -> float:
    """Lopez-Paz & Ranzato BWT: ``mean_{j<T-1} m[T][j] - m[j+1][j]`` (negated when lower is better); NaN for one task."""
    m = as_matrix(matrix)
    tasks = m.shape[0] - 1
    if tasks < 2:
        return math.nan
    d = np.array([m[tasks, j] - m[j + 1, j] for j in range(tasks - 1)])
    return float(d.mean() * (1 if higher_is_better else -1))


def forward_transfer(matrix: Any, higher_is_better: bool = True) -> float:
    """Lopez-Paz & Ranzato FWT with the zero-shot row as baseline: ``mean_{1<=j<T} m[j][j] - m[0][j]``; NaN for one task."""
    m = as_matrix(matrix)
    tasks = m.shape[0] - 1
    if tasks < 2:
        return math.nan
    d = np.array([m[j, j] - m[0, j] for j in range(1, tasks)])
    return float(d.mean() * (1 if higher_is_better else -1))


def _clean(x: Any) -> Any:
    """NaN -> None (JSON has no NaN), numpy scalars/arrays -> Python values."""
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        return None if math.isnan(x) else float(x)
    return x


@dataclass(frozen=True)
class ContinualMetrics:
    """All metrics of one score matrix. Curves have one value per row (zero-shot first); finals are the last row's."""

    higher_is_better: bool
    num_tasks: int
    num_held_out: int
    a_ka: float
    a_zs: float
    geometric_mean: float
    forgetting: float
    bwt: float
    fwt: float
    a_ka_curve: tuple[float, ...]
    a_zs_curve: tuple[float, ...]
    geometric_mean_curve: tuple[float, ...]
    forgetting_per_task: tuple[float, ...]

    @classmethod
    def compute(cls, matrix: Any, counts: Sequence[float] | None = None, higher_is_better: bool = True,
                ka_over: Literal["seen", "all"] = "seen") -> ContinualMetrics:
        m = as_matrix(matrix)
        ka = knowledge_accumulation(m, counts, ka_over)
        zs = zero_shot_retention(m, counts)
        with np.errstate(invalid="ignore"):
            geo = np.sqrt(ka * zs)
        forget = forgetting_per_task(m, higher_is_better)
        return cls(
            higher_is_better=higher_is_better, num_tasks=m.shape[0] - 1, num_held_out=m.shape[1] - (m.shape[0] - 1),
            a_ka=float(ka[-1]), a_zs=float(zs[-1]), geometric_mean=float(geo[-1]),
            forgetting=float(forget.mean()) if len(forget) else math.nan,
            bwt=backward_transfer(m, higher_is_better), fwt=forward_transfer(m, higher_is_better),
            a_ka_curve=tuple(ka.tolist()), a_zs_curve=tuple(zs.tolist()), geometric_mean_curve=tuple(geo.tolist()),
            forgetting_per_task=tuple(forget.tolist()),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: undefined values (one task: no forgetting/BWT/FWT; no held-out column: no A_ZS) are ``None``."""
        return {k: _clean(v) for k, v in asdict(self).items()}


def continual_metrics(matrix: Any, counts: Sequence[float] | None = None, higher_is_better: bool = True,
                      ka_over: Literal["seen", "all"] = "seen") -> ContinualMetrics:
    """Shorthand for :meth:`ContinualMetrics.compute`."""
    return ContinualMetrics.compute(matrix, counts, higher_is_better, ka_over)

