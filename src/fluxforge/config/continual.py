"""``continual``: the chain of updates, each starting from ``pretrain`` or an earlier task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fluxforge.config.base import Strict
from fluxforge.config.train import TrainConfig


class ContinualTask(TrainConfig):
    init: str  # "pretrain" or "continual/<earlier task>"
    kind: Literal["time_slice", "domain"] = "time_slice"


class ContinualConfig(Strict):
    tasks: dict[str, ContinualTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _chain(self) -> ContinualConfig:
        seen = ["pretrain"]
        for key, task in self.tasks.items():
            if task.init not in seen:
                raise ValueError(
                    f"task '{key}' starts from '{task.init}', which is not 'pretrain' or an earlier task "
                    f"(allowed: {seen})"
                )
            seen.append(f"continual/{key}")
        return self

    @property
    def final(self) -> str:
        return f"continual/{list(self.tasks)[-1]}"
