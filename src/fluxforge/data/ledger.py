"""The books of the data stages: every document that enters a stage is kept or rejected with a reason.

A :class:`Ledger` counts one stage (ingested = kept + rejected, per source and reason); the funnel is
the documents left after each stage. The DAG's data stages (one stage per process, ledgers in
``metrics/<stage>.json``) and ``fluxforge curate`` (all stages in one process) build both here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fluxforge.data.documents import write_docs
from fluxforge.io import atomic_dir


@dataclass
class Ledger:
    """Counts of documents in, kept and rejected (per source and reason) for one stage.

    ``add`` is told how many rows came in, counted before the stage touched them, so a row
    that a stage drops without recording it makes ``check`` fail.
    """

    stage: str
    ingested: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # key: (source, reason)
    received: int = 0

    @classmethod
    def balanced(cls, stage: str, kept: pd.DataFrame, rejected: pd.DataFrame, received: int) -> Ledger:
        """The checked ledger of a stage that split ``received`` rows into ``kept`` and ``rejected``."""
        ledger = cls(stage)
        ledger.add(kept, rejected, received)
        ledger.check()
        return ledger

    def add(self, kept: pd.DataFrame, rejected: pd.DataFrame, received: int) -> None:
        """Count ``received`` rows in, split into ``kept`` and ``rejected`` (per source and reason)."""
        self.received += received
        self.kept.update(kept["source"].value_counts().to_dict())
        for (src, reason), n in rejected.groupby(["source", "reason"]).size().items():
            self.rejected[(src, reason)] += int(n)
        self.ingested.update(kept["source"].value_counts().to_dict())
        self.ingested.update(rejected["source"].value_counts().to_dict())

    def check(self) -> None:
        """Every row that came in is kept or rejected (else an AssertionError naming the stage)."""
        kept, rej = sum(self.kept.values()), sum(self.rejected.values())
        if self.received != kept + rej:
            raise AssertionError(f"{self.stage}: ledger does not balance: {self.received} rows in, {kept} kept + {rej} rejected")

    def to_dict(self) -> dict:
        """The books as the stage's metrics: totals, rejections per reason, and per source."""
        by_reason: Counter = Counter()
        for (_, reason), n in self.rejected.items():
            by_reason[reason] += n
        return {
            "ingested": self.received,
            "kept": sum(self.kept.values()),
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "by_source": {
                s: {"ingested": self.ingested[s], "kept": self.kept[s],
                    "rejected": {r: n for (src, r), n in sorted(self.rejected.items()) if src == s}}
                for s in sorted(self.ingested)
            },
        }


def funnel(ledgers: Mapping[str, Mapping], received_as: str = "ingested") -> dict:
    """Documents left after each stage, from the stages' ledgers (``to_dict()`` or the stage metrics) in
    stage order: the first stage's input under ``received_as``, then ``after_<stage>``: kept."""
    first = next(iter(ledgers.values()))
    return {received_as: first["ingested"], **{f"after_{stage}": ledger["kept"] for stage, ledger in ledgers.items()}}


def headline(metrics: Mapping) -> dict:
    """A stage's ledger metrics without the per-source detail (what the run tracker gets as numbers)."""
    return {k: v for k, v in metrics.items() if k != "by_source"}


def write_split(stage: str, received: int, kept: pd.DataFrame, rejected: pd.DataFrame, out_dir: Path,
                kept_name: str, stats: Mapping) -> dict:
    """Write a stage's kept and rejected tables into ``out_dir`` in one rename; return its balanced
    ledger merged with ``stats`` (the stage's metrics)."""
    ledger = Ledger.balanced(stage, kept, rejected, received)
    with atomic_dir(out_dir) as tmp:
        write_docs(kept, tmp / kept_name)
        write_docs(rejected, tmp / "rejected.parquet", rejected=True)
    return {**ledger.to_dict(), **stats}
