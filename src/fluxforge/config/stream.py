"""``stream``: a continual stream (stage ``stream``), and the checks that make a stream that cannot run fail at load.

A stream is an ordered list of tasks, each a slice of the corpus with a token budget (FoMo-in-Flux, Roth et
al. 2024; methods.md section 8). Its tasks train with ``pretrain``'s keys, with ``stream.train`` on top: that
config is derived once, when params are validated (:func:`stream_train_config`). The checks here are params
validation, so they live with the params; :mod:`fluxforge.continual.stream` uses them on its own streams.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError, create_model, model_serializer, model_validator

from fluxforge.config.base import Fraction, NonNegFloat, NonNegInt, PosInt, Strict
from fluxforge.config.methods import UpdateSettings, check_update
from fluxforge.config.train import TrainConfig
from fluxforge.errors import FluxForgeError


class StreamError(FluxForgeError, ValueError):
    """A stream that cannot be run as given: unknown slices, budgets below one batch, repeated task names."""


class SliceTask(Protocol):
    """What the checks read of a task: a :class:`StreamTask` here, a ``continual.stream.Task`` when running."""

    @property
    def name(self) -> str: ...

    @property
    def slices(self) -> Sequence[str]: ...

    @property
    def budget_tokens(self) -> int: ...


class TaskList(Protocol):
    """A stream as the checks see it: its tasks, in order."""

    @property
    def tasks(self) -> Sequence[SliceTask]: ...


def resolve_slices(task: SliceTask, known_slices: Sequence[str]) -> list[str]:
    """Known slices matched by the task's names/globs, in ``known_slices`` order, without repeats."""
    return [s for s in known_slices if any(fnmatch.fnmatch(s, p) for p in task.slices)]


def unknown_patterns(task: SliceTask, known_slices: Sequence[str]) -> list[str]:
    """The task's slice names/globs that match no known slice."""
    return [p for p in task.slices if not any(fnmatch.fnmatch(s, p) for s in known_slices)]


def validate_stream(stream: TaskList, known_slices: Sequence[str], batch_size: int, seq_len: int) -> dict[str, list[str]]:
    """Check every task of ``stream`` and return each task's resolved slices; raise one error listing every problem.

    Problems: an empty stream, a repeated task name, a task with no slices, a slice name/glob matching no
    known slice (with the task, the name and the known slices), a budget below one batch.
    """
    problems: list[str] = []
    if not stream.tasks:
        raise StreamError("the stream has no tasks; give at least one task")
    seen: set[str] = set()
    for t in stream.tasks:
        if t.name in seen:
            problems.append(f"task name '{t.name}' is used more than once; task names must be unique")
        seen.add(t.name)
    per_batch = batch_size * seq_len
    resolved: dict[str, list[str]] = {}
    for t in stream.tasks:
        if not t.slices:
            problems.append(f"task '{t.name}' names no slices")
        for p in unknown_patterns(t, known_slices):
            problems.append(f"task '{t.name}': slice '{p}' matches no known slice (known: {list(known_slices)})")
        if t.budget_tokens < per_batch:
            problems.append(f"task '{t.name}': budget_tokens {t.budget_tokens} is below one batch "
                            f"(batch_size*seq_len = {batch_size}*{seq_len} = {per_batch} tokens)")
        resolved[t.name] = resolve_slices(t, known_slices)
    if problems:
        raise StreamError(f"invalid stream ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  - " + "\n  - ".join(problems))
    return resolved


class StreamTask(Strict):
    """One task of a continual stream: a data slice (a time window, a domain or a set of sources) and its budget."""

    name: str = Field(min_length=1)
    slices: list[str] = Field(min_length=1)  # slice names or globs
    budget_tokens: PosInt  # the same for every method, so that comparisons are fair (FoMo-in-Flux)


class StreamReplay(Strict):
    """What each task mixes in besides its new data (methods.md sections 3 and 8)."""

    ratio: Fraction | Literal["planned"] = "planned"  # share of the batches; planned: the CMR planner picks it
    slices: list[str] = Field(default_factory=list)  # the base model's pretraining data, always replayable
    buffer_tokens: NonNegInt = 0  # a capped buffer of earlier tasks' documents (0 = none)
    policy: Literal["uniform", "recent", "balanced"] = "uniform"
    buffer_share: Fraction = 0.5  # of the replay share, what the buffer supplies once it holds data


class CMRPlanner(Strict):
    """Short pilot updates over a grid of replay ratios; the largest ratio whose general loss stays in tolerance."""

    grid: list[Fraction] = Field(default_factory=lambda: [0.1, 0.25, 0.5], min_length=2)
    pilot_steps: Annotated[int, Field(ge=3)] = 40
    points: Annotated[int, Field(ge=3)] = 4  # evaluations along each pilot (the fit needs >= 3)
    max_general_ppl_rise: NonNegFloat = 0.05  # tolerance: epsilon = ln(1 + this) in loss
    constraint: Literal["final", "max"] = "final"
    eval_docs: PosInt = 48  # held-out documents per loss evaluation
    closed_loop: bool = True  # tighten each plan by the earlier tasks' realised-minus-predicted rise (continual.promise)


class StabilityStrategy(Strict):
    """Stability-gap mitigation (Guo et al., methods.md section 4) for each task's new data."""

    kind: Literal["none", "subset_epochs", "top_k", "pretrain_mix"] = "none"
    epochs: PosInt = 4  # subset_epochs: the new data is a subset of budget/epochs tokens, seen ~epochs times
    top_k_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5  # top_k: the best documents by quality
    domain_share: Fraction = 0.5  # pretrain_mix: new data's share; the rest mirrors the base model's mixture


# the keys a stream task cannot override: stream.tasks gives slices and steps (from the budget), stream.replay the replay
SET_PER_TASK = ("slices", "steps", "replay", "probe_every")


class _AsWritten(Strict):
    """Base of :class:`StreamTrainOverrides`: refuses keys a task cannot set; dumps only the keys that were written."""

    @model_validator(mode="before")
    @classmethod
    def _trainable(cls, raw: Any) -> Any:
        for key in raw if isinstance(raw, dict) else ():
            if key in SET_PER_TASK or key not in cls.model_fields:
                raise ValueError(f"stream.train.{key}: not a training key a stream task can set (slices, steps and "
                                 "replay come from stream.tasks and stream.replay)")
        return raw

    def __repr_args__(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in type(self).model_fields if k in self.model_fields_set]

    @model_serializer(mode="plain")
    def _as_written(self) -> dict[str, Any]:
        """The overrides as written (nested sections too): unset keys are not overrides."""
        return {k: v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v
                for k in type(self).model_fields if k in self.model_fields_set for v in (getattr(self, k),)}


def _override_field(name: str) -> tuple[Any, None]:
    """``pretrain``'s field ``name`` with its type and bounds, but no default: an unset key is no override."""
    info = TrainConfig.model_fields[name]
    return (Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation), None


StreamTrainOverrides = create_model(
    "StreamTrainOverrides",
    __base__=_AsWritten,
    __doc__="Keys of ``pretrain`` that every stream task trains with instead, typed as in :class:`TrainConfig`.",
    **{name: _override_field(name) for name in TrainConfig.model_fields if name not in SET_PER_TASK},
)


class StreamConfig(UpdateSettings):
    """A continual stream (stage ``stream``): tasks in order from ``init``, with replay, strategies and merging.

    Its update method, budget, merge operator and LR meta-schedule are :class:`UpdateSettings` (config.methods).
    """

    enabled: bool = True
    init: str = "pretrain"
    ordering: Literal["given", "time", "random", "similarity", "difficulty"] = "given"
    seed: int = 0
    tasks: list[StreamTask] = Field(min_length=1)
    train: StreamTrainOverrides = StreamTrainOverrides()  # overrides of `pretrain`'s training keys for every task
    replay: StreamReplay = StreamReplay()
    planner: CMRPlanner = CMRPlanner()
    strategy: StabilityStrategy = StabilityStrategy()
    gap_every: NonNegInt = 5  # evaluate general and task loss every N steps over the first quarter of each task
    compare_no_replay: bool = True  # also run the stream without replay (the report's comparison)


def stream_train_config(stream: StreamConfig, pretrain: TrainConfig) -> TrainConfig:
    """Every stream task's training config: ``pretrain``'s keys with ``stream.train`` on top (slices/steps per task)."""
    base = pretrain.model_dump(exclude_unset=False)
    overrides = stream.train.model_dump()
    if overrides.get("schedule") == "infinite":  # it has its own warmup and final-ratio keys
        base = {k: v for k, v in base.items() if k not in ("warmup_steps", "min_lr_ratio")}
    merged = {**base, **overrides, "slices": stream.tasks[0].slices, "replay": {"ratio": 0.0, "slices": []},
              "probe_every": 0}
    return TrainConfig.model_validate(merged, strict=False)


def check_stream(stream: StreamConfig, pretrain: TrainConfig, known: list[str]) -> TrainConfig:
    """Bad streams fail here, at start: unknown slices, a budget below one batch, bad training keys.

    Returns the tasks' training config (:func:`stream_train_config`), so that it is derived once.
    """
    try:
        cfg = stream_train_config(stream, pretrain)
    except ValidationError as err:
        raise ValueError(f"stream.train: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from err
    validate_stream(stream, known, cfg.batch_size, cfg.seq_len)  # StreamError (a ValueError) names task and slice
    for pat in stream.replay.slices:
        if not fnmatch.filter(known, pat):
            raise ValueError(f"stream.replay.slices: '{pat}' matches no slice; known slices: {known}")
    if stream.replay.ratio != 0 and not stream.replay.slices and not stream.replay.buffer_tokens:
        raise ValueError("stream.replay: a replay ratio needs replay slices or a buffer (buffer_tokens > 0)")
    if stream.strategy.kind == "pretrain_mix" and stream.replay.ratio == "planned":
        raise ValueError("stream.strategy pretrain_mix sets the mixture itself (strategy.domain_share of new data, "
                         "the rest in the base model's proportions); set stream.replay.ratio to a number")
    if stream.strategy.kind == "pretrain_mix" and not stream.replay.slices:
        raise ValueError("stream.strategy pretrain_mix needs stream.replay.slices (the base model's pretraining data)")
    check_update(stream, cfg.schedule)
    if stream.init != "pretrain" and not stream.init.startswith("continual/") and not stream.init.startswith("models:/"):
        raise ValueError(f"stream.init '{stream.init}': use pretrain, continual/<task> or a registry URI models:/NAME@ALIAS")
    return cfg
