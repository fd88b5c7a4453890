"""The whole params file: every section, and the checks that need more than one section.

Every stage loads the *whole* file (:func:`fluxforge.config.loader.load_params`), so a typo anywhere fails the
first stage that runs, before any work is done, with a message that names the file and the dotted key.
"""

from __future__ import annotations

import fnmatch

from pydantic import Field, PrivateAttr, model_validator

from fluxforge.config.base import Strict
from fluxforge.config.continual import ContinualConfig
from fluxforge.config.data import DataConfig
from fluxforge.config.distill import DistillConfig
from fluxforge.config.evaluate import EvalConfig
from fluxforge.config.mm import MMConfig
from fluxforge.config.model import ModelConfig
from fluxforge.config.register import RegisterConfig
from fluxforge.config.stream import StreamConfig, check_stream
from fluxforge.config.study import StudyConfig
from fluxforge.config.tokenizer import TokenizerConfig
from fluxforge.config.tracking import TrackingConfig
from fluxforge.config.train import TrainConfig
from fluxforge.config.world import WorldConfig


class Params(Strict):
    """``params.yaml``: one typed section per key (``register`` is ``registry`` here: ``register`` is a pydantic name)."""

    world: WorldConfig = WorldConfig()
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    pretrain: TrainConfig
    continual: ContinualConfig
    distill: DistillConfig
    evaluate: EvalConfig = EvalConfig()
    study: StudyConfig = StudyConfig()
    stream: StreamConfig | None = None
    registry: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    tracking: TrackingConfig = TrackingConfig()
    mm: MMConfig = MMConfig()  # the image / image-text branch (stages mm_*, mae@*, clip_pretrain)
    _stream_train: TrainConfig | None = PrivateAttr(default=None)  # derived from pretrain + stream.train at validation

    @model_validator(mode="after")
    def _slices_exist(self) -> Params:
        known = self.world.slices()
        sections: list[tuple[str, TrainConfig]] = [("pretrain", self.pretrain), ("distill", self.distill)]
        sections += [(f"continual.tasks.{k}", t) for k, t in self.continual.tasks.items()]
        for where, cfg in sections:
            for field, patterns in (("slices", cfg.slices), ("replay.slices", cfg.replay.slices)):
                for pat in patterns:
                    if not fnmatch.filter(known, pat):
                        raise ValueError(f"{where}.{field}: '{pat}' matches no slice; known slices: {known}")
            if cfg.replay.ratio > 0 and not cfg.replay.slices:
                raise ValueError(f"{where}.replay: ratio {cfg.replay.ratio} > 0 but no replay slices given")
            if not self.model.from_pretrained and cfg.seq_len + 1 > self.model.max_position_embeddings and where != "distill":
                raise ValueError(f"{where}.seq_len ({cfg.seq_len}) exceeds model.max_position_embeddings")
        if self.stream is not None:
            self._stream_train = check_stream(self.stream, self.pretrain, known)
        layers, g = self.model.num_layers, self.study.growth_factor
        if "growth" in self.study.studies and not self.model.from_pretrained and layers % g:
            raise ValueError(f"study.growth_factor {g} must divide model.num_layers {layers} (the growth study trains "
                             f"{layers}/{g} layers, then stacks them {g} times); choose a divisor of {layers}, or "
                             "leave growth out of study.studies")
        teachers = ["final", "pretrain", *[f"continual/{t}" for t in self.continual.tasks]]
        if not self.distill.teachers():
            raise ValueError("distill.teacher: give at least one teacher")
        for t in self.distill.teachers():
            if t not in teachers and not t.startswith("models:/"):
                raise ValueError(f"distill.teacher '{t}' is not one of {teachers} or a registry URI models:/NAME@ALIAS")
        return self

    def stream_train(self) -> TrainConfig:
        """Every stream task's training config: ``pretrain``'s keys with ``stream.train`` on top (slices/steps per task).

        Derived once, when the params are validated (:func:`fluxforge.config.stream.check_stream`).
        """
        assert self.stream is not None and self._stream_train is not None
        return self._stream_train

    def expand(self, patterns: list[str]) -> list[str]:
        """Slice names matched by globs, in world order, without repeats."""
        known = self.world.slices()
        return [s for s in known if any(fnmatch.fnmatch(s, p) for p in patterns)]

    def teacher_names(self) -> list[str]:
        """The distillation teachers with "final" resolved to the last continual task's model."""
        return [self.continual.final if t == "final" else t for t in self.distill.teachers()]
