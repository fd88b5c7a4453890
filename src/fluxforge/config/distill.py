"""``distill``: a student trained from one teacher or a committee."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fluxforge.config.base import Fraction, PosFloat
from fluxforge.config.model import ModelConfig
from fluxforge.config.train import TrainConfig


class DistillConfig(TrainConfig):
    student: ModelConfig = ModelConfig(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256)
    # Each teacher: "final" (the last continual task), "pretrain", "continual/<task>", or a registered
    # version "models:/NAME@ALIAS" / "models:/NAME/VERSION". Several teachers form a committee.
    teacher: str | list[str] = "final"
    ensemble: Literal["mean_probs", "mean_logits"] = "mean_probs"  # how a committee's outputs are combined
    # Build the student by keeping these layers of the (first) teacher instead of from `student`; [] = off
    student_layers: list[Annotated[int, Field(ge=0)]] = []
    temperature: PosFloat = 2.0
    alpha: Fraction = 0.5  # weight of the KD term; (1 - alpha) on the hard-label loss
    # Teacher outputs: computed on the fly, or cached on disk (reused while teacher and data are unchanged,
    # e.g. across student sweeps). top_k > 0 keeps each position's k most likely tokens (sparse KD).
    teacher_cache: bool = False
    top_k: Annotated[int, Field(ge=0)] = 0

    def teachers(self) -> list[str]:
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)
