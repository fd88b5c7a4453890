"""Transforms and taggers that never judge content: boilerplate lines out, document age into ``meta``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import ClassVar

import numpy as np
import pandas as pd

from fluxforge.config import AgeConfig, BoilerplateConfig, builds
from fluxforge.data.filters.batch import Batch, Pieces
from fluxforge.data.filters.step import Step, Verdict, first_reason, no_reasons

# A navigation bar ("Home | News | Login") or a SHORT line carrying a site-chrome phrase. The length cap
# matters on real text: a CVE description that mentions "login" or "JavaScript" mid-sentence is content,
# and without the cap the whole one-line document was stripped (seen on CTI-Bench: 83 of 1000 emptied).
_NAV_BAR = re.compile(r"\|.*\|")  # two separators: "Accept cookies | Privacy policy | Terms of use"
_CHROME_PHRASE = re.compile(
    r"cookie|privacy policy|terms of use|javascript|log ?in\b|sign up|subscribe to|back to top|print this page",
    re.IGNORECASE,
)
BOILERPLATE_MAX_WORDS = 12


def strip_boilerplate(texts: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Remove navigation / cookie / share lines (C4-style line rules). Returns (new texts, lines removed)."""
    t = pd.Series(texts, dtype=object)
    lines = Pieces.from_lists(t.reset_index(drop=True).str.split("\n"))
    if len(lines.text):
        short = (lines.text.str.split().str.len() <= BOILERPLATE_MAX_WORDS).to_numpy(dtype=bool)
        bad = lines.text.str.contains(_NAV_BAR).to_numpy(dtype=bool) | (
            short & lines.text.str.contains(_CHROME_PHRASE).to_numpy(dtype=bool))
    else:
        bad = np.zeros(0, bool)
    removed = lines.per_doc(bad).astype(np.int64)
    new = t.copy()
    changed = np.flatnonzero(removed > 0)
    if len(changed):
        kept = pd.DataFrame({"d": lines.doc[~bad], "t": lines.text[~bad].to_numpy()})
        joined = kept[np.isin(kept["d"], changed)].groupby("d")["t"].agg("\n".join)
        new.iloc[changed] = joined.reindex(changed, fill_value="").to_numpy()
    return new, pd.Series(removed, index=t.index)


@builds(BoilerplateConfig)
@dataclass
class Boilerplate(Step):
    """:func:`strip_boilerplate` on every document; one the cleaning emptied is rejected by name.

    WHY reject it here: handed on as "", the language filter (first in the chain) would blame the
    document's language for what the line cleaning did.
    """

    cfg: BoilerplateConfig = field(default_factory=BoilerplateConfig)
    name: str = "boilerplate"
    every_document: ClassVar[bool] = True

    def __call__(self, b: Batch) -> Verdict:
        new, removed = strip_boilerplate(b.texts)
        r = no_reasons(b.n)
        emptied = (new.str.strip() == "").to_numpy(dtype=bool) & (b.texts.str.strip() != "").to_numpy(dtype=bool)
        first_reason(r, emptied, f"{self.name}:empty_after_cleaning")
        return Verdict(r, new, stats={"boilerplate_lines_removed": int(removed.sum()),
                                      "docs_with_boilerplate_removed": int((removed > 0).sum())})


def tag_age(timestamps: pd.Series, cfg: AgeConfig) -> np.ndarray:
    """Age in whole days of each doc at ``reference_date`` (NaN where the timestamp is missing)."""
    ref = pd.Timestamp(date.fromisoformat(cfg.reference_date), tz="UTC")
    ts = pd.to_datetime(pd.Series(timestamps).reset_index(drop=True), utc=True, errors="coerce")
    days = ((ref - ts).dt.total_seconds() // 86400).to_numpy(dtype=np.float64)
    return np.array([np.nan if np.isnan(d) else int(d) for d in days], dtype=object)



@builds(AgeConfig)
@dataclass
class AgeTagger(Step):
    """Tag ``age_days`` (:func:`tag_age`) into the meta of every document, rejected ones included."""

    cfg: AgeConfig = field(default_factory=AgeConfig)
    name: str = "age"
    needs: ClassVar[tuple[str, ...]] = ("timestamp",)
    every_document: ClassVar[bool] = True

    def __call__(self, b: Batch) -> Verdict:
        days = tag_age(b.column("timestamp"), self.cfg)
        return Verdict(no_reasons(b.n), tags={"age_days": days}, stats={"age_missing": int(pd.isna(days).sum())})
