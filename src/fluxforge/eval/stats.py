"""Significance tests for accuracy differences over a fixed question set."""

from __future__ import annotations

from collections.abc import Sequence

from scipy.stats import binomtest


def binomial_vs_chance(correct: int, n: int, chance: float = 0.25) -> float:
    """One-sided p-value that accuracy exceeds chance."""
    return float(binomtest(correct, n, chance, alternative="greater").pvalue) if n else 1.0


def mcnemar_one_sided(after: Sequence[bool], before: Sequence[bool]) -> dict:
    """Exact McNemar test (a one-sided binomial test on discordant pairs) that ``after`` beats ``before``.

    Pairs the same questions, so it is far more sensitive than comparing two accuracies.
    """
    if len(after) != len(before):
        raise ValueError("paired test needs the same questions for both models")
    gained = sum(a and not b for a, b in zip(after, before))
    lost = sum(b and not a for a, b in zip(after, before))
    p = float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue) if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p_value": p}
