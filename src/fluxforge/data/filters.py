"""Document filters and transforms, applied to whole batches (datatrove's rules, vectorised).

Rules and default thresholds follow the published recipes, as datatrove 0.10 implements them
(``huggingface/datatrove`` @ a649de7, ``src/datatrove/pipeline/filters/*``):

- Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
  Insights from Training Gopher", App. A and Table A1 (arXiv 2112.11446).
- C4: Raffel et al. 2020 (arXiv 1910.10683), section 2.2; terminal punctuation is off by default
  as in FineWeb's recipe (``examples/fineweb.py``: ``C4QualityFilter(filter_no_terminal_punct=False)``).
- FineWeb quality: Penedo et al. 2024, "The FineWeb Datasets" (arXiv 2406.17557).
- Language id: threshold 0.65 of datatrove's ``LanguageFilter``; the model is py3langid's
  (Lui & Baldwin 2012, langid.py), shipped inside its wheel, so nothing is downloaded at run time.
- Toxicity: C4's bad-words rule (any hit drops) over a shipped lexicon, or a pluggable classifier;
  ``inverse`` mode removes the LEAST toxic share (Longpre et al. 2023, "A Pretrainer's Guide to
  Training Data", arXiv 2305.13169, section 5).
- PII: regex redaction of emails/IPs/phones as datatrove's ``PIIFormatter`` and dolma's
  ``pii_regex`` taggers (placeholders in dolma's style); URL block list as datatrove's ``URLFilter``.

WHY batches: datatrove re-tokenises every document with spaCy inside every filter, which is
most of its cost. Here a :class:`Batch` splits words, lines and paragraphs ONCE per batch into flat
arrays (document id + piece), and every rule is a numpy / pandas vectorised reduction over them.
Words come from one compiled regex that approximates spaCy's English tokenizer (punctuation split
off words, ``n't``/``'s`` split, digits joined by ``-`` kept whole); see
``benchmarks/filters_vs_datatrove.py`` for the measured agreement.

Each filter returns, per document, the reason it drops it (``"filter:rule"``, "" = keep); the first
failing rule in chain order is the reason. Transforms return new texts plus counts and never drop.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from fluxforge.config import (
    AgeConfig,
    C4Config,
    FilterConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    PIIConfig,
    ToxicityConfig,
    URLBlocklistConfig,
)
from fluxforge.errors import FluxForgeError

ASSETS = Path(__file__).parent / "assets"

# One token regex for the whole batch, emulating spaCy's English tokenizer (which datatrove uses): a
# whitespace chunk loses its leading/trailing punctuation, and is split only at spaCy's infixes: "-" "/" ":"
# "=" "<" ">" between a letter/digit and a letter, "," between letters, "." between lower and upper case,
# "-" "+" "*" "^" between digits, ".." runs. So "CVE-2014" "index.php" "slab.h:554" "2024/01/04" "Op'art" stay
# whole, "read/write" "use-after-free" "end.The" split; "U.S." "e.g." "St." stay whole, ca|n't, it|'s, can|not.
_INFIX = (r"(?<=[^\W_])[-–—:<>=/](?=[^\W\d_])|(?<=[a-z])\.(?=[A-Z])|(?<=[^\W\d_]),(?=[^\W\d_])"
          r"|(?<=\d)[-+*^](?=[\d-])|\.\.|…|n['’]t(?!\w)|['’](?:[sSdDmM]|re|ve|ll|RE|VE|LL)(?!\w)")
WORD_RE = re.compile(
    r"https?://\S+?(?=[.,;:!?)\]\"'”’]*(?:\s|$))"  # URLs, without trailing punctuation
    r"|@[-.,]@"                                   # WikiText's joins
    r"|\.\.+|…"                                    # an ellipsis is one token
    r"|(?<!\w)(?:[^\W\d_]\.)+(?![^\W\d_])"          # H. U.S. e.g.
    r"|(?<!\w)(?:St|Mr|Mrs|Ms|Dr|Jr|Sr|vs|etc|Inc|Ltd|Co|Jan|Feb|Aug|Sept|Oct|Nov|Dec)\.(?=\s|$)"
    r"|(?i:can)(?=not\b)"                          # can|not
    r"|[^\W_]+(?=[.,;:!?)\]\"'”’]*(?:\s|$))"        # fast path: a plain word, maybe with trailing punctuation
    r"|\w+?(?=n['’]t(?!\w))|n['’]t(?!\w)"            # ca|n't
    r"|['’](?:[sSdDmM]|re|ve|ll|RE|VE|LL)(?!\w)"    # it|'s
    rf"|(?:(?<![\w.])[./])?\w(?:(?:(?!{_INFIX})\S)*\w)?\+*"  # a chunk up to an infix; ".NET" "/api" keep the dot/slash
    r"|\S"                                          # any other symbol is its own token
)
_SYMBOL_TOKEN = r"[\W_]+"          # a token with no letter or digit ("symbol word" in Gopher)
_ALPHA = r"[^\W\d_]"                # one alphabetic character
# Unicode sentence terminals (datatrove's TERMINAL_PUNCTUATION is the Unicode Sentence_Terminal set)
TERMINAL = ".?!\u3002\uff01\uff1f\uff0e\ufe52\ufe56\ufe57\uff61\u0589\u061f\u06d4\u0700\u0701\u0702\u07f9\u0964\u0965" \
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1803\u1809\u1944\u1945\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\ua4ff\ua60e\ua60f"
_ENDS_TERMINAL = f"[{re.escape(TERMINAL)}]$"
_TERMINAL_SET = frozenset(TERMINAL)
_PUNCT_TOKEN = r"[!\"#%&'()*,\-./:;?@\[\\\]_{}¡§«¶·»¿‐‑‒–—―‘’‚“”„†‡•…‰′″‹›※‼‽⁂⁇⁈⁉、。〃〈〉《》「」『』【】〔〕〜・！＂＃％＆＇（）＊，－．／：；？＠［＼］＿｛｝｡｢｣､]+"  # Unicode P*
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")  # datatrove c4_filters.CITATION_REGEX
_C4_END = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# A navigation bar ("Home | News | Login") or a SHORT line carrying a site-chrome phrase. The length cap
# matters on real text: a CVE description that mentions "login" or "JavaScript" mid-sentence is content,
# and without the cap the whole one-line document was stripped (seen on CTI-Bench: 83 of 1000 emptied).
_NAV_BAR = re.compile(r"\|.*\|")  # two separators: "Accept cookies | Privacy policy | Terms of use"
_CHROME_PHRASE = re.compile(
    r"cookie|privacy policy|terms of use|javascript|log ?in\b|sign up|subscribe to|back to top|print this page",
    re.IGNORECASE,
)
BOILERPLATE_MAX_WORDS = 12


class FilterError(FluxForgeError, ValueError):
    """Input the filters cannot use (missing column, bad meta JSON, a broken classifier); the message says which."""


# ----------------------------------------------------------------------------- shared per-batch views
@dataclass
class Pieces:
    """Flat pieces (words, lines, paragraphs) of a batch: ``doc[i]`` is the batch position of ``text[i]``."""

    doc: np.ndarray
    text: pd.Series
    n_docs: int

    @classmethod
    def from_lists(cls, lists: pd.Series) -> Pieces:
        counts = np.fromiter(map(len, lists), np.int64, len(lists))
        flat = pd.Series(np.fromiter(chain.from_iterable(lists), object, int(counts.sum())), dtype=object)
        return cls(np.repeat(np.arange(len(lists)), counts), flat, len(lists))

    def per_doc(self, values: np.ndarray | pd.Series | None = None) -> np.ndarray:
        """Sum of ``values`` (default: 1 per piece) for each document."""
        w = None if values is None else np.asarray(values, dtype=np.float64)
        return np.bincount(self.doc, weights=w, minlength=self.n_docs)

    def duplicates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per doc: (pieces seen before in the same doc, their characters) - datatrove's ``find_duplicates``."""
        dup = pd.DataFrame({"d": self.doc, "t": self.text}).duplicated().to_numpy()
        return self.per_doc(dup), self.per_doc(np.where(dup, self.lengths, 0))

    @cached_property
    def lengths(self) -> np.ndarray:
        return self.text.str.len().to_numpy(dtype=np.int64) if len(self.text) else np.zeros(0, np.int64)

    def per_doc_at(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` given for the pieces at ``idx``, per document."""
        return np.bincount(self.doc[idx], weights=np.asarray(values, dtype=np.float64), minlength=self.n_docs)

    def first_per_doc(self, mask: np.ndarray) -> np.ndarray:
        """Index of the first piece with ``mask`` in each doc, -1 where none."""
        out = np.full(self.n_docs, -1)
        idx = np.flatnonzero(mask)[::-1]  # reversed so the first occurrence is written last
        out[self.doc[idx]] = idx
        return out


class Batch:
    """Texts of a batch with their word / line / paragraph splits, each computed once on first use.

    Every filter reads these shared views instead of re-tokenising (datatrove's main cost).
    """

    def __init__(self, texts: pd.Series):
        self.texts = pd.Series(texts, dtype=object).reset_index(drop=True)
        self.n = len(self.texts)

    @cached_property
    def lengths(self) -> np.ndarray:
        return self.texts.str.len().to_numpy(dtype=np.int64) if self.n else np.zeros(0, np.int64)

    @cached_property
    def words(self) -> Pieces:
        """Word tokens of every doc, with their line (for C4's sentences) and their id in :attr:`vocab`.

        WHY this shape: the regex runs once per DISTINCT whitespace chunk, not per occurrence (no token
        spans whitespace, so a chunk always splits the same way); the batch's chunks are then expanded
        to tokens with numpy indexing.
        """
        lines = self.splitlines
        chunks = Pieces.from_lists(lines.text.str.split() if len(lines.text) else pd.Series([], dtype=object))
        ccodes, cuniq = pd.factorize(chunks.text)
        toks_u = [WORD_RE.findall(c) for c in cuniq]
        cnt_u = np.fromiter(map(len, toks_u), np.int64, len(toks_u))
        flat_u = np.fromiter(chain.from_iterable(toks_u), object, int(cnt_u.sum()))
        cnt = cnt_u[ccodes]
        first_out = np.cumsum(cnt) - cnt  # where each chunk's tokens start in the output
        first_u = np.cumsum(cnt_u) - cnt_u  # ... and in flat_u
        at = np.repeat(first_u[ccodes] - first_out, cnt) + np.arange(int(cnt.sum()))
        tcodes, tuniq = pd.factorize(flat_u)
        line = np.repeat(chunks.doc, cnt)
        self.__dict__.update(word_line=line, vocab=pd.Series(tuniq, dtype=object), word_ids=tcodes[at])
        return Pieces(lines.doc[line], pd.Series(flat_u[at], dtype=object), self.n)

    @cached_property
    def word_line(self) -> np.ndarray:
        """Index into :attr:`splitlines` of each word."""
        self.__dict__.pop("words", None)  # words carried over from a rewrite have no line ids: split again
        _ = self.words
        return self.__dict__["word_line"]

    @cached_property
    def vocab(self) -> pd.Series:
        """The distinct words of the batch; per-word features are computed on these only, then indexed."""
        codes, uniques = pd.factorize(self.words.text)  # words carried over from a rewrite: factorise them
        self.__dict__["word_ids"] = codes
        return pd.Series(uniques, dtype=object)

    @cached_property
    def word_ids(self) -> np.ndarray:
        """Each word's index into :attr:`vocab` (same word, same id)."""
        self.__dict__.pop("vocab", None)
        _ = self.vocab
        return self.__dict__["word_ids"]

    def word_feature(self, name: str, fn: Callable[[pd.Series], object]) -> np.ndarray:
        """Per-word value of ``fn`` (vectorised over a Series of distinct words), computed once per distinct word."""
        cache = self.__dict__.setdefault("_features", {})
        if name not in cache:
            cache[name] = np.asarray(fn(self.vocab)) if len(self.vocab) else np.zeros(0)
        return cache[name][self.word_ids]

    @property
    def word_lengths(self) -> np.ndarray:
        return self.word_feature("len", lambda v: v.str.len().to_numpy(dtype=np.int64)).astype(np.int64)

    @cached_property
    def splitlines(self) -> Pieces:  # str.splitlines, as Gopher quality and C4 use
        return Pieces.from_lists(self.texts.map(str.splitlines))

    def split(self, pattern: str, strip: bool = False) -> Pieces:
        key = (pattern, strip)
        cache = self.__dict__.setdefault("_splits", {})
        if key not in cache:
            src = self.texts.str.strip() if strip else self.texts
            cache[key] = Pieces.from_lists(src.str.split(pattern, regex=len(pattern) > 1))
        return cache[key]

    def count(self, pattern: str) -> np.ndarray:
        return self.texts.str.count(pattern).to_numpy(dtype=np.float64) if self.n else np.zeros(0)

    def replace(self, new_texts: pd.Series, changed: np.ndarray) -> Batch:
        """The batch with some texts rewritten; only the ``changed`` ones are split again."""
        out = Batch(new_texts)
        if "words" in self.__dict__:
            w = self.words
            keep = ~changed[w.doc]
            fresh = Batch(out.texts[changed]).words if changed.any() else Pieces(np.zeros(0, np.int64), pd.Series([], dtype=object), 0)
            doc = np.concatenate([w.doc[keep], np.flatnonzero(changed)[fresh.doc]])
            order = np.argsort(doc, kind="stable")  # a doc's words are all old or all new, each in text order
            text = pd.concat([w.text[keep], fresh.text], ignore_index=True)
            out.words = Pieces(doc[order], text.iloc[order].reset_index(drop=True), out.n)
        return out

    def narrow(self, keep: np.ndarray) -> Batch:
        """:meth:`subset`, remembered: a later ``subset`` to these docs or fewer reuses the splits made on it."""
        sub = self.subset(keep)
        self.__dict__["_narrowed"] = (keep.copy(), sub)
        return sub

    def subset(self, keep: np.ndarray) -> Batch:
        """The batch restricted to ``keep``; the word split is carried over, not recomputed."""
        narrowed = self.__dict__.get("_narrowed")
        if "words" not in self.__dict__ and narrowed is not None and not (keep & ~narrowed[0]).any():
            return narrowed[1].subset(keep[narrowed[0]])
        sub = Batch(self.texts[keep])
        new_pos = np.cumsum(keep) - 1
        if "splitlines" in self.__dict__:
            ln = self.splitlines
            line_sel = keep[ln.doc]
            sub.splitlines = Pieces(new_pos[ln.doc[line_sel]], ln.text[line_sel].reset_index(drop=True), sub.n)
        if "words" in self.__dict__:
            w = self.words
            sel = keep[w.doc]
            sub.words = Pieces(new_pos[w.doc[sel]], w.text[sel].reset_index(drop=True), sub.n)
            if "vocab" in self.__dict__:  # same distinct words (a superset), same cached features
                sub.__dict__.update(vocab=self.vocab, word_ids=self.word_ids[sel], _features=self.__dict__.get("_features", {}))
            if "word_line" in self.__dict__ and "splitlines" in self.__dict__:
                sub.__dict__["word_line"] = (np.cumsum(line_sel) - 1)[self.word_line[sel]]
        return sub


def _reasons(n: int) -> np.ndarray:
    return np.full(n, "", dtype=object)


def _first(reason: np.ndarray, mask: np.ndarray, label: str) -> None:
    """Set ``label`` where ``mask`` and no earlier rule has fired (the first failing rule is the reason)."""
    reason[(reason == "") & mask] = label


# ----------------------------------------------------------------------------- Gopher
@dataclass
class GopherQuality:
    """Gopher quality rules (Rae et al. 2021, App. A), with datatrove's exact definitions:

    word counts and mean length use only non-symbol words; ``#`` and ellipsis counts are divided by ALL
    words; bullet lines start with ``•``/``-`` and ellipsis lines end with ``...``/``…`` (of ``splitlines``);
    the alpha rule wants >= 80% of words with a letter; stop words are matched case-sensitively.
    """

    cfg: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    name: str = "gopher_quality"

    def __call__(self, b: Batch) -> np.ndarray:
        c, w = self.cfg, b.words
        sym = b.word_feature("symbol", lambda v: v.str.fullmatch(_SYMBOL_TOKEN).to_numpy(dtype=bool)).astype(bool)
        n_words = w.per_doc()
        n_ns = w.per_doc(~sym)
        avg = np.divide(w.per_doc(np.where(sym, 0, b.word_lengths)), n_ns, out=np.zeros(b.n), where=n_ns > 0)
        safe = np.maximum(n_words, 1)
        lines = b.splitlines
        n_lines = np.maximum(lines.per_doc(), 1)
        bullets = lines.per_doc(lines.text.str.lstrip().str.startswith(("•", "-")).to_numpy(dtype=bool)) if len(lines.text) else 0
        ellipsis = lines.per_doc(lines.text.str.rstrip().str.endswith(("...", "…")).to_numpy(dtype=bool)) if len(lines.text) else 0
        alpha = w.per_doc(b.word_feature("alpha", lambda v: v.str.contains(_ALPHA).to_numpy(dtype=bool)).astype(bool))
        is_stop = b.word_feature(f"stop:{sorted(c.stop_words)}", lambda v: v.isin(set(c.stop_words)).to_numpy(dtype=bool)).astype(bool)
        stops = pd.DataFrame({"d": w.doc[is_stop], "t": b.word_ids[is_stop]}).drop_duplicates()
        n_stops = np.bincount(stops["d"].to_numpy(dtype=np.int64), minlength=b.n)
        r = _reasons(b.n)
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
            _first(r, mask, f"{self.name}:{rule}")
        return r


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


@dataclass
class GopherRepetition:
    """Gopher repetition rules (Rae et al. 2021, Table A1) with datatrove's exact definitions.

    Paragraphs split on ``\\n{2,}`` of the stripped text, lines on ``\\n+``; duplicates are pieces seen
    before in the doc. Top n-gram = the MOST FREQUENT n-gram (ties: first seen) times its length in
    characters (words joined by spaces). Duplicated n-grams follow datatrove's greedy scan (a duplicate
    at i skips to i+n), run only over positions whose n-gram occurs twice or more. Every ratio is over
    ``len(text)`` characters.
    """

    cfg: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    name: str = "gopher_repetition"

    def __call__(self, b: Batch) -> np.ndarray:
        c, r = self.cfg, _reasons(b.n)
        chars = np.maximum(b.lengths, 1).astype(np.float64)
        _first(r, b.lengths == 0, f"{self.name}:empty")
        paras = b.split(r"\n{2,}", strip=True)
        p_dup, p_chars = paras.duplicates()
        _first(r, p_dup / np.maximum(paras.per_doc(), 1) > c.dup_para_frac, f"{self.name}:dup_para_frac")
        _first(r, p_chars / chars > c.dup_para_char_frac, f"{self.name}:dup_para_char_frac")
        lines = b.split(r"\n+")
        l_dup, l_chars = lines.duplicates()
        _first(r, l_dup / np.maximum(lines.per_doc(), 1) > c.dup_line_frac, f"{self.name}:dup_line_frac")
        _first(r, l_chars / chars > c.dup_line_char_frac, f"{self.name}:dup_line_char_frac")
        ok = r == ""
        if ok.any():  # words are split only for the docs that pass the line rules (narrow keeps them for later steps)
            nb = b if ok.all() else b.narrow(ok)
            r[ok] = self._ngram_rules(nb, chars[ok])
        return r

    def _ngram_rules(self, b: Batch, chars: np.ndarray) -> np.ndarray:
        c, r = self.cfg, _reasons(b.n)
        if not len(b.words.text):
            return r
        cum = np.concatenate([[0], np.cumsum(b.word_lengths)])

        def alive_positions(prev: np.ndarray | None = None) -> np.ndarray:  # words of docs not yet dropped
            ok = r == ""
            return np.flatnonzero(ok[b.words.doc]) if prev is None else prev[ok[b.words.doc[prev]]]

        for n, frac in sorted(c.top_n_grams.items()):
            if (r == "").any():
                _first(r, self._top(b, n, cum, alive_positions()) / chars > frac, f"{self.name}:top_{n}_gram")
        among, last_n = None, None
        for n, frac in sorted(c.dup_n_grams.items()):
            if (r == "").any():
                limit = np.where(r == "", frac * chars, np.inf)
                got, among = self._dup(b, n, cum, limit, alive_positions(among if last_n == n - 1 else None))
                last_n = n
                _first(r, got / chars > frac, f"{self.name}:duplicated_{n}_n_grams")
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


# ----------------------------------------------------------------------------- C4
def sentences_per_line(b: Batch) -> np.ndarray:
    """Sentences in each of ``b.splitlines``, as spaCy's sentencizer counts them (datatrove's C4 rule).

    A sentence starts at a non-punctuation token preceded, since the previous non-punctuation token of the
    line, by a sentence-terminal token; computed from the shared word split with cumulative sums.
    """
    w, wl, n_lines = b.words, b.word_line, len(b.splitlines.text)
    out = np.zeros(n_lines, dtype=np.int64)
    if not len(w.text):
        return out
    is_term = b.word_feature("terminal", lambda v: v.isin(_TERMINAL_SET).to_numpy(dtype=bool)).astype(bool)
    real = ~b.word_feature("punct", lambda v: v.str.fullmatch(_PUNCT_TOKEN).to_numpy(dtype=bool)).astype(bool)
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


@dataclass
class C4:
    """C4 rules (Raffel et al. 2020) as datatrove's ``C4QualityFilter``: a line transform plus doc rules.

    Per line (``splitlines``, stripped), in datatrove's order: drop lines with a word over
    ``max_word_length`` chars, strip citations, drop lines without terminal punctuation (off by default,
    FineWeb recipe), with < ``min_words_per_line`` whitespace words, mentioning javascript or a policy
    phrase. The doc is dropped on "lorem ipsum" or ``{`` in a surviving line (the first such line decides
    the reason), or when the kept lines hold < ``min_num_sentences`` sentences.
    """

    cfg: C4Config = field(default_factory=C4Config)
    name: str = "c4"

    def __call__(self, b: Batch) -> tuple[np.ndarray, pd.Series, dict[str, int]]:
        c, lines = self.cfg, b.splitlines
        n_lines = len(lines.text)
        if not n_lines:
            r = _reasons(b.n)
            _first(r, np.ones(b.n, bool), f"{self.name}:min_num_sentences")
            return r, b.texts, {}
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
        r = _reasons(b.n)
        first_lorem, first_curly = lines.first_per_doc(lorem), lines.first_per_doc(curly)
        lorem_first = (first_lorem >= 0) & ((first_curly < 0) | (first_lorem < first_curly))
        _first(r, lorem_first, f"{self.name}:lorem_ipsum")
        _first(r, first_curly >= 0, f"{self.name}:curly_bracket")
        _first(r, sentences < c.min_num_sentences, f"{self.name}:min_num_sentences")
        removed = lines.per_doc(~alive)
        new = b.texts.copy()
        changed = np.flatnonzero((removed > 0) | (b.texts.str.strip() != b.texts).to_numpy())
        if len(changed):
            kept = pd.DataFrame({"d": lines.doc[alive], "t": s[alive].to_numpy()})
            joined = kept[np.isin(kept["d"], changed)].groupby("d")["t"].agg("\n".join)
            new.iloc[changed] = joined.reindex(changed, fill_value="").str.strip().to_numpy()
        return r, new, {"c4_lines_removed": int(removed.sum()), "c4_docs_modified": int((removed > 0).sum())}


# ----------------------------------------------------------------------------- FineWeb
@dataclass
class FineWebQuality:
    """FineWeb quality rules (Penedo et al. 2024) as datatrove's ``FineWebQualityFilter``.

    Lines are ``text.split("\\n")`` without blank ones; line_punct_ratio: share ending in a sentence
    terminal < 0.12; short_line_ratio: share of lines <= 30 chars > 0.67; char_dup_ratio: chars of
    duplicated lines / chars without newlines > 0.01; list_ratio: newlines / words > 0.3.
    """

    cfg: FineWebConfig = field(default_factory=FineWebConfig)
    name: str = "fineweb"

    def __call__(self, b: Batch) -> np.ndarray:
        c, r = self.cfg, _reasons(b.n)
        raw = b.split("\n")
        nonblank = (raw.text.str.strip() != "").to_numpy(dtype=bool) if len(raw.text) else np.zeros(0, bool)
        lines = Pieces(raw.doc[nonblank], raw.text[nonblank].reset_index(drop=True), b.n)
        n = lines.per_doc()
        safe = np.maximum(n, 1)
        _first(r, n == 0, f"{self.name}:empty")
        if len(lines.text):
            punct = lines.per_doc(lines.text.str.contains(_ENDS_TERMINAL).to_numpy(dtype=bool)) / safe
            short = lines.per_doc(lines.lengths <= c.short_line_length) / safe
        else:
            punct = short = np.zeros(b.n)
        _first(r, (punct < c.line_punct_thr) & ~((punct == 0) & c.line_punct_exclude_zero), f"{self.name}:line_punct_ratio")
        _first(r, short > c.short_line_thr, f"{self.name}:short_line_ratio")
        newlines = b.count("\n")
        chars = np.maximum(b.lengths - newlines, 1)
        _first(r, lines.duplicates()[1] / chars > c.char_duplicates_ratio, f"{self.name}:char_dup_ratio")
        words = b.words.per_doc()
        ratio = np.divide(newlines, words, out=np.full(b.n, np.inf), where=words > 0)
        _first(r, ratio > c.new_line_ratio, f"{self.name}:list_ratio")
        return r


# ----------------------------------------------------------------------------- language
_LANGID = None


def _langid():  # noqa: ANN202 - py3langid has no types
    """py3langid's identifier, loaded once from the model file inside the installed package."""
    global _LANGID
    if _LANGID is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LANGID = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _LANGID


def identify_languages(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ISO 639-1 code, normalised probability) per text, with py3langid's shipped 97-language model."""
    ident = _langid()
    pairs = [ident.classify(t.replace("\n", " ")) if t.strip() else ("", 0.0) for t in texts]
    return np.array([p[0] for p in pairs], dtype=object), np.array([float(p[1]) for p in pairs])


@dataclass
class LanguageFilter:
    """Tag ``language``/``language_score``; drop docs whose language is not allowed or scores <= threshold.

    As datatrove's ``LanguageFilter`` (keep when an allowed language scores above 0.65), with py3langid
    instead of the fastText lid.176 model that datatrove downloads at run time.
    """

    cfg: LanguageConfig = field(default_factory=LanguageConfig)
    name: str = "language"

    def __call__(self, b: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        lang, score = identify_languages(b.texts.tolist())
        r = _reasons(b.n)
        if not self.cfg.label_only:
            _first(r, ~np.isin(lang, self.cfg.languages), f"{self.name}:not_allowed")
            _first(r, score <= self.cfg.threshold, f"{self.name}:low_score")
        return r, {"language": lang, "language_score": np.round(score, 4)}


# ----------------------------------------------------------------------------- toxicity
def load_lexicon(path: Path | str | None = None, extra: Sequence[str] = ()) -> frozenset[str]:
    """Lowercase words of a lexicon file (one a line, ``#`` comments), plus ``extra``."""
    p = Path(path) if path else ASSETS / "toxic_lexicon.txt"
    if not p.is_file():
        raise FilterError(f"toxicity lexicon {p} does not exist (data.filters.toxicity.lexicon_path)")
    words = (w.strip().lower() for w in p.read_text().splitlines())
    return frozenset([w for w in words if w and not w.startswith("#")] + [w.lower() for w in extra])


def lexicon_hits(b: Batch, lexicon: frozenset[str]) -> np.ndarray:
    w = b.words
    hit = b.word_feature(f"lexicon:{hash(lexicon)}", lambda v: v.str.lower().isin(lexicon).to_numpy(dtype=bool))
    return w.per_doc(hit.astype(bool))


def lexicon_scores(texts: Sequence[str]) -> np.ndarray:
    """A classifier-shaped toxicity score in [0, 1): ``1 - exp(-hits)`` over the shipped lexicon.

    Usable as ``toxicity.classifier: fluxforge.data.filters:lexicon_scores``; one hit scores 0.63.
    """
    return 1.0 - np.exp(-lexicon_hits(Batch(pd.Series(list(texts), dtype=object)), load_lexicon()))


def load_classifier(path: str) -> Callable[[Sequence[str]], Sequence[float]]:
    """Import ``package.module:callable`` (a function or class instance mapping texts to scores)."""
    module, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise FilterError(f"toxicity.classifier {path!r} cannot be imported: {err}") from None
    if not callable(obj):
        raise FilterError(f"toxicity.classifier {path!r} is not callable")
    return obj


@dataclass
class Toxicity:
    """Drop toxic docs (lexicon: more than ``max_hits`` hits; classifier: score > threshold), or in
    ``inverse`` mode drop the ``inverse_fraction`` LEAST toxic docs of the batch (Longpre et al. 2023;
    lexicon score = hits per word; ties broken by a hash of the text so the choice is reproducible).
    """

    cfg: ToxicityConfig = field(default_factory=ToxicityConfig)
    name: str = "toxicity"

    def __post_init__(self) -> None:
        self.lexicon = load_lexicon(self.cfg.lexicon_path, self.cfg.extra_words)
        self.classifier = load_classifier(self.cfg.classifier) if self.cfg.method == "classifier" else None

    def scores(self, b: Batch) -> np.ndarray:
        if self.classifier is None:
            return lexicon_hits(b, self.lexicon)
        try:
            got = np.asarray(self.classifier(b.texts.tolist()), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise FilterError(f"toxicity.classifier {self.cfg.classifier!r} failed on {b.n} texts: {err}") from err
        if got.shape != (b.n,) or not np.all(np.isfinite(got)):
            raise FilterError(f"toxicity.classifier {self.cfg.classifier!r} returned shape {got.shape} "
                              f"(want ({b.n},), finite) for {b.n} texts")
        return got

    def __call__(self, b: Batch) -> np.ndarray:
        c, r = self.cfg, _reasons(b.n)
        s = self.scores(b)
        if c.mode == "inverse":
            density = s / np.maximum(b.words.per_doc(), 1) if self.classifier is None else s
            tie = pd.util.hash_pandas_object(b.texts, index=False).to_numpy()
            k = int(np.floor(c.inverse_fraction * b.n))
            drop = np.zeros(b.n, bool)
            drop[np.lexsort((tie, density))[:k]] = True
            _first(r, drop, f"{self.name}:inverse")
        elif self.classifier is None:
            _first(r, s > c.max_hits, f"{self.name}:lexicon")
        else:
            _first(r, s > c.threshold, f"{self.name}:classifier")
        return r


# ----------------------------------------------------------------------------- URL block list
def load_url_blocklist(path: Path | str | None = None) -> dict[str, set[str]]:
    """Shipped block list: lines ``domain NAME`` / ``word WORD`` / ``soft WORD`` (``#`` comments)."""
    p = Path(path) if path else ASSETS / "url_blocklist.txt"
    out: dict[str, set[str]] = {"domain": set(), "word": set(), "soft": set()}
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, value = line.partition(" ")
        if kind not in out or not value.strip():
            raise FilterError(f"{p}:{i}: expected 'domain|word|soft VALUE', got {line!r}")
        out[kind].add(value.strip().lower())
    return out


@dataclass
class URLBlocklist:
    """Drop docs whose URL host (or a parent domain) is blocked, whose URL holds a banned word, or
    >= ``soft_word_threshold`` soft-banned words (datatrove ``URLFilter``; words split on non-alphanumerics).
    """

    cfg: URLBlocklistConfig = field(default_factory=URLBlocklistConfig)
    name: str = "url_blocklist"

    def __post_init__(self) -> None:
        lists = load_url_blocklist() if self.cfg.use_shipped_list else {"domain": set(), "word": set(), "soft": set()}
        self.domains = lists["domain"] | {d.lower().removeprefix("www.") for d in self.cfg.domains}
        self.words = lists["word"] | {w.lower() for w in self.cfg.banned_words}
        self.soft = lists["soft"] | {w.lower() for w in self.cfg.soft_banned_words}

    def __call__(self, urls: pd.Series) -> np.ndarray:
        u = pd.Series(urls, dtype=object).fillna("").astype(str).str.strip().str.lower().reset_index(drop=True)
        r = _reasons(len(u))
        host = u.str.extract(r"^(?:[a-z][a-z0-9+.-]*:)?//(?:[^@/?#]*@)?([^/:?#]+)", expand=False).fillna("")
        host = host.str.rstrip(".")
        blocked = np.zeros(len(u), bool)
        while (host != "").any():  # the host, then each parent domain
            blocked |= host.isin(self.domains).to_numpy(dtype=bool)
            host = host.str.replace(r"^[^.]*\.?", "", regex=True)
        _first(r, blocked, f"{self.name}:domain")
        words = Pieces.from_lists(u.str.findall(r"[a-z0-9]+"))
        if len(words.text):
            _first(r, words.per_doc(words.text.isin(self.words).to_numpy(dtype=bool)) > 0, f"{self.name}:banned_word")
            soft = pd.DataFrame({"d": words.doc, "t": words.text})[words.text.isin(self.soft).to_numpy(dtype=bool)]
            n_soft = np.bincount(soft.drop_duplicates()["d"].to_numpy(dtype=np.int64), minlength=len(u))
            _first(r, n_soft >= self.cfg.soft_word_threshold, f"{self.name}:soft_banned_words")
        return r


# ----------------------------------------------------------------------------- transforms
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


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")  # validated by ipaddress
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])\d{2,4}(?:[ .-]\d{2,4}){1,2}"  # +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (415) 555-0134
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 415-555-0134
    r")(?![\w-])"
)


# A dotted quad right after a version cue ("version 4.1.1.24", "through 1.4.1.5", "8.10.4, 8.10.5.1"),
# or followed by a build number ("1.0.0.7(4456)"), is a version, not an address: advisories are full of
# them, and redacting them (43 of 1000 CTI-Bench CVE descriptions) destroys the content a cyber corpus is for.
_VERSION_CUE = re.compile(
    r"(?:\b(?:versions?(?:\s+from)?|ver\.?|v|through|before|prior to|up to|including|firmware|build|release)[\s,:]*"
    r"|(?<![\d.])\d+\.\d+(?:\.\d+)?[\s,]*(?:(?:and|or)[\s,]*)?)$",  # a list of versions; not one after an IP
    re.IGNORECASE,
)


_VERSION_AFTER = re.compile(
    r"\(|\.[a-z]|\s*(?:through\s*\d+\.\d+|(?:to|-)\s*\d+\.\d+(?!\.\d+\.\d+\b)|and (?:later|earlier|before|prior)\b)",
    re.IGNORECASE)


def looks_like_version(m: re.Match) -> bool:
    """Is this IPv4-shaped match a software version, by the words around it ("through 1.4.1.5",
    "1.0.0.7(4456)", "7.6.1.3 through 7.6.1.5")? A product name directly followed by a 4-part version with
    no such cue ("CuteFTP 8.3.4.1.") stays indistinguishable from an address and is redacted: switch
    ``pii.ips`` off for advisory corpora, where addresses are indicators of compromise anyway."""
    before = m.string[max(0, m.start() - 30):m.start()]
    return bool(_VERSION_CUE.search(before) or _VERSION_AFTER.match(m.string, m.end()))


@dataclass
class PIIRedactor:
    """Replace emails, IPv4/IPv6 addresses and phone numbers by placeholders (never drops a doc).

    IPs are validated with :mod:`ipaddress`; with ``ip_public_only`` only global ones are replaced
    (datatrove's ``PIIFormatter`` choice). Phones: international (+CC), ``(NNN) NNN-NNNN`` and
    ``NNN-NNN-NNNN`` forms, which plain numbers, dates and CVE ids do not match.
    """

    cfg: PIIConfig = field(default_factory=PIIConfig)

    def __call__(self, texts: pd.Series) -> tuple[pd.Series, dict[str, int]]:
        c = self.cfg
        t = pd.Series(texts, dtype=object)
        before = t.copy()
        counts = {"pii_emails": 0, "pii_ips": 0, "pii_phones": 0}

        def sub(pattern: re.Pattern, key: str, placeholder: str, valid: Callable[[re.Match], bool] | None = None) -> None:
            nonlocal t

            def repl(m: re.Match) -> str:
                if valid is not None and not valid(m):
                    return m.group(0)
                counts[key] += 1
                return placeholder

            t = t.str.replace(pattern, repl, regex=True)

        def ip_ok(s: str) -> bool:
            try:
                ip = ipaddress.ip_address(s)
            except ValueError:
                return False
            return ip.is_global or not c.ip_public_only

        def ipv6_ok(m: re.Match) -> bool:
            return ip_ok(m.group(0))

        def ipv4_ok(m: re.Match) -> bool:
            return ip_ok(m.group(0)) and not looks_like_version(m)

        if c.emails:
            sub(_EMAIL, "pii_emails", c.email_placeholder)
        if c.ips:
            sub(_IPV6, "pii_ips", c.ip_placeholder, ipv6_ok)
            sub(_IPV4, "pii_ips", c.ip_placeholder, ipv4_ok)
        if c.phones:
            sub(_PHONE, "pii_phones", c.phone_placeholder)
        counts["pii_docs_redacted"] = int((t != before).sum())
        return t, counts


def tag_age(timestamps: pd.Series, cfg: AgeConfig) -> np.ndarray:
    """Age in whole days of each doc at ``reference_date`` (NaN where the timestamp is missing)."""
    ref = pd.Timestamp(date.fromisoformat(cfg.reference_date), tz="UTC")
    ts = pd.to_datetime(pd.Series(timestamps).reset_index(drop=True), utc=True, errors="coerce")
    days = ((ref - ts).dt.total_seconds() // 86400).to_numpy(dtype=np.float64)
    return np.array([np.nan if np.isnan(d) else int(d) for d in days], dtype=object)


# ----------------------------------------------------------------------------- the chain
# the chain in FineWeb's order (URL, language, Gopher repetition, Gopher quality, C4, FineWeb), then toxicity
CHAIN: tuple[tuple[str, type], ...] = (
    ("url_blocklist", URLBlocklist), ("language", LanguageFilter), ("gopher_repetition", GopherRepetition),
    ("gopher_quality", GopherQuality), ("c4", C4), ("fineweb", FineWebQuality), ("toxicity", Toxicity),
)


def build_filters(cfg: FilterConfig) -> list:
    """The enabled filters of :data:`CHAIN`, each built from its own section of ``data.filters``."""
    return [step(getattr(cfg, name)) for name, step in CHAIN if getattr(cfg, name).enabled]


def _check_columns(df: pd.DataFrame, cfg: FilterConfig) -> None:
    need = {"text"} | ({"url"} if cfg.url_blocklist.enabled else set()) | ({"timestamp"} if cfg.age.enabled else set())
    missing = sorted(need - set(df.columns))
    if missing:
        raise FilterError(f"apply_filters: the batch lacks column(s) {missing} (has {list(df.columns)}); "
                          "disable the filter that needs it in data.filters or add the column")
    bad = df.index[~df["text"].map(lambda t: isinstance(t, str))]
    if len(bad):
        row = df.loc[bad[0]]
        raise FilterError(f"apply_filters: text of row {bad[0]} (id {row.get('id', '?')!r}) is {type(row['text']).__name__}, not str")


def _merge_meta(meta: pd.Series, tags: dict[str, np.ndarray], ids: pd.Series) -> list[str]:
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


def apply_filters(df: pd.DataFrame, cfg: FilterConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (kept, rejected with ``reason`` and ``stage="filter"``, stats).

    Every input row ends in exactly one of the two tables. Order: boilerplate lines are stripped, the
    filters run in :func:`build_filters` order on the still-kept docs (C4 also rewrites their lines),
    then kept texts get PII redacted; language and age tags go into every row's ``meta`` JSON.
    """
    df = df.reset_index(drop=True).copy()
    _check_columns(df, cfg)
    n, stats = len(df), {}
    original = df["text"].copy()  # rejected rows keep the text as it came in: nothing is lost
    if "meta" not in df.columns:
        df["meta"] = "{}"
    if cfg.boilerplate.enabled:
        df["text"], removed = strip_boilerplate(df["text"])
        stats["boilerplate_lines_removed"] = int(removed.sum())
        stats["docs_with_boilerplate_removed"] = int((removed > 0).sum())
    reason = _reasons(n)
    tags: dict[str, np.ndarray] = {}
    # a document the line cleaning emptied is rejected by name, not handed to the filters as "" (where the
    # language filter would blame it on its language)
    alive = (df["text"].str.strip() != "").to_numpy(dtype=bool) | (original.str.strip() == "").to_numpy(dtype=bool)
    reason[~alive] = "boilerplate:empty_after_cleaning"
    batch = Batch(df["text"]).subset(alive) if not alive.all() else Batch(df["text"])
    for step in build_filters(cfg):
        if not alive.any():
            break
        idx = np.flatnonzero(alive)
        if isinstance(step, URLBlocklist):
            got = step(df["url"].iloc[idx])
        elif isinstance(step, LanguageFilter):
            got, lang_tags = step(batch)
            for k, v in lang_tags.items():
                tags.setdefault(k, np.full(n, np.nan, dtype=object))[idx] = v
        elif isinstance(step, C4):
            got, new_texts, c4_stats = step(batch)
            stats.update(c4_stats)
            ok = got == ""
            changed = ok & (new_texts.to_numpy() != batch.texts.to_numpy())
            df.loc[idx[changed], "text"] = new_texts[changed].to_numpy()
            batch = batch.replace(batch.texts.where(~changed, new_texts), changed)
        else:
            got = step(batch)
        reason[idx] = got
        drop = got != ""
        alive[idx[drop]] = False
        batch = batch.subset(~drop)
    if cfg.pii.enabled and alive.any():
        redacted, pii_stats = PIIRedactor(cfg.pii)(df.loc[alive, "text"])
        df.loc[alive, "text"] = redacted
        stats.update(pii_stats)
    if cfg.age.enabled:
        tags["age_days"] = tag_age(df["timestamp"], cfg.age)
        stats["age_missing"] = int(pd.isna(tags["age_days"]).sum())
    if tags:
        df["meta"] = _merge_meta(df["meta"], tags, df["id"] if "id" in df else pd.Series(range(n)))
    rejected = df[~alive].copy()
    rejected["text"] = original[~alive]
    rejected["reason"] = reason[~alive]
    rejected["stage"] = "filter"
    return df[alive].reset_index(drop=True), rejected.reset_index(drop=True), stats
