"""Learning-rate schedules as multiplicative factors of the peak LR.

The spine ships warmup + cosine, WSD (warmup-stable-decay with a 1-sqrt decay,
Hägele et al. 2024) and constant. Each returns a factor in [min_ratio, 1] after warmup.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fluxforge.config import TrainConfig


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    total, warm, floor = cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio

    def warmup(step: int) -> float | None:
        return (step + 1) / warm if step < warm else None

    if cfg.schedule == "cosine":
        def f(step: int) -> float:
            w = warmup(step)
            if w is not None:
                return w
            p = min(1.0, (step - warm) / max(1, total - warm - 1))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    elif cfg.schedule == "wsd":
        decay_start = total - max(1, round(cfg.decay_fraction * total))

        def f(step: int) -> float:
            w = warmup(step)
            if w is not None:
                return w
            if step < decay_start:
                return 1.0
            p = min(1.0, (step - decay_start) / max(1, total - decay_start - 1))
            return floor + (1 - floor) * (1 - math.sqrt(p))
    else:
        def f(step: int) -> float:
            w = warmup(step)
            return 1.0 if w is None else w
    return f
