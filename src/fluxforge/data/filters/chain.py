"""The filter chain: every enabled step of ``data.filters`` in a fixed order, over a table of documents.

Order: boilerplate lines are stripped from every document (one the cleaning empties is rejected by
name); the filters run in FineWeb's order (URL, language, Gopher repetition, Gopher quality, C4,
FineWeb), then toxicity, each on the documents still kept (C4 also rewrites their lines); kept
texts get PII redacted; the age tag goes on every row. The first failing rule is a document's
reason (``"step:rule"``); every input row ends in exactly one of the two output tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fluxforge.config import FilterConfig, builds
from fluxforge.data.filters.batch import Batch
from fluxforge.data.filters.c4 import C4
from fluxforge.data.filters.fineweb import FineWebQuality
from fluxforge.data.filters.gopher import GopherQuality, GopherRepetition
from fluxforge.data.filters.language import LanguageFilter
from fluxforge.data.filters.pii import PIIRedactor
from fluxforge.data.filters.step import FilterError, Step, no_reasons
from fluxforge.data.filters.toxicity import Toxicity
from fluxforge.data.filters.transforms import AgeTagger, Boilerplate
from fluxforge.data.filters.url import URLBlocklist

# the steps that judge content, in FineWeb's order, then toxicity
FILTERS: dict[str, type[Step]] = {
    "url_blocklist": URLBlocklist, "language": LanguageFilter, "gopher_repetition": GopherRepetition,
    "gopher_quality": GopherQuality, "c4": C4, "fineweb": FineWebQuality, "toxicity": Toxicity,
}
# every step, each keyed by its section of data.filters, in chain order
STEPS: dict[str, type[Step]] = {"boilerplate": Boilerplate, **FILTERS, "pii": PIIRedactor, "age": AgeTagger}


@dataclass
class Chain:
    """Steps applied in order to a table of documents; see the module docstring for what each sees."""

    steps: Sequence[Step]

    def check_columns(self, df: pd.DataFrame) -> None:
        """Every column a step reads is there, and every text is a string (else a FilterError naming the row)."""
        need = {"text"}.union(*(step.needs for step in self.steps))
        missing = sorted(need - set(df.columns))
        if missing:
            raise FilterError(f"apply_filters: the batch lacks column(s) {missing} (has {list(df.columns)}); "
                              "disable the filter that needs it in data.filters or add the column")
        bad = df.index[~df["text"].map(lambda t: isinstance(t, str))]
        if len(bad):
            row = df.loc[bad[0]]
            raise FilterError(f"apply_filters: text of row {bad[0]} (id {row.get('id', '?')!r}) is "
                              f"{type(row['text']).__name__}, not str")

    def __call__(self, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """Return (kept, rejected with ``reason`` and ``stage="filter"``, stats).

        Rejected rows keep the text as it came in (nothing is lost); tags go into every row's ``meta``.
        """
        df = df.reset_index(drop=True).copy()
        self.check_columns(df)
        n, stats, tags = len(df), {}, {}
        original = df["text"].copy()
        if "meta" not in df.columns:
            df["meta"] = "{}"
        reason, alive = no_reasons(n), np.ones(n, bool)
        batch = None  # the documents still kept: their splits are shared by the steps that follow
        for step in self.steps:
            if step.every_document:
                idx, view = np.arange(n), Batch(df["text"], df)
            else:
                idx = np.flatnonzero(alive)
                if not len(idx):
                    continue
                if batch is None:
                    batch = Batch(df["text"], df).subset(alive) if not alive.all() else Batch(df["text"], df)
                view = batch
            verdict = step(view)
            stats.update(verdict.stats)
            for key, values in verdict.tags.items():
                tags.setdefault(key, np.full(n, np.nan, dtype=object))[idx] = values
            live = alive[idx]
            drop = live & ~verdict.keep
            reason[idx[drop]] = verdict.reasons[drop]
            alive[idx[drop]] = False
            changed = np.zeros(len(idx), bool)
            if verdict.texts is not None:
                changed = live & verdict.keep & (verdict.texts.to_numpy() != view.texts.to_numpy())
                if step.every_document:  # it saw every row: its texts are the new column
                    df["text"] = view.texts.where(~changed, verdict.texts)
                else:
                    df.loc[idx[changed], "text"] = verdict.texts[changed].to_numpy()
            if step.every_document:
                batch = None  # rebuilt from the new texts when a step next needs it
            else:
                if verdict.texts is not None:
                    batch = batch.replace(batch.texts.where(~changed, verdict.texts), changed)
                batch = batch.subset(~drop)
        if tags:
            df["meta"] = merge_meta(df["meta"], tags, df["id"] if "id" in df else pd.Series(range(n)))
        rejected = df[~alive].copy()
        rejected["text"] = original[~alive]
        rejected["reason"] = reason[~alive]
        rejected["stage"] = "filter"
        return df[alive].reset_index(drop=True), rejected.reset_index(drop=True), stats


def merge_meta(meta: pd.Series, tags: dict[str, np.ndarray], ids: pd.Series) -> list[str]:
    """Each row's ``meta`` JSON with the steps' tags added (a NaN tag is left out)."""
    out = []
    for i, m in enumerate(meta.tolist()):
        try:
            d = json.loads(m) if isinstance(m, str) and m else {}
        except json.JSONDecodeError as err:
            raise FilterError(f"apply_filters: meta of doc {ids.iloc[i]!r} (row {i}) is not JSON: {err}") from None
        for k, v in tags.items():
            x = v[i]
            if isinstance(x, float) and np.isnan(x):
                continue
            d[k] = x.item() if isinstance(x, np.generic) else x
        out.append(json.dumps(d))
    return out


@builds(FilterConfig)
def build_chain(cfg: FilterConfig) -> Chain:
    """The chain of ``data.filters`` (also ``cfg.build()``): each enabled section builds its step, in chain order."""
    return Chain([getattr(cfg, name).build() for name in STEPS if getattr(cfg, name).enabled])


def apply_filters(df: pd.DataFrame, cfg: FilterConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(kept, rejected, stats) of the chain of ``cfg`` over ``df``."""
    return build_chain(cfg)(df)


def alone(cfg: FilterConfig, name: str) -> FilterConfig:
    """``cfg`` with filter ``name`` as its only filter: the other filters, PII and age off, line cleaning as set."""
    off = {other: getattr(cfg, other).model_copy(update={"enabled": False}) for other in (*FILTERS, "pii", "age")}
    return cfg.model_copy(update={**off, name: getattr(cfg, name)})


def each_filter_alone(df: pd.DataFrame, cfg: FilterConfig) -> dict[str, pd.DataFrame]:
    """The rows each enabled filter rejects when it runs ALONE on ``df`` (in the chain, a document is
    charged to the first rule that fails it; alone, each rule shows what it catches by itself)."""
    return {name: apply_filters(df, alone(cfg, name))[1] for name in FILTERS if getattr(cfg, name).enabled}
