"""Typed params for ``params.yaml``.

Every stage loads the *whole* file through :func:`load_params`, so a typo anywhere
fails the first stage that runs, before any work is done, with a message that names
the file and the dotted key. Unknown keys are errors (``extra="forbid"``): a silently
ignored key is a silently ignored experiment.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fluxforge.errors import FluxForgeError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
DOMAINS = ("general", "cyber")


class ParamsError(FluxForgeError, ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    # strict: "400" or 400.0 for an int, or true for a number, is a mistake in a params file, not a value
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


# ----------------------------------------------------------------------------- world
class GeneralWorld(_Strict):
    people: PosInt = 90
    orgs: PosInt = 20
    places: PosInt = 14
    new_people_per_year: NonNegInt = 14
    change_fraction: Fraction = 0.25  # share of mutable facts (employer, CEO) that change each year
    docs_per_new_fact_entity: PosInt = 5  # docs for an entity that is new or changed in a slice
    docs_per_known_entity: NonNegInt = 1  # re-coverage of unchanged entities in later slices


class CyberWorld(_Strict):
    products_per_year: PosInt = 30
    vendors: PosInt = 14
    docs_per_product: PosInt = 6


class DefectRates(_Strict):
    """Share of clean documents that receive each planted defect (labels kept aside)."""

    boilerplate: Fraction = 0.05
    repetition: Fraction = 0.02
    symbols: Fraction = 0.02
    short: Fraction = 0.02
    lorem: Fraction = 0.02
    toxic: Fraction = 0.02
    exact_dup: Fraction = 0.03
    near_dup: Fraction = 0.03


class WorldConfig(_Strict):
    seed: int = 1234
    years: list[int] = Field(default_factory=lambda: [2021, 2022, 2023, 2024], min_length=1)
    general: GeneralWorld = GeneralWorld()
    cyber: CyberWorld = CyberWorld()
    # entities whose Q/A form is in training; the others are evaluated (both groups must exist)
    qa_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    defects: DefectRates = DefectRates()

    @model_validator(mode="after")
    def _years_sorted(self) -> WorldConfig:
        if sorted(set(self.years)) != list(self.years):
            raise ValueError("years must be strictly increasing")
        return self

    def slices(self) -> list[str]:
        return [f"{d}-{y}" for d in DOMAINS for y in self.years]


# ----------------------------------------------------------------------------- data
class Source(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]  # becomes data/raw/<name>.parquet
    format: Literal["world", "jsonl"] = "world"
    path: str  # a folder (world), a glob of local files, or s3://BUCKET/PREFIX (every *.jsonl object under it)
    text_field: str = "text"
    url_field: str = "url"
    timestamp_field: str = "timestamp"
    domain: Literal["general", "cyber", "auto"] = "auto"
    licence: str = "generated"


class FilterConfig(_Strict):
    """Thresholds default to the published values (see fluxforge.data.filters)."""

    min_doc_words: NonNegInt = 50
    max_doc_words: PosInt = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    min_alpha_words_ratio: Fraction = 0.8
    min_stop_words: NonNegInt = 2
    dup_line_frac: Fraction = 0.3
    dup_line_char_frac: Fraction = 0.2
    toxic_max_hits: NonNegInt = 0
    remove_boilerplate_lines: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> FilterConfig:
        if self.min_doc_words > self.max_doc_words:
            raise ValueError(f"min_doc_words ({self.min_doc_words}) is above max_doc_words ({self.max_doc_words})")
        if self.min_avg_word_length > self.max_avg_word_length:
            raise ValueError("min_avg_word_length is above max_avg_word_length")
        return self


class DedupConfig(_Strict):
    ngram: PosInt = 5
    bands: PosInt = 14
    rows: PosInt = 8
    threshold: Fraction = 0.8
    seed: int = 1


class DataConfig(_Strict):
    sources: list[Source] = Field(min_length=1)
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if "rejected" in names:
            raise ValueError("a source may not be named 'rejected' (data/raw/rejected.parquet holds rejected rows)")
        return self


class TokenizerConfig(_Strict):
    vocab_size: Annotated[int, Field(ge=300, le=65535)] = 2048
    min_frequency: PosInt = 2


# ----------------------------------------------------------------------------- model/train
class ModelConfig(_Strict):
    """A Llama-style causal LM, built with HF transformers from these numbers."""

    hidden_size: PosInt = 128
    num_layers: PosInt = 4
    num_heads: PosInt = 4
    intermediate_size: PosInt = 384
    max_position_embeddings: PosInt = 256
    init_seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class Replay(_Strict):
    ratio: Fraction = 0.0
    slices: list[str] = Field(default_factory=list)


class TrainConfig(_Strict):
    slices: list[str] = Field(min_length=1)  # slice names or globs, e.g. "general-202[1-3]"
    replay: Replay = Replay()
    steps: PosInt = 300
    batch_size: PosInt = 16
    seq_len: PosInt = 128
    lr: PosFloat = 3e-3
    min_lr_ratio: Fraction = 0.1
    warmup_steps: NonNegInt = 30
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: Fraction = 0.2  # WSD: share of steps in the final decay
    weight_decay: float = 0.1
    grad_clip: PosFloat = 1.0
    seed: int = 0
    log_every: PosInt = 10
    # Capability probes: every N steps (and before the first), score a fixed subset of the evaluation
    # questions and held-out documents, so curves show what the model knows as it trains; 0 = off
    probe_every: NonNegInt = 0
    probe_questions: PosInt = 64  # per domain

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self


class ContinualTask(TrainConfig):
    init: str  # "pretrain" or "continual/<earlier task>"
    kind: Literal["time_slice", "domain"] = "time_slice"


class ContinualConfig(_Strict):
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


class EvalConfig(_Strict):
    batch_size: PosInt = 32
    seq_len: PosInt = 128


class GateConfig(_Strict):
    """Promotion gate: the challenger becomes champion only if every rule holds."""

    min_cyber_acc_gain: float = 0.05  # over the pretrained model, absolute accuracy
    max_general_ppl_increase: float = 0.25  # relative to the pretrained model
    max_significance_p: Fraction = 0.05  # one-sided binomial test of the cyber gain
    min_student_ppl_ratio: Fraction = 0.0  # teacher_ppl / student_ppl (0 disables)
    min_student_acc_fraction: Fraction = 0.0  # student's above-chance accuracy / teacher's, worst domain (0 disables)
    must_beat_champion: bool = True


class RegisterConfig(_Strict):
    model_name: str = "fluxforge-lm"
    gate: GateConfig = GateConfig()


class TrackingConfig(_Strict):
    experiment: str = "fluxforge"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides


class Params(_Strict):
    world: WorldConfig = WorldConfig()
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    pretrain: TrainConfig
    continual: ContinualConfig
    distill: DistillConfig
    evaluate: EvalConfig = EvalConfig()
    registry: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    tracking: TrackingConfig = TrackingConfig()

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
            if cfg.seq_len + 1 > self.model.max_position_embeddings and where != "distill":
                raise ValueError(f"{where}.seq_len ({cfg.seq_len}) exceeds model.max_position_embeddings")
        teachers = ["final", "pretrain", *[f"continual/{t}" for t in self.continual.tasks]]
        if not self.distill.teachers():
            raise ValueError("distill.teacher: give at least one teacher")
        for t in self.distill.teachers():
            if t not in teachers and not t.startswith("models:/"):
                raise ValueError(f"distill.teacher '{t}' is not one of {teachers} or a registry URI models:/NAME@ALIAS")
        return self

    def expand(self, patterns: list[str]) -> list[str]:
        """Slice names matched by globs, in world order, without repeats."""
        known = self.world.slices()
        return [s for s in known if any(fnmatch.fnmatch(s, p) for p in patterns)]

    def teacher_names(self) -> list[str]:
        """The distillation teachers with "final" resolved to the last continual task's model."""
        return [self.continual.final if t == "final" else t for t in self.distill.teachers()]


def _format_errors(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid params ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? remove it or check the spelling against params.yaml's documented keys)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], path: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, Path(path))) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return parse_params(raw, path)
