"""Significance tests for accuracy differences over a fixed question set."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
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


def significance(per_q: pd.DataFrame, final: str, baseline: str = "pretrain") -> dict[str, dict]:
    """Accuracy of the ``final`` model against ``baseline`` and against chance (one-sided), per domain.

    ``per_q`` holds one row per model and question (columns model, domain, id, correct). Questions are
    paired by id, so the McNemar test sees which questions each model got right, not only how many.
    """
    def correct(model: str, domain: str) -> list[bool]:
        return per_q[(per_q["model"] == model) & (per_q["domain"] == domain)].sort_values("id")["correct"].tolist()

    out = {}
    for domain in ("cyber", "general"):
        after, before = correct(final, domain), correct(baseline, domain)
        n = len(after)
        mc = mcnemar_one_sided(after, before)
        out[domain] = {
            "n": n, "acc_pretrain": sum(before) / n, "acc_final": sum(after) / n,
            "gain": (sum(after) - sum(before)) / n,
            "p_final_vs_chance": binomial_vs_chance(sum(after), n),
            "p_pretrain_vs_chance": binomial_vs_chance(sum(before), n),
            "p_final_vs_pretrain": mc["p_value"], "gained": mc["gained"], "lost": mc["lost"],
        }
    return out
