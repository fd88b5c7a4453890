"""Deterministic window sampling from a weighted mixture of token streams.

Batch ``k`` depends only on (seed, k), so resuming at step k replays exactly the
batches an uninterrupted run would have seen; the sampler has no state to save
(its position *is* the step, which the checkpoint holds).

Windows are packed: a window of ``seq_len + 1`` tokens spans document boundaries (EOS between
documents), as in GPT/Llama pretraining; :mod:`fluxforge.train.packing` can stop attention at
those boundaries. A stream may carry a loss mask (MeCo: no loss on the URL metadata tokens), which
travels with the window in :class:`Batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fluxforge.errors import DataError


@dataclass(frozen=True)
class Batch:
    """Token windows ``(B, L+1)`` and, optionally, which tokens are prediction targets.

    ``loss_mask[b, i]`` False means "no loss for predicting token i" (its row is aligned with
    ``tokens``; the loss uses ``loss_mask[:, 1:]`` against targets ``tokens[:, 1:]``).
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.tokens[start:stop], None if self.loss_mask is None else self.loss_mask[start:stop])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.tokens.to(device), None if self.loss_mask is None else self.loss_mask.to(device))

    def __len__(self) -> int:
        return self.tokens.shape[0]


class Sampler(Protocol):
    """What the loop needs from a sampler: a pure function of the step, and what determines it."""

    batch_size: int
    seq_len: int

    def batch(self, step: int) -> Batch | torch.Tensor: ...
    def signature(self) -> str: ...


def as_batch(value: Batch | torch.Tensor) -> Batch:
    return value if isinstance(value, Batch) else Batch(value)


class MixtureSampler:
    """Windows drawn from streams with probability proportional to their weight; masks ride along."""

    def __init__(self, streams: Mapping[str, np.ndarray], weights: Mapping[str, float], seq_len: int, batch_size: int,
                 seed: int, masks: Mapping[str, np.ndarray] | None = None) -> None:
        names = [n for n in streams if weights.get(n, 0) > 0]
        if not names:
            raise DataError("the data mixture has no slice with positive weight")
        short = [n for n in names if len(streams[n]) < seq_len + 1]
        if short:
            raise DataError(f"slices {short} hold fewer than seq_len+1 = {seq_len + 1} tokens; lower seq_len or add data")
        self.names = names
        self.streams = [streams[n] for n in names]
        w = np.array([weights[n] for n in names], dtype=np.float64)
        self.probs = w / w.sum()
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.masks = None
        if masks is not None:
            bad = [n for n in names if n not in masks or len(masks[n]) != len(streams[n])]
            if bad:
                raise DataError(f"slices {bad} have no loss mask of their stream's length")
            self.masks = [np.asarray(masks[n], dtype=bool) for n in names]

    def signature(self) -> str:
        """What determines the batches: streams (names and sizes), weights, shapes, seed and masking."""
        streams = ",".join(f"{n}:{len(s)}" for n, s in zip(self.names, self.streams))
        masked = "" if self.masks is None else "|masked:" + ",".join(str(int((~m).sum())) for m in self.masks)
        return f"{streams}|{self.probs.round(12).tolist()}|{self.seq_len}|{self.batch_size}|{self.seed}{masked}"

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        which = rng.choice(len(self.streams), size=self.batch_size, p=self.probs)
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        mask = None if self.masks is None else np.empty((self.batch_size, self.seq_len + 1), dtype=bool)
        for i, s in enumerate(which):
            stream = self.streams[s]
            start = rng.integers(0, len(stream) - self.seq_len)  # every full window, the last one included
            rows[i] = stream[start : start + self.seq_len + 1]
            if mask is not None:
                mask[i] = self.masks[s][start : start + self.seq_len + 1]
        return Batch(torch.from_numpy(rows), None if mask is None else torch.from_numpy(mask))


class PhasedSampler:
    """``first`` for steps before ``switch``, then ``second``: MeCo's plain-data cooldown, a growth stage's data.

    Both must have the same shapes. Still a pure function of the step, so resume is exact across the switch.
    """

    def __init__(self, first: Sampler, second: Sampler, switch: int) -> None:
        if (first.batch_size, first.seq_len) != (second.batch_size, second.seq_len):
            raise DataError("the two phases of a sampler must have the same batch_size and seq_len")
        self.first, self.second, self.switch = first, second, switch
        self.batch_size, self.seq_len = first.batch_size, first.seq_len

    def signature(self) -> str:
        return f"phased@{self.switch}[{self.first.signature()}][{self.second.signature()}]"

    def batch(self, step: int) -> Batch:
        return as_batch(self.first.batch(step) if step < self.switch else self.second.batch(step))


class OffsetSampler:
    """``inner`` shifted by ``offset`` steps: a run continuing another (G_stack's grown model) sees new batches."""

    def __init__(self, inner: Sampler, offset: int) -> None:
        self.inner, self.offset = inner, offset
        self.batch_size, self.seq_len = inner.batch_size, inner.seq_len

    def signature(self) -> str:
        return f"offset{self.offset}[{self.inner.signature()}]"

    def batch(self, step: int) -> Batch:
        return as_batch(self.inner.batch(step + self.offset))


def mixture_weights(new: list[str], replay: list[str], ratio: float, sizes: Mapping[str, int]) -> dict[str, float]:
    """Weights that give replay slices ``ratio`` of the batches, each group split by size."""
    weights: dict[str, float] = {}
    for group, share in ((new, 1 - ratio), (replay, ratio)):
        total = sum(sizes[s] for s in group)
        for s in group:
            if share > 0 and total > 0:
                weights[s] = weights.get(s, 0.0) + share * sizes[s] / total
    return weights
