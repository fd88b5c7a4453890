"""FineWeb quality rules (Penedo et al. 2024, "The FineWeb Datasets", arXiv 2406.17557) as datatrove's
``FineWebQualityFilter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fluxforge.config import FineWebConfig, builds
from fluxforge.data.filters.batch import Batch, Pieces
from fluxforge.data.filters.step import Step, Verdict, first_reason, no_reasons
from fluxforge.data.filters.tokens import ENDS_TERMINAL


@builds(FineWebConfig)
@dataclass
class FineWebQuality(Step):
    """FineWeb quality rules (Penedo et al. 2024) as datatrove's ``FineWebQualityFilter``.

    Lines are ``text.split("\\n")`` without blank ones; line_punct_ratio: share ending in a sentence
    terminal < 0.12; short_line_ratio: share of lines <= 30 chars > 0.67; char_dup_ratio: chars of
    duplicated lines / chars without newlines > 0.01; list_ratio: newlines / words > 0.3.
    """

    cfg: FineWebConfig = field(default_factory=FineWebConfig)
    name: str = "fineweb"

    def __call__(self, b: Batch) -> Verdict:
        c, r = self.cfg, no_reasons(b.n)
        raw = b.split("\n")
        nonblank = (raw.text.str.strip() != "").to_numpy(dtype=bool) if len(raw.text) else np.zeros(0, bool)
        lines = Pieces(raw.doc[nonblank], raw.text[nonblank].reset_index(drop=True), b.n)
        n = lines.per_doc()
        safe = np.maximum(n, 1)
        first_reason(r, n == 0, f"{self.name}:empty")
        if len(lines.text):
            punct = lines.per_doc(lines.text.str.contains(ENDS_TERMINAL).to_numpy(dtype=bool)) / safe
            short = lines.per_doc(lines.lengths <= c.short_line_length) / safe
        else:
            punct = short = np.zeros(b.n)
        first_reason(r, (punct < c.line_punct_thr) & ~((punct == 0) & c.line_punct_exclude_zero), f"{self.name}:line_punct_ratio")
        first_reason(r, short > c.short_line_thr, f"{self.name}:short_line_ratio")
        newlines = b.count("\n")
        chars = np.maximum(b.lengths - newlines, 1)
        first_reason(r, lines.duplicates()[1] / chars > c.char_duplicates_ratio, f"{self.name}:char_dup_ratio")
        words = b.words.per_doc()
        ratio = np.divide(newlines, words, out=np.full(b.n, np.inf), where=words > 0)
        first_reason(r, ratio > c.new_line_ratio, f"{self.name}:list_ratio")
        return Verdict(r)

