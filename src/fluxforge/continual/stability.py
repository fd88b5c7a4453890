"""Mitigating the stability gap of domain continual pretraining (Guo et al., arXiv 2406.14833; methods.md section 4).

When continual pretraining starts on a new domain, performance first dips and then recovers (the
"stability gap"). Guo et al. shorten the dip with three strategies, each a piece here:

1. :class:`EpochSubsetSampler`: train on a subset of proper size for several epochs instead of one
   epoch over the whole corpus, at a fixed budget (``subset_tokens x epochs = budget``).
2. :func:`top_k_subset`: train only on a high-quality sub-corpus (the top fraction by a pluggable
   quality score; :func:`unigram_scorer` wraps :func:`fluxforge.train.curriculum.unigram_quality`).
3. :func:`pretraining_like_mixture`: mix the domain data into weights that mirror the base model's
   pretraining mix, to narrow the distribution gap.

Subset size, epochs, scorer and mixture proportions are [UNVERIFIED] in the paper (methods.md recalls
a ~5B-token subset for ~4 epochs out of ~50B tokens), so all are inputs, none are defaults.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fluxforge.errors import DataError
from fluxforge.train.curriculum import unigram_quality


# ----------------------------------------------------------------------------- 1. subset x epochs
def subset_for_budget(budget_tokens: int, epochs: int) -> int:
    """Subset size that spends ``budget_tokens`` in ``epochs`` passes: ``budget // epochs``."""
    if epochs < 1 or budget_tokens < epochs:
        raise DataError(f"cannot spread a budget of {budget_tokens} tokens over {epochs} epochs; need epochs >= 1 and budget >= epochs")
    return budget_tokens // epochs


class EpochSubsetSampler:
    """``epochs`` passes over a fixed random subset of documents, reshuffled every epoch; a pure function of the step.

    The subset: documents in a seeded random order, each taken if it still fits in ``subset_tokens``
    (whole documents only, so the subset may fall a little short: :attr:`subset_size` is the real size).
    The run stream is one separator token (the documents' EOS, "the end of the document before") then
    the subset ``epochs`` times, each epoch in its own seeded order. Row ``r`` of the run is the window
    ``run[r*seq_len : r*seq_len + seq_len + 1]``, so windows tile the stream and the *targets* of the
    run are exactly the subset tokens, each epoch once. Steps: ``floor(subset_size*epochs / (batch_size*seq_len))``;
    a remainder below one batch at the end of the last epoch is not trained (:attr:`dropped_tokens`),
    so choose ``subset_tokens*epochs`` a multiple of ``batch_size*seq_len`` for an exact budget.

    Same interface as :class:`fluxforge.train.sampler.MixtureSampler`: ``batch(step)``,
    ``batch_size``, ``seq_len``, ``signature()``.
    """

    def __init__(self, docs: Sequence[np.ndarray], subset_tokens: int, epochs: int, seq_len: int, batch_size: int, seed: int,
                 eos_id: int | None = None) -> None:
        if min(seq_len, batch_size, epochs, subset_tokens) < 1:
            raise DataError(f"subset_tokens, epochs, seq_len and batch_size must be >= 1, got {subset_tokens}, {epochs}, {seq_len}, {batch_size}")
        if not docs:
            raise DataError("no documents to draw the subset from")
        empty = [i for i, d in enumerate(docs) if len(d) == 0]
        if empty:
            raise DataError(f"documents {empty[:5]} have no tokens; drop them before building the subset")
        self.eos_id = self._separator(docs, eos_id)
        total = sum(len(d) for d in docs)
        if total < subset_tokens:
            raise DataError(f"the corpus holds {total} tokens, fewer than subset_tokens={subset_tokens}; lower subset_tokens "
                            "(and raise epochs to keep the budget) or add data")
        self.seq_len, self.batch_size, self.epochs, self.seed = seq_len, batch_size, epochs, seed
        self.requested_tokens = subset_tokens
        self.subset = self._choose(docs, subset_tokens, seed)  # indices into docs, ascending
        lengths = np.array([len(docs[i]) for i in self.subset], dtype=np.int64)
        self.tokens = np.concatenate([np.asarray(docs[i]) for i in self.subset]).astype(np.int64)
        self.lengths = lengths
        self.doc_start = np.r_[0, np.cumsum(lengths)[:-1]]  # of each subset doc in self.tokens
        self.subset_size = int(lengths.sum())
        # per epoch: the order of subset docs and where each lands inside the epoch
        self.orders = np.stack([np.random.default_rng([seed, 1, e]).permutation(len(self.subset)) for e in range(epochs)])
        self.epoch_ends = np.cumsum(lengths[self.orders], axis=1)  # (epochs, n): end offset of the k-th doc of epoch e
        self.steps = self.subset_size * epochs // (batch_size * seq_len)
        if self.steps < 1:
            raise DataError(f"subset of {self.subset_size} tokens x {epochs} epochs is less than one batch "
                            f"({batch_size}x{seq_len} = {batch_size * seq_len} tokens); raise subset_tokens or epochs")

    @staticmethod
    def _separator(docs: Sequence[np.ndarray], eos_id: int | None) -> int:
        last = {int(d[-1]) for d in docs}
        if eos_id is None:
            if len(last) != 1:
                raise DataError(f"documents end with different tokens {sorted(last)[:5]}; each must end with EOS "
                                "(fluxforge.train.curriculum.split_documents) or pass eos_id")
            return last.pop()
        return int(eos_id)

    @staticmethod
    def _choose(docs: Sequence[np.ndarray], subset_tokens: int, seed: int) -> np.ndarray:
        """Documents in seeded random order, each kept if it still fits (first fit)."""
        chosen, left = [], subset_tokens
        for i in np.random.default_rng([seed, 0]).permutation(len(docs)):
            if len(docs[i]) <= left:
                chosen.append(int(i))
                left -= len(docs[i])
            if left == 0:
                break
        if not chosen:
            raise DataError(f"every document is longer than subset_tokens={subset_tokens}; raise it")
        return np.sort(np.array(chosen, dtype=np.int64))

    @property
    def tokens_seen(self) -> int:
        """Target tokens the whole run trains on: ``steps * batch_size * seq_len``."""
        return self.steps * self.batch_size * self.seq_len

    @property
    def dropped_tokens(self) -> int:
        """Tokens at the end of the last epoch left out because they do not fill a batch."""
        return self.subset_size * self.epochs - self.tokens_seen

    def signature(self) -> str:
        """What determines the batches: the subset (documents and sizes), epoch orders, shapes and seed."""
        h = hashlib.sha256(self.subset.tobytes())
        h.update(self.doc_start.astype(np.int64).tobytes())
        h.update(self.orders.astype(np.int64).tobytes())
        return (f"epoch_subset:{len(self.subset)}docs:{self.subset_size}tok:{self.epochs}ep:{h.hexdigest()[:16]}"
                f"|{self.seq_len}|{self.batch_size}|{self.steps}|{self.seed}")

    def token_at(self, pos: np.ndarray) -> np.ndarray:
        """Token at run-stream positions ``pos`` (0 is the leading separator; ``1 + e*subset_size + o`` is offset o of epoch e)."""
        pos = np.asarray(pos, dtype=np.int64)
        g = np.maximum(pos - 1, 0)
        epoch, off = g // self.subset_size, g % self.subset_size
        out = np.empty(pos.shape, dtype=np.int64)
        for e in np.unique(epoch):  # a batch spans one or two epochs: a loop over them, vectorised inside
            m = epoch == e
            rank = np.searchsorted(self.epoch_ends[e], off[m], side="right")
            doc = self.orders[e, rank]
            first = self.epoch_ends[e, rank] - self.lengths[doc]  # where that document starts inside the epoch
            out[m] = self.tokens[self.doc_start[doc] + off[m] - first]
        return np.where(pos == 0, self.eos_id, out)

    def epoch_of(self, step: int) -> np.ndarray:
        """Epoch of the first target token of each row of batch ``step`` (0-based)."""
        return self._starts(step) // self.subset_size

    def _starts(self, step: int) -> np.ndarray:
        if not 0 <= step < self.steps:
            raise DataError(f"step {step} is outside this run of {self.steps} steps ({self.subset_size} tokens x {self.epochs} epochs)")
        rows = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        return rows * self.seq_len

    def batch(self, step: int) -> torch.Tensor:
        pos = self._starts(step)[:, None] + np.arange(self.seq_len + 1)
        return torch.from_numpy(self.token_at(pos).astype(np.int64))


# ----------------------------------------------------------------------------- 2. high-quality sub-corpus
Scorer = Callable[[Sequence[Any]], np.ndarray]


def unigram_scorer(reference: Sequence[str]) -> Scorer:
    """The default quality scorer: :func:`fluxforge.train.curriculum.unigram_quality` against ``reference`` texts."""
    ref = list(reference)
    return lambda texts: unigram_quality(texts, ref)


def top_k_subset(docs: Sequence[Any], scores: Sequence[float] | np.ndarray | Scorer, fraction: float) -> np.ndarray:
    """Indices of the best ``ceil(fraction * len(docs))`` documents by score, best first (ties: earlier document first).

    ``scores`` is one number per document (higher is better) or a scorer called on ``docs`` (e.g.
    ``unigram_scorer(reference_texts)`` for texts). Guo et al.'s sub-corpus size is [UNVERIFIED], so
    ``fraction`` is an input.
    """
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
        raise DataError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    if not len(docs):
        raise DataError("no documents to select from")
    s = np.asarray(scores(docs) if callable(scores) else scores, dtype=np.float64)
    if s.shape != (len(docs),):
        raise DataError(f"{len(docs)} documents but {s.shape[0] if s.ndim else 0} quality scores; give one score per document")
    bad = np.flatnonzero(np.isnan(s))
    if len(bad):
        raise DataError(f"quality scores of documents {bad[:5].tolist()} are NaN; score every document or drop it upstream")
    k = math.ceil(float(fraction) * len(docs) - 1e-9)
    order = np.lexsort((np.arange(len(s)), -s))  # primary: score descending; then index ascending
    return order[:k]


# ----------------------------------------------------------------------------- 3. pretraining-like mixture
def pretraining_like_mixture(weights_of_base: Mapping[str, float], domain_slices: Sequence[str] | Mapping[str, float],
                             domain_share: float) -> dict[str, float]:
    """Weights summing to 1: ``domain_share`` for the domain slices, the rest in the base model's pretraining proportions.

    ``weights_of_base`` are the base model's source weights (any scale; normalised here).
    ``domain_slices`` is a list (equal split of ``domain_share``) or a mapping of relative weights.
    A slice in both gets both parts. Pass concrete slice names (expand globs with
    :meth:`fluxforge.config.Params.expand` first); the result feeds :class:`fluxforge.train.sampler.MixtureSampler`.
    """
    if isinstance(domain_share, bool) or not 0.0 <= float(domain_share) <= 1.0:
        raise DataError(f"domain_share must be in [0, 1], got {domain_share!r}")
    base = _normalised(weights_of_base, "base pretraining weights")
    dom_w = dict(domain_slices) if isinstance(domain_slices, Mapping) else {s: 1.0 for s in domain_slices}
    if domain_share > 0 and not dom_w:
        raise DataError(f"domain_share is {domain_share} but no domain slices were given")
    if domain_share < 1 and not base:
        raise DataError("no base pretraining weights to mirror; give the base model's source weights")
    out: dict[str, float] = {}
    for group, share in ((base, 1.0 - float(domain_share)), (_normalised(dom_w, "domain slice weights") if dom_w else {}, float(domain_share))):
        for name, w in group.items():
            if share > 0:
                out[name] = out.get(name, 0.0) + share * w
    return out


def _normalised(weights: Mapping[str, float], what: str) -> dict[str, float]:
    bad = {k: v for k, v in weights.items() if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0)}
    if bad:
        raise DataError(f"{what} must be finite numbers >= 0; bad: {bad}")
    total = float(sum(weights.values()))
    if weights and total <= 0:
        raise DataError(f"{what} sum to 0; give at least one positive weight")
    return {k: float(v) / total for k, v in weights.items() if v > 0}
