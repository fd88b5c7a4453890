"""Quality filters as a list of small steps (datatrove-style), applied to whole batches.

Thresholds default to the published values, as implemented by datatrove:
- Gopher quality and repetition rules: Rae et al. 2021, "Scaling Language Models:
  Methods, Analysis & Insights from Training Gopher", Appendix A (arXiv 2112.11446).
- Boilerplate lines and lorem ipsum: the C4 rules of Raffel et al. 2020 (arXiv 1910.10683).
- Toxicity: a lexicon (``assets/toxic_lexicon.txt``), the simple rule C4 uses with its
  bad-words list; a classifier can replace it later.

Each step returns, for the batch, the reason a document is dropped ("" = keep), so
the ledger can say exactly why every document left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fluxforge.config import FilterConfig

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
_PUNCT_WORD = re.compile(r"^\W+$")
_BOILERPLATE = re.compile(
    r"(cookie|privacy policy|terms of use|javascript|log ?in\b|sign up|subscribe to|back to top|print this page)"
    r"|(\|.*\|.*\|)",
    re.IGNORECASE,
)


def _lexicon() -> frozenset[str]:
    path = Path(__file__).parent / "assets" / "toxic_lexicon.txt"
    return frozenset(w.strip().lower() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#"))


def strip_boilerplate(texts: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Remove navigation/cookie/policy lines (C4 line rules). Returns (new texts, lines removed)."""
    def one(t: str) -> tuple[str, int]:
        lines = t.split("\n")
        keep = [ln for ln in lines if not _BOILERPLATE.search(ln)]
        return "\n".join(keep), len(lines) - len(keep)

    res = [one(t) for t in texts]
    return pd.Series([r[0] for r in res], index=texts.index), pd.Series([r[1] for r in res], index=texts.index)


@dataclass
class C4Lorem:
    name: str = "c4_lorem_ipsum"

    def __call__(self, texts: pd.Series) -> pd.Series:
        return np.where(texts.str.contains("lorem ipsum", case=False, regex=False), self.name, "")


@dataclass
class GopherRepetition:
    dup_line_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    name: str = "gopher_repetition"

    def __call__(self, texts: pd.Series) -> pd.Series:
        out = []
        for t in texts:
            lines = [ln for ln in re.split(r"\n+", t) if ln.strip()]
            seen, dup, dup_chars = set(), 0, 0
            for ln in lines:
                if ln in seen:
                    dup += 1
                    dup_chars += len(ln)
                seen.add(ln)
            if lines and dup / len(lines) > self.dup_line_frac:
                out.append(f"{self.name}:dup_line_frac")
            elif t and dup_chars / len(t) > self.dup_line_char_frac:
                out.append(f"{self.name}:dup_line_char_frac")
            else:
                out.append("")
        return np.array(out, dtype=object)


@dataclass
class GopherQuality:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    name: str = "gopher_quality"

    def _one(self, text: str) -> str:
        words = text.split()
        non_symbol = [w for w in words if not _PUNCT_WORD.match(w)]
        n = len(non_symbol)
        if n < self.min_doc_words:
            return "min_doc_words"
        if n > self.max_doc_words:
            return "max_doc_words"
        avg = sum(len(w) for w in non_symbol) / n
        if avg < self.min_avg_word_length:
            return "min_avg_word_length"
        if avg > self.max_avg_word_length:
            return "max_avg_word_length"
        if text.count("#") / n > self.max_symbol_word_ratio:
            return "hash_ratio"
        if (text.count("...") + text.count("\u2026")) / n > self.max_symbol_word_ratio:
            return "ellipsis_ratio"
        if sum(any(c.isalpha() for c in w) for w in words) / max(len(words), 1) < self.min_alpha_words_ratio:
            return "alpha_words_ratio"
        lower = {w.lower().strip(".,;:!?\"'()") for w in words}
        if sum(s in lower for s in STOP_WORDS) < self.min_stop_words:
            return "stop_words"
        return ""

    def __call__(self, texts: pd.Series) -> pd.Series:
        return np.array([f"{self.name}:{r}" if (r := self._one(t)) else "" for t in texts], dtype=object)


@dataclass
class LexiconToxicity:
    max_hits: int = 0
    name: str = "toxicity_lexicon"

    def __post_init__(self) -> None:
        self.words = _lexicon()

    def __call__(self, texts: pd.Series) -> pd.Series:
        words = texts.str.lower().str.findall(r"[a-z]+")
        hits = words.map(lambda ws: sum(w in self.words for w in ws))
        return np.where(hits > self.max_hits, self.name, "")


def build_filters(cfg: FilterConfig) -> list:
    """The default chain, cheapest and most specific first; the first failing rule is the reason."""
    return [
        C4Lorem(),
        GopherRepetition(cfg.dup_line_frac, cfg.dup_line_char_frac),
        GopherQuality(cfg.min_doc_words, cfg.max_doc_words, cfg.min_avg_word_length, cfg.max_avg_word_length,
                      cfg.max_symbol_word_ratio, cfg.min_alpha_words_ratio, cfg.min_stop_words),
        LexiconToxicity(cfg.toxic_max_hits),
    ]


def apply_filters(df: pd.DataFrame, cfg: FilterConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (kept, rejected with reason, stats). Boilerplate lines are removed from kept text first."""
    df = df.reset_index(drop=True).copy()
    stats: dict[str, int] = {}
    if cfg.remove_boilerplate_lines:
        df["text"], removed = strip_boilerplate(df["text"])
        stats["boilerplate_lines_removed"] = int(removed.sum())
        stats["docs_with_boilerplate_removed"] = int((removed > 0).sum())
    reason = pd.Series("", index=df.index, dtype=object)
    for step in build_filters(cfg):
        todo = reason == ""
        if not todo.any():
            break
        reason[todo] = step(df.loc[todo, "text"])
    dropped = reason != ""
    rejected = df[dropped].copy()
    rejected["reason"] = reason[dropped]
    rejected["stage"] = "filter"
    return df[~dropped].reset_index(drop=True), rejected.reset_index(drop=True), stats
