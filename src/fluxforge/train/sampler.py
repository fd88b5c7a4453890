"""Deterministic window sampling from a weighted mixture of token streams.

Batch ``k`` depends only on (seed, k), so resuming at step k replays exactly the
batches an uninterrupted run would have seen; the sampler has no state to save.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fluxforge.errors import DataError


class MixtureSampler:
    def __init__(self, streams: Mapping[str, np.ndarray], weights: Mapping[str, float], seq_len: int, batch_size: int, seed: int) -> None:
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

    def signature(self) -> str:
        """What determines the batches: streams (names and sizes), weights, shapes and seed."""
        streams = ",".join(f"{n}:{len(s)}" for n, s in zip(self.names, self.streams))
        return f"{streams}|{self.probs.round(12).tolist()}|{self.seq_len}|{self.batch_size}|{self.seed}"

    def batch(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        which = rng.choice(len(self.streams), size=self.batch_size, p=self.probs)
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for i, s in enumerate(which):
            stream = self.streams[s]
            start = rng.integers(0, len(stream) - self.seq_len)  # every full window, the last one included
            rows[i] = stream[start : start + self.seq_len + 1]
        return torch.from_numpy(rows)


def mixture_weights(new: list[str], replay: list[str], ratio: float, sizes: Mapping[str, int]) -> dict[str, float]:
    """Weights that give replay slices ``ratio`` of the batches, each group split by size."""
    weights: dict[str, float] = {}
    for group, share in ((new, 1 - ratio), (replay, ratio)):
        total = sum(sizes[s] for s in group)
        for s in group:
            if share > 0 and total > 0:
                weights[s] = weights.get(s, 0.0) + share * sizes[s] / total
    return weights
