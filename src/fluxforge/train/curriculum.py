"""Quality curriculum: documents in ascending order of quality, so the best data comes last.

Luo et al. 2025, "LR decay wastes your best data" (arXiv 2511.18903, ICLR 2026; methods.md section 5):
sorting the data by a quality metric in ascending order beats random shuffling under a constant (or
moderately decayed) LR, and combined with checkpoint averaging (:mod:`fluxforge.train.averaging`) in
place of a full decay ("CMA"/"CDMA") it gains +1.64% on average. Ties are broken by a seeded shuffle so
that equal-quality documents (e.g. many docs of one source) do not keep their source order.

:class:`CurriculumSampler` has the interface the training loop and the run fingerprint use from
:class:`fluxforge.train.sampler.MixtureSampler` (``batch(step)``, ``batch_size``, ``seq_len``,
``signature()``) and, like it, is a pure function of the step, so a resumed run replays the same batches.

The quality score for the world's documents, :func:`unigram_quality`, is a cheap stand-in for CCNet's
perplexity score (Wenzek et al. 2020, arXiv 1911.00359, section 3.3: a language model trained on a
high-quality reference, Wikipedia, ranks web text by perplexity). Here the model is a unigram over the
words of :class:`fluxforge.data.filters.Batch` (the filters' own tokenisation), so scoring costs one
pass of word counting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fluxforge.errors import DataError


# ----------------------------------------------------------------------------- quality scores
def _word_table(texts: Sequence[str]) -> tuple[np.ndarray, pd.Series, int]:
    """(document of each word, lowercased words, number of documents), split as the filters split."""
    from fluxforge.data.filters import Batch

    words = Batch(pd.Series(list(texts), dtype=object)).words
    return words.doc, words.text.str.lower(), words.n_docs


def unigram_quality(texts: Sequence[str], reference: Sequence[str]) -> np.ndarray:
    """Mean natural-log probability per word of each text under an add-one unigram model of ``reference``.

    Higher means closer to the reference (CCNet's criterion, with a unigram instead of a 5-gram model).
    Pick a clean reference (for a corpus of several domains, one per domain with
    :func:`grouped_unigram_quality`): lorem ipsum, foreign text and symbol soup are made of words the
    reference lacks and land first. A unigram cannot see word
    order, so a text repeating common words scores well; the repetition filters remove those upstream.
    A text without words gets ``-inf`` (no evidence of quality, so it comes first).
    """
    _, ref_words, _ = _word_table(reference)
    if not len(ref_words):
        raise DataError("the quality reference has no words; pass non-empty reference texts")
    counts = ref_words.value_counts()
    total, vocab = float(counts.sum()), float(len(counts) + 1)  # +1: one bucket for unseen words
    doc, words, n = _word_table(texts)
    logp = np.log((words.map(counts).fillna(0).to_numpy(dtype=np.float64) + 1.0) / (total + vocab))
    sums = np.bincount(doc, weights=logp, minlength=n)
    lengths = np.bincount(doc, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lengths > 0, sums / np.maximum(lengths, 1), -np.inf)


def grouped_unigram_quality(texts: Sequence[str], groups: Sequence[str], references: Mapping[str, Sequence[str]]) -> np.ndarray:
    """:func:`unigram_quality` of each text against the reference of its own group (e.g. its domain).

    WHY per group: one reference ranks whole domains, not documents. On the default world an encyclopedia
    reference puts every clean cyber advisory (median -8.3) below most planted defects of the general
    domain; scored against its own domain's trusted host (advisories), clean cyber text has a median of
    -5.0 and lorem, foreign, symbol, repetition and short documents all fall below its 10th percentile.
    """
    if len(groups) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(groups)} group labels; give one group per text")
    groups_s = pd.Series(list(groups), dtype=object)
    missing = sorted(set(groups_s) - set(references))
    if missing:
        raise DataError(f"no quality reference for groups {missing} (references given for {sorted(references)})")
    out = np.empty(len(texts), dtype=np.float64)
    texts_l = list(texts)
    for group, idx in groups_s.groupby(groups_s).indices.items():
        out[idx] = unigram_quality([texts_l[i] for i in idx], references[group])
    return out


def split_documents(stream: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """Cut a packed stream (:func:`fluxforge.data.tokenize.encode_stream`) back into documents, each ending with EOS."""
    ends = np.flatnonzero(np.asarray(stream) == eos_id) + 1
    if len(stream) and (not len(ends) or ends[-1] != len(stream)):
        raise DataError(f"the token stream does not end with EOS ({eos_id}): it is not a packed stream of whole documents")
    return [stream[a:b] for a, b in zip(np.r_[0, ends[:-1]], ends)]


def quality_order(scores: Sequence[float] | np.ndarray, seed: int) -> np.ndarray:
    """Indices of ``scores`` in ascending order (best last); equal scores in a seeded random order."""
    s = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(s))
    if len(bad):
        raise DataError(f"quality scores of documents {bad[:5].tolist()} are NaN; score every document or drop it upstream")
    tiebreak = np.random.default_rng(seed).permutation(len(s))
    return np.lexsort((tiebreak, s))  # last key is primary: score first, then the random tiebreak


# ----------------------------------------------------------------------------- the sampler
class CurriculumSampler:
    """Windows walked in order along the quality-sorted token stream: training sees non-decreasing quality.

    Row ``r = step * batch_size + i`` of the run (``steps * batch_size`` rows in all) starts at token
    ``floor(r * (T - seq_len - 1) / (rows - 1))`` of the sorted stream of ``T`` tokens, so the run begins on
    the worst documents and ends exactly on the last window of the best ones, whatever the budget. When the
    run needs about as many tokens as the stream holds this is one pass (stride = ``seq_len``); a shorter
    run strides over evenly spaced windows, a longer one overlaps them (see :attr:`stride`). A window's
    quality is that of the document holding its first token.
    """

    def __init__(self, docs: Sequence[np.ndarray], scores: Sequence[float] | np.ndarray, seq_len: int,
                 batch_size: int, steps: int, seed: int) -> None:
        if len(docs) != len(scores):
            raise DataError(f"{len(docs)} documents but {len(scores)} quality scores; give one score per document")
        empty = [i for i, d in enumerate(docs) if len(d) == 0]
        if empty:
            raise DataError(f"documents {empty[:5]} have no tokens; drop them before building the curriculum")
        if min(seq_len, batch_size, steps) < 1:
            raise DataError(f"seq_len, batch_size and steps must be >= 1, got {seq_len}, {batch_size}, {steps}")
        self.order = quality_order(scores, seed)
        lengths = np.array([len(docs[i]) for i in self.order], dtype=np.int64)
        self.doc_starts = np.r_[0, np.cumsum(lengths)[:-1]]
        self.doc_scores = np.asarray(scores, dtype=np.float64)[self.order]
        self.stream = np.concatenate([np.asarray(docs[i]) for i in self.order])
        if len(self.stream) < seq_len + 1:
            raise DataError(f"the curriculum holds {len(self.stream)} tokens, fewer than seq_len+1 = {seq_len + 1}; lower seq_len or add data")
        self.seq_len, self.batch_size, self.steps, self.seed = seq_len, batch_size, steps, seed

    @property
    def rows(self) -> int:
        return self.steps * self.batch_size

    @property
    def stride(self) -> float:
        """Tokens between consecutive windows: ``seq_len`` is one exact pass, less reuses tokens, more skips some."""
        return (len(self.stream) - self.seq_len - 1) / max(self.rows - 1, 1)

    def signature(self) -> str:
        """What determines the batches: the sorted documents (order, sizes, scores), shapes, steps and seed."""
        h = hashlib.sha256(self.order.astype(np.int64).tobytes())
        h.update(self.doc_starts.astype(np.int64).tobytes())
        h.update(self.doc_scores.tobytes())
        return f"curriculum:{len(self.order)}docs:{len(self.stream)}tok:{h.hexdigest()[:16]}|{self.seq_len}|{self.batch_size}|{self.steps}|{self.seed}"

    def starts(self, step: int) -> np.ndarray:
        """First token (in the sorted stream) of each row of batch ``step``."""
        if not 0 <= step < self.steps:
            raise DataError(f"step {step} is outside this curriculum of {self.steps} steps; build the sampler with the run's steps")
        span, denom = len(self.stream) - self.seq_len - 1, max(self.rows - 1, 1)
        # exact Python integers (r * span can pass 2**63 on big runs): monotone, and the last row hits the end
        return np.array([r * span // denom for r in range(step * self.batch_size, (step + 1) * self.batch_size)], dtype=np.int64)

    def quality(self, step: int) -> np.ndarray:
        """Quality score of each row of batch ``step`` (the document holding the window's first token)."""
        return self.doc_scores[np.searchsorted(self.doc_starts, self.starts(step), side="right") - 1]

    def batch(self, step: int) -> torch.Tensor:
        idx = self.starts(step)[:, None] + np.arange(self.seq_len + 1)
        return torch.from_numpy(self.stream[idx].astype(np.int64))


def curriculum_from_streams(streams: Mapping[str, np.ndarray], decode, eos_id: int, seq_len: int,  # noqa: ANN001
                            batch_size: int, steps: int, seed: int) -> CurriculumSampler:
    """The curriculum over every document of the given slices, scored against each slice's own domain.

    ``decode(token_arrays) -> texts`` turns documents back into text (a tokenizer's ``batch_decode``), since
    quality is judged on words. The domain of slice ``general-2023`` is ``general``: each domain's documents
    are the reference for that domain (:func:`grouped_unigram_quality`), so one domain's vocabulary does not
    rank another's documents.
    """
    docs, groups = [], []
    for name, stream in streams.items():
        part = split_documents(np.asarray(stream), eos_id)
        docs += part
        groups += [name.split("-")[0]] * len(part)
    texts = decode([d[:-1].tolist() for d in docs])  # without the EOS
    refs = {g: [t for t, h in zip(texts, groups) if h == g] for g in set(groups)}
    return CurriculumSampler(docs, grouped_unigram_quality(texts, groups, refs), seq_len, batch_size, steps, seed)
