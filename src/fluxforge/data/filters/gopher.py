"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
Insights from Training Gopher", App. A and Table A1, arXiv 2112.11446), with datatrove 0.10's exact
definitions (``huggingface/datatrove`` @ a649de7, ``src/datatrove/pipeline/filters/gopher_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fluxforge.config import GopherQualityConfig, GopherRepetitionConfig, builds
from fluxforge.data.filters.batch import Batch
from fluxforge.data.filters.step import Step, Verdict, first_reason, no_reasons
from fluxforge.data.filters.tokens import ALPHA, SYMBOL_TOKEN


@builds(GopherQualityConfig)
@dataclass
class GopherQuality(Step):
    """Gopher quality rules (Rae et al. 2021, App. A), with datatrove's exact definitions:

    word counts and mean length use only non-symbol words; ``#`` and ellipsis counts are divided by ALL
    words; bullet lines start with ``•``/``-`` and ellipsis lines end with ``...``/``…`` (of ``splitlines``);
    the alpha rule wants >= 80% of words with a letter; stop words are matched case-sensitively.
    """

    cfg: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    name: str = "gopher_quality"

    def __call__(self, b: Batch) -> Verdict:
        c, w = self.cfg, b.words
        sym = b.word_feature("symbol", lambda v: v.str.fullmatch(SYMBOL_TOKEN).to_numpy(dtype=bool)).astype(bool)
        n_words = w.per_doc()
        n_ns = w.per_doc(~sym)
        avg = np.divide(w.per_doc(np.where(sym, 0, b.word_lengths)), n_ns, out=np.zeros(b.n), where=n_ns > 0)
        safe = np.maximum(n_words, 1)
        lines = b.splitlines
        n_lines = np.maximum(lines.per_doc(), 1)
        bullets = lines.per_doc(lines.text.str.lstrip().str.startswith(("•", "-")).to_numpy(dtype=bool)) if len(lines.text) else 0
        ellipsis = lines.per_doc(lines.text.str.rstrip().str.endswith(("...", "…")).to_numpy(dtype=bool)) if len(lines.text) else 0
        alpha = w.per_doc(b.word_feature("alpha", lambda v: v.str.contains(ALPHA).to_numpy(dtype=bool)).astype(bool))
        is_stop = b.word_feature(f"stop:{sorted(c.stop_words)}", lambda v: v.isin(set(c.stop_words)).to_numpy(dtype=bool)).astype(bool)
        stops = pd.DataFrame({"d": w.doc[is_stop], "t": b.word_ids[is_stop]}).drop_duplicates()
        n_stops = np.bincount(stops["d"].to_numpy(dtype=np.int64), minlength=b.n)
        r = no_reasons(b.n)
        rules = [
            ("min_doc_words", n_ns < c.min_doc_words),
            ("max_doc_words", n_ns > c.max_doc_words),
            ("min_avg_word_length", avg < c.min_avg_word_length),
            ("max_avg_word_length", avg > c.max_avg_word_length),
            ("hash_ratio", b.count("#") / safe > c.max_symbol_word_ratio),
            ("ellipsis_ratio", (b.count(r"\.\.\.") + b.count("…")) / safe > c.max_symbol_word_ratio),
            ("bullet_lines_ratio", bullets / n_lines > c.max_bullet_lines_ratio),
            ("ellipsis_lines_ratio", ellipsis / n_lines > c.max_ellipsis_lines_ratio),
            ("alpha_words_ratio", alpha / safe < c.min_alpha_words_ratio),
            ("stop_words", n_stops < c.min_stop_words),
        ]
        for rule, mask in rules:
            first_reason(r, mask, f"{self.name}:{rule}")
        return Verdict(r)


def _ngrams(b: Batch, n: int, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(start index, n-gram id, number of ids) of every word n-gram lying inside one document
    (only those starting at ``among``, sorted start indices, when given).

    Ids come from a 64-bit rolling hash of the word ids mixed with the document (so equal n-grams of
    different docs differ), factorised; the hashes for n are built from those for n-1 and cached.
    """
    cache = b.__dict__.setdefault("_ngram_hash", {})  # cache[k][i]: hash of words i .. i+k-1
    ids = b.word_ids.astype(np.uint64)
    m = len(ids)
    with np.errstate(over="ignore"):
        if not cache:
            cache[0] = b.words.doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for k in range(max(cache) + 1, n + 1):
            size = max(m - k + 1, 0)
            h = (cache[k - 1][:size] ^ ids[k - 1 : k - 1 + size]) * np.uint64(0x100000001B3) + np.uint64(k)
            cache[k] = h ^ (h >> np.uint64(29))
    h = cache[n]
    if m - n + 1 <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    start = np.arange(m - n + 1) if among is None else among[among < m - n + 1]
    start = start[b.words.doc[start] == b.words.doc[start + n - 1]]
    codes, uniques = pd.factorize(h[start])
    return start, codes, len(uniques)


@builds(GopherRepetitionConfig)
@dataclass
class GopherRepetition(Step):
    """Gopher repetition rules (Rae et al. 2021, Table A1) with datatrove's exact definitions.

    Paragraphs split on ``\\n{2,}`` of the stripped text, lines on ``\\n+``; duplicates are pieces seen
    before in the doc. Top n-gram = the MOST FREQUENT n-gram (ties: first seen) times its length in
    characters (words joined by spaces). Duplicated n-grams follow datatrove's greedy scan (a duplicate
    at i skips to i+n), run only over positions whose n-gram occurs twice or more. Every ratio is over
    ``len(text)`` characters.
    """

    cfg: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    name: str = "gopher_repetition"

    def __call__(self, b: Batch) -> Verdict:
        c, r = self.cfg, no_reasons(b.n)
        chars = np.maximum(b.lengths, 1).astype(np.float64)
        first_reason(r, b.lengths == 0, f"{self.name}:empty")
        paras = b.split(r"\n{2,}", strip=True)
        p_dup, p_chars = paras.duplicates()
        first_reason(r, p_dup / np.maximum(paras.per_doc(), 1) > c.dup_para_frac, f"{self.name}:dup_para_frac")
        first_reason(r, p_chars / chars > c.dup_para_char_frac, f"{self.name}:dup_para_char_frac")
        lines = b.split(r"\n+")
        l_dup, l_chars = lines.duplicates()
        first_reason(r, l_dup / np.maximum(lines.per_doc(), 1) > c.dup_line_frac, f"{self.name}:dup_line_frac")
        first_reason(r, l_chars / chars > c.dup_line_char_frac, f"{self.name}:dup_line_char_frac")
        ok = r == ""
        if ok.any():  # words are split only for the docs that pass the line rules (narrow keeps them for later steps)
            nb = b if ok.all() else b.narrow(ok)
            r[ok] = self._ngram_rules(nb, chars[ok])
        return Verdict(r)

    def _ngram_rules(self, b: Batch, chars: np.ndarray) -> np.ndarray:
        c, r = self.cfg, no_reasons(b.n)
        if not len(b.words.text):
            return r
        cum = np.concatenate([[0], np.cumsum(b.word_lengths)])

        def alive_positions(prev: np.ndarray | None = None) -> np.ndarray:  # words of docs not yet dropped
            ok = r == ""
            return np.flatnonzero(ok[b.words.doc]) if prev is None else prev[ok[b.words.doc[prev]]]

        for n, frac in sorted(c.top_n_grams.items()):
            if (r == "").any():
                first_reason(r, self._top(b, n, cum, alive_positions()) / chars > frac, f"{self.name}:top_{n}_gram")
        among, last_n = None, None
        for n, frac in sorted(c.dup_n_grams.items()):
            if (r == "").any():
                limit = np.where(r == "", frac * chars, np.inf)
                got, among = self._dup(b, n, cum, limit, alive_positions(among if last_n == n - 1 else None))
                last_n = n
                first_reason(r, got / chars > frac, f"{self.name}:duplicated_{n}_n_grams")
        return r

    @staticmethod
    def _top(b: Batch, n: int, cum: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
        """Per doc: count x characters of its most frequent n-gram (ties: the one seen first), as datatrove's Counter."""
        start, codes, k = _ngrams(b, n, among)
        out = np.zeros(b.n)
        if not k:
            return out
        counts = np.bincount(codes, minlength=k)
        first = np.empty(k, np.int64)
        first[codes[::-1]] = start[::-1]  # ids are numbered in order of first appearance
        doc = b.words.doc[first]  # nondecreasing in id order
        best = np.zeros(b.n, np.int64)
        np.maximum.at(best, doc, counts)
        cand = np.flatnonzero(counts == best[doc])
        lead = cand[np.r_[True, doc[cand][1:] != doc[cand][:-1]]]  # lowest id = first seen, per doc
        n_chars = cum[first[lead] + n] - cum[first[lead]] + (n - 1)  # " ".join(words)
        out[doc[lead]] = counts[lead] * n_chars
        return out

    @staticmethod
    def _dup(b: Batch, n: int, cum: np.ndarray, limit: np.ndarray,
             among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per doc: characters of duplicated n-grams by datatrove's greedy scan (a duplicate at i jumps to i+n).

        The scan is sequential, so it runs (in one Python pass) only where it can change the verdict: the
        characters of ALL repeat occurrences bound the greedy count from above, and docs whose bound is
        within ``limit`` get the bound (they pass either way). Only positions whose n-gram occurs twice
        or more in the doc are scanned. Returns (chars per doc, start of every repeated n-gram): an n-gram
        can only repeat where its (n-1)-gram prefix does, so the next n needs to look at those alone.
        """
        start, codes, k = _ngrams(b, n, among)
        out = np.zeros(b.n)
        if not k:
            return out, start
        first = np.empty(k, np.int64)
        first[codes[::-1]] = start[::-1]
        n_chars_all = cum[start + n] - cum[start]  # "".join(words): no spaces, as datatrove
        later = first[codes] != start
        out = b.words.per_doc_at(start, np.where(later, n_chars_all, 0))
        scan = out > limit
        repeated = np.bincount(codes, minlength=k)[codes] > 1
        rep = repeated & scan[b.words.doc[start]]
        repeated_at = start[repeated]
        start, codes = start[rep], codes[rep]
        doc = b.words.doc[start]
        n_chars = cum[start + n] - cum[start]
        cur, seen, nxt, total = -1, set(), -1, 0
        for d, pos, key, nc in zip(doc.tolist(), start.tolist(), codes.tolist(), n_chars.tolist()):
            if d != cur:
                if cur >= 0:
                    out[cur] = total
                cur, seen, nxt, total = d, set(), -1, 0
            if pos < nxt:
                continue
            if key in seen:
                total += nc
                nxt = pos + n
            else:
                seen.add(key)
        if cur >= 0:
            out[cur] = total
        return out, repeated_at

