"""The shared per-batch views: words, lines and paragraphs split ONCE per batch into flat arrays.

Every rule is a numpy / pandas reduction over these arrays (document id + piece), so a batch is
tokenised once however many filters read it; :class:`Batch` also carries the batch's other columns
(URL, timestamp) for the steps that read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import chain

import numpy as np
import pandas as pd

from fluxforge.data.filters.step import FilterError
from fluxforge.data.filters.tokens import WORD_RE


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

    Every filter reads these shared views instead of re-tokenising (datatrove's main cost). ``rows``
    are the documents' other columns, in batch order (their ``text`` column is not kept up to date:
    :attr:`texts` is, as steps rewrite it).
    """

    def __init__(self, texts: pd.Series, rows: pd.DataFrame | None = None):
        self.texts = pd.Series(texts, dtype=object).reset_index(drop=True)
        self.n = len(self.texts)
        self.rows = None if rows is None else rows.reset_index(drop=True)

    def column(self, name: str) -> pd.Series:
        """The batch's ``name`` column (e.g. ``url``), in batch order."""
        if self.rows is None or name not in self.rows.columns:
            have = [] if self.rows is None else list(self.rows.columns)
            raise FilterError(f"the batch has no column '{name}' (has {have})")
        return self.rows[name]

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
        out = Batch(new_texts, self.rows)
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
        sub = Batch(self.texts[keep], None if self.rows is None else self.rows[keep])
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

