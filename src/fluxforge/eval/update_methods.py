"""The update-method comparison over seeds (benchmarks/update_methods.py): intervals, directions against full
finetuning, and FoMo-in-Flux's finding next to each.

One place for the arithmetic and the words, so BENCHMARKS.md (written by the benchmark) and the report's section
(read from benchmarks/results/update_methods.json) can never say two different things about the same runs.
A difference is called only when the paired 95 % interval excludes 0: three seeds of a small model are noisy, and a
direction read off the means alone would be noise half the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

RESULTS = Path("benchmarks") / "results" / "update_methods.json"  # written by benchmarks/update_methods.py
METHODS = ("finetune", "lora", "ewc", "ema_merge", "zs_merge")
# (key in a run, label, sign): sign +1 when higher is better, -1 when lower is (forgetting)
METRICS = (("a_ka", "A_KA", 1), ("a_zs", "A_ZS", 1), ("geometric_mean", "sqrt(A_KA A_ZS)", 1), ("forgetting", "forgetting", -1))
# FoMo-in-Flux's findings (methods.md section 8 and issue 17), one per method, to set each direction against
FOMO = {
    "lora": "FoMo-in-Flux: parameter-efficient updates forget less but learn less than full finetuning",
    "ewc": "FoMo-in-Flux: its table 4 leaves EWC 14 steps a task (the Fisher pass charged to every step), so it barely "
           "moves from the zero-shot model: retention kept, little accumulated",
    "ema_merge": "FoMo-in-Flux: model merging gives the best accumulation/retention trade-off (the highest geometric mean)",
    "zs_merge": "FoMo-in-Flux: model merging gives the best accumulation/retention trade-off (the highest geometric mean)",
}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for one value)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def direction(diffs: list[float], sign: int) -> str:
    """Paired differences to finetuning as a word: better/worse when the 95% interval excludes 0, else unclear."""
    mean, half = interval(diffs)
    if mean - half > 0:
        return "better" if sign > 0 else "worse"
    if mean + half < 0:
        return "worse" if sign > 0 else "better"
    return "no clear difference"


@dataclass(frozen=True)
class MethodRow:
    """One method over its seeds: (mean, half-width) per metric and of the base-data perplexity rise."""

    method: str
    seeds: int
    steps: dict[str, int]
    memory_multiplier: float
    cells: dict[str, tuple[float, float]]
    ppl_rise: tuple[float, float]


@dataclass(frozen=True)
class Comparison:
    """The table rows, the paired verdicts against finetune (one sentence each) and the JSON summary."""

    rows: list[MethodRow]
    verdicts: dict[str, str]
    summary: dict[str, dict]


def compare(runs: list[dict[str, Any]], methods: list[str] | tuple[str, ...] = METHODS) -> Comparison:
    """Intervals per method and, paired by seed, each method's difference to ``finetune`` on every metric.

    ``runs``: one dict per (method, seed) as benchmarks/update_methods.py records it. A method with no run, or no
    finetune run to pair with, is a ``ValueError`` naming it."""
    by = {m: [r for r in runs if r["method"] == m] for m in methods}
    if missing := [m for m in methods if not by[m]]:
        raise ValueError(f"no runs of {missing} (methods with runs: {sorted({r['method'] for r in runs})})")
    if "finetune" not in by:
        raise ValueError("the comparison pairs every method with finetune: it has no finetune runs")
    rows, summary, verdicts = [], {}, {}
    for m in methods:
        cells = {k: interval([r[k] for r in by[m] if r[k] is not None]) for k, _, _ in METRICS}
        first = by[m][0]
        rows.append(MethodRow(m, len(by[m]), dict(first["steps"]), float(first["memory_multiplier"]), cells,
                              interval([r["base_ppl_rise"] for r in by[m]])))
        summary[m] = {k: {"mean": mu, "half_width": h} for k, (mu, h) in cells.items()}
    ref = {r["seed"]: r for r in by["finetune"]}
    for m in methods:
        if m == "finetune":
            continue
        words = []
        for k, label, sign in METRICS:
            diffs = [r[k] - ref[r["seed"]][k] for r in by[m]
                     if r["seed"] in ref and r[k] is not None and ref[r["seed"]][k] is not None]
            mean, half = interval(diffs)
            words.append(f"{label} {direction(diffs, sign)} ({mean:+.3f} ± {half:.3f})")
            summary[m][f"vs_finetune_{k}"] = {"mean": mean, "half_width": half, "direction": direction(diffs, sign)}
        verdicts[m] = f"{m} vs finetune, paired by seed: {'; '.join(words)}. {FOMO.get(m, '')}."
    return Comparison(rows, verdicts, summary)
