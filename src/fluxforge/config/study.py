"""``study``: technique studies against plain pretraining."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fluxforge.config.base import Fraction, PosInt, Strict
from fluxforge.config.train import AveragingSettings, MeCoSettings


class StudyConfig(Strict):
    """Technique studies on the pretraining data (stage ``study``; methods.md sections 1, 5, 6).

    Each study trains a variant of ``pretrain`` (its slices, model, batch and LR) for ``steps`` steps next to
    one shared baseline (shuffled data, cosine to min_lr_ratio, trained from scratch) and compares held-out
    loss and accuracy on the pretraining slices at equal tokens (MeCo, curriculum) or equal compute (growth).
    """

    studies: list[Literal["meco", "curriculum", "growth"]] = ["meco", "curriculum", "growth"]
    steps: PosInt = 200
    meco: MeCoSettings = MeCoSettings(enabled=True)
    curriculum_min_lr_ratio: Fraction = 0.5  # "moderate decay" (Luo et al.); the baseline keeps pretrain's ratio
    averaging: AveragingSettings = AveragingSettings(method="ema", k=6, every=10)
    growth_factor: Annotated[int, Field(ge=2)] = 2
    growth_compute_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25  # share of the compute the small model uses
