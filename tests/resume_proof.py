"""Proof that a run resumed rather than restarted: training is deterministic, so equal weights alone cannot tell.

A resumed process asks its sampler only for the steps after the checkpoint (the sampler position is the step),
and every history row it logs says ``resumed_from`` = the checkpoint's step; the rows restored from the
checkpoint still say 0. A silent restart asks for step 0 again and logs ``resumed_from`` 0 everywhere.
"""

from __future__ import annotations

from typing import Any


class RecordingSampler:
    """A sampler that remembers the steps it was asked for, in order (everything else is the wrapped sampler's)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked: list[int] = []

    def batch(self, step: int) -> Any:
        self.asked.append(step)
        return self.inner.batch(step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def assert_resumed(history: list[dict], asked: list[int], at: int, steps: int) -> None:
    """The process that produced ``asked`` started at checkpoint step ``at`` and ran only steps ``at .. steps-1``."""
    assert asked == list(range(at, steps)), (
        f"the resumed process trained steps {asked[:3]}...{asked[-1:]}, not {at}..{steps - 1}: it did not resume")
    assert [r["step"] for r in history][-1] == steps
    assert {r["resumed_from"] for r in history if r["step"] > at} == {at}, "rows after the checkpoint name it"
    assert {r["resumed_from"] for r in history if r["step"] <= at} == {0}, "rows restored from the checkpoint keep 0"
