"""C4 rules (Raffel et al. 2020, arXiv 1910.10683, section 2.2) as datatrove's ``C4QualityFilter``.

Terminal punctuation is off by default as in FineWeb's recipe (datatrove ``examples/fineweb.py``:
``C4QualityFilter(filter_no_terminal_punct=False)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fluxforge.config import C4Config, builds
from fluxforge.data.filters.batch import Batch
from fluxforge.data.filters.step import Step, Verdict, first_reason, no_reasons
from fluxforge.data.filters.tokens import PUNCT_TOKEN, TERMINAL_SET

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")  # datatrove c4_filters.CITATION_REGEX
_C4_END = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def sentences_per_line(b: Batch) -> np.ndarray:
    """Sentences in each of ``b.splitlines``, as spaCy's sentencizer counts them (datatrove's C4 rule).

    A sentence starts at a non-punctuation token preceded, since the previous non-punctuation token of the
    line, by a sentence-terminal token; computed from the shared word split with cumulative sums.
    """
    w, wl, n_lines = b.words, b.word_line, len(b.splitlines.text)
    out = np.zeros(n_lines, dtype=np.int64)
    if not len(w.text):
        return out
    is_term = b.word_feature("terminal", lambda v: v.isin(TERMINAL_SET).to_numpy(dtype=bool)).astype(bool)
    real = ~b.word_feature("punct", lambda v: v.str.fullmatch(PUNCT_TOKEN).to_numpy(dtype=bool)).astype(bool)
    cum = np.concatenate([[0], np.cumsum(is_term)])
    new_line = np.r_[True, wl[1:] != wl[:-1]]
    line_start = np.flatnonzero(new_line)[np.cumsum(new_line) - 1]
    idx = np.flatnonzero(real)
    prev = np.r_[-1, idx[:-1]]
    same = (prev >= 0) & (wl[np.maximum(prev, 0)] == wl[idx])
    since = np.where(same, prev + 1, line_start[idx])
    starts = cum[idx] - cum[since] > 0
    np.add.at(out, wl[idx[starts]], 1)
    out[np.unique(wl)] += 1
    return out


@builds(C4Config)
@dataclass
class C4(Step):
    """C4 rules (Raffel et al. 2020) as datatrove's ``C4QualityFilter``: a line transform plus doc rules.

    Per line (``splitlines``, stripped), in datatrove's order: drop lines with a word over
    ``max_word_length`` chars, strip citations, drop lines without terminal punctuation (off by default,
    FineWeb recipe), with < ``min_words_per_line`` whitespace words, mentioning javascript or a policy
    phrase. The doc is dropped on "lorem ipsum" or ``{`` in a surviving line (the first such line decides
    the reason), or when the kept lines hold < ``min_num_sentences`` sentences.
    """

    cfg: C4Config = field(default_factory=C4Config)
    name: str = "c4"

    def __call__(self, b: Batch) -> Verdict:
        c, lines = self.cfg, b.splitlines
        n_lines = len(lines.text)
        if not n_lines:
            r = no_reasons(b.n)
            first_reason(r, np.ones(b.n, bool), f"{self.name}:min_num_sentences")
            return Verdict(r, b.texts)
        s = lines.text.str.strip()
        n_ws_words = s.str.count(r"\S+").to_numpy()
        alive = ~s.str.contains(rf"\S{{{c.max_word_length + 1},}}").to_numpy(dtype=bool)
        if c.remove_citations:
            s = s.str.replace(_CITATION, "", regex=True)
        if c.filter_no_terminal_punct:
            alive &= (s.str.endswith(_C4_END) & ~s.str.endswith("...")).to_numpy(dtype=bool)
        alive &= n_ws_words >= c.min_words_per_line
        low = s.str.lower()
        lorem = alive & low.str.contains("lorem ipsum", regex=False).to_numpy(dtype=bool) & c.filter_lorem_ipsum
        if c.filter_javascript:
            alive &= ~low.str.contains("javascript", regex=False).to_numpy(dtype=bool)
        curly = alive & ~lorem & s.str.contains("{", regex=False).to_numpy(dtype=bool) & c.filter_curly_bracket
        if c.filter_policy:
            alive &= ~low.str.contains("|".join(_POLICY)).to_numpy(dtype=bool)
        sentences = lines.per_doc(np.where(alive, sentences_per_line(b), 0))
        r = no_reasons(b.n)
        first_lorem, first_curly = lines.first_per_doc(lorem), lines.first_per_doc(curly)
        lorem_first = (first_lorem >= 0) & ((first_curly < 0) | (first_lorem < first_curly))
        first_reason(r, lorem_first, f"{self.name}:lorem_ipsum")
        first_reason(r, first_curly >= 0, f"{self.name}:curly_bracket")
        first_reason(r, sentences < c.min_num_sentences, f"{self.name}:min_num_sentences")
        removed = lines.per_doc(~alive)
        new = b.texts.copy()
        changed = np.flatnonzero((removed > 0) | (b.texts.str.strip() != b.texts).to_numpy())
        if len(changed):
            kept = pd.DataFrame({"d": lines.doc[alive], "t": s[alive].to_numpy()})
            joined = kept[np.isin(kept["d"], changed)].groupby("d")["t"].agg("\n".join)
            new.iloc[changed] = joined.reindex(changed, fill_value="").str.strip().to_numpy()
        return Verdict(r, new, stats={"c4_lines_removed": int(removed.sum()), "c4_docs_modified": int((removed > 0).sum())})

