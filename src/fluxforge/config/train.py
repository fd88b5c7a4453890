"""A training section (``pretrain``, each continual task, ``distill``): data, LR schedule, engine and techniques."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from fluxforge.config.base import Fraction, NonNegInt, PosFloat, PosInt, Strict


class Replay(Strict):
    ratio: Fraction = 0.0
    slices: list[str] = Field(default_factory=list)


class DeepSpeedSettings(Strict):
    """Train through a DeepSpeed ZeRO engine instead of plain torch (src/fluxforge/train/engine.py).

    0 = off (plain torch AdamW). 1/2/3 = ZeRO stage; ``config`` names the JSON (default:
    infra/deepspeed/zero{stage}.json). The launcher's FLUXFORGE_DEEPSPEED_CONFIG overrides ``config``.
    """

    stage: Literal[0, 1, 2, 3] = 0
    config: str | None = None

    @model_validator(mode="after")
    def _config_needs_stage(self) -> DeepSpeedSettings:
        if self.config is not None and self.stage == 0:
            raise ValueError(f"deepspeed.config is '{self.config}' but deepspeed.stage is 0 (off); set stage 1, 2 or 3")
        return self


def wsd_decay_steps(steps: int, decay_fraction: float) -> int:
    """Steps in the WSD decay: at least one, so the last step always reaches the final LR."""
    return max(1, round(decay_fraction * steps))


class InfiniteSchedule(Strict):
    """The infinite LR schedule (Ibrahim et al. 2024, arXiv 2403.08763; Janson et al. 2025, arXiv 2503.02844).

    Warmup -> cooldown to ``const_ratio`` -> constant -> exponential anneal to ``min_ratio``. Phase ends are
    cumulative fractions of the steps; the defaults are the Janson MAE code's (``Pauljanson002/MAE-1``:
    warmup_ratio 0.05, cooldown_ratio 0.3, constant_ratio 0.8, constant LR 0.25, min LR 0.01 of the peak).
    """

    warmup_fraction: Fraction | None = 0.05  # warmup ends here; null: use the top-level warmup_steps
    cooldown_end: Fraction = 0.3  # the cooldown to const_ratio ends here (Janson sweep: 0.3 / 0.4 / 0.5)
    constant_end: Fraction = 0.8  # the constant phase ends here; the anneal takes the rest
    const_ratio: Annotated[float, Field(gt=0, le=1)] = 0.25  # η_const / η_max (Janson sweep: 0.25 / 0.5 / 0.75)
    min_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.01  # η_min / η_max; null: use min_lr_ratio
    cooldown: Literal["cosine", "inv_sqrt", "linear"] = "cosine"  # cosine = "InfCos" (Beyond Cosine Decay)
    inv_sqrt_alpha: PosFloat = 10.0  # timescale α of the inverse-sqrt cooldown (Ibrahim et al. use 10)

    @model_validator(mode="after")
    def _increasing(self) -> InfiniteSchedule:
        w = 0.0 if self.warmup_fraction is None else self.warmup_fraction
        if not w < self.cooldown_end <= self.constant_end < 1:
            raise ValueError(
                f"phase ends must satisfy warmup_fraction < cooldown_end <= constant_end < 1, got "
                f"{self.warmup_fraction} / {self.cooldown_end} / {self.constant_end}"
            )
        return self

    def boundaries(self, steps: int, warmup_steps: int) -> tuple[int, int, int]:
        """(warmup end, cooldown end, constant end) in steps.

        Floored like the Janson code's ``int(total * r)``, but with a 1e-9 nudge so that float error
        (0.29 * 100 = 28.999...) cannot move a boundary a whole step.
        """
        def at(fraction: float) -> int:
            return math.floor(fraction * steps + 1e-9)

        w = warmup_steps if self.warmup_fraction is None else at(self.warmup_fraction)
        return w, at(self.cooldown_end), at(self.constant_end)


class MeCoSettings(Strict):
    """Metadata conditioning then cooldown (Gao et al. 2025, arXiv 2501.01956; methods.md section 1).

    Each document is trained as ``"URL: <host>\n\n" + text`` with no loss on the metadata tokens, except over
    the last ``cooldown_fraction`` of the steps, which see plain documents (one optimizer and one LR schedule
    throughout). Conditional inference prepends the same metadata (fluxforge.train.meco.conditional_prompt).
    """

    enabled: bool = False
    cooldown_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1  # MeCo: the last 10% of tokens


class CurriculumSettings(Strict):
    """Documents in ascending order of quality, the best last (Luo et al. 2025, arXiv 2511.18903; methods.md section 5).

    Quality is the mean unigram log-probability of a document under its own domain's word distribution
    (fluxforge.train.curriculum.unigram_quality: CCNet's criterion with a unigram), so atypical text comes
    first. Pair it with a moderate final LR (min_lr_ratio) or with averaging.
    """

    enabled: bool = False


class AveragingSettings(Strict):
    """The stage's model is the weighted average of its last ``k`` snapshots, ``every`` steps apart (methods.md section 5)."""

    method: Literal["none", "sma", "ema", "wma"] = "none"
    k: PosInt = 6  # the summary's "last 6 checkpoints"
    every: PosInt = 10
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.2  # EMA weight of the newest snapshot (methods.md: ~0.2)


class GrowthSettings(Strict):
    """G_stack depthwise growth (Du et al. 2024, arXiv 2405.15319; methods.md section 6), pretraining only.

    ``factor`` g > 1: a model with ``model.num_layers / g`` layers trains first, is stacked g times into the
    configured model, and the grown model trains for the remaining steps (fresh optimizer, as the prts script).
    ``fraction``: share of the steps the small model takes; null = the paper's growth-timing formula
    (capped at half the run: the formula extrapolates badly for models this small).
    """

    factor: PosInt = 1  # 1 = off; the paper's g = 4
    fraction: Annotated[float, Field(gt=0, lt=1)] | None = None


class TrainConfig(Strict):
    slices: list[str] = Field(min_length=1)  # slice names or globs, e.g. "general-202[1-3]"
    replay: Replay = Replay()
    steps: PosInt = 300
    batch_size: PosInt = 16
    seq_len: PosInt = 128
    lr: PosFloat = 3e-3
    min_lr_ratio: Fraction = 0.1
    warmup_steps: NonNegInt = 30
    # LR schedule (fluxforge.train.schedule): min_lr_ratio is the final LR / peak for cosine and wsd (a
    # "moderate" ratio keeps the last, best data useful: Luo et al. 2025, arXiv 2511.18903)
    schedule: Literal["cosine", "wsd", "infinite", "constant", "rsqrt"] = "cosine"
    # WSD: share of steps in the final decay (Hägele et al. 2024 recommend ~20%); rsqrt: its linear cooldown
    decay_fraction: Fraction = 0.2
    decay_shape: Literal["sqrt", "linear", "cosine", "exp", "square"] = "sqrt"  # WSD decay; 1-sqrt is Hägele's best
    infinite: InfiniteSchedule = InfiniteSchedule()  # read only when schedule is "infinite"
    weight_decay: float = 0.1
    grad_clip: PosFloat = 1.0
    seed: int = 0
    log_every: PosInt = 10
    # Capability probes: every N steps (and before the first), score a fixed subset of the evaluation
    # questions and held-out documents, so curves show what the model knows as it trains; 0 = off
    probe_every: NonNegInt = 0
    probe_questions: PosInt = 64  # per domain
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()  # ZeRO stage 0 (off) | 1 | 2 | 3
    # How each step runs (src/fluxforge/train/engine.py). batch_size is the global batch; grad_accum splits it
    # into that many micro-batches (per rank), so the same params train the same model on a smaller device.
    grad_accum: PosInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA (fp16 if no bf16), fp32 on CPU
    compile: bool = False  # torch.compile the model's forward (worth it on GPU; minutes of compile on CPU)
    doc_mask: bool = False  # attention and positions stop at document boundaries (src/fluxforge/train/packing.py)
    checkpoint_every: PosInt = 100  # steps between resumable checkpoints (atomic writes)
    keep_checkpoints: PosInt = 2  # how many of the newest checkpoints are kept
    # A new run that starts from another run's model (a continual task): weights | weights_optimizer (AdamW
    # moments too; the schedule warms up again) | full (and the schedule continues without re-warming:
    # needs a wsd/infinite/constant schedule). Resuming after a crash is separate and always exact.
    init_mode: Literal["weights", "weights_optimizer", "full"] = "weights"
    meco: MeCoSettings = MeCoSettings()
    curriculum: CurriculumSettings = CurriculumSettings()
    averaging: AveragingSettings = AveragingSettings()
    growth: GrowthSettings = GrowthSettings()

    @model_validator(mode="after")
    def _accumulation_fits(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if self.curriculum.enabled and (self.replay.ratio > 0 or self.meco.enabled):
            raise ValueError("curriculum orders the documents of `slices` itself; it cannot be combined with "
                             "replay.ratio > 0 or meco (set replay.ratio: 0.0 and meco.enabled: false)")
        if self.deepspeed.stage and (self.averaging.method != "none" or self.growth.factor > 1):
            raise ValueError("averaging and growth need the whole model in one process; they are not supported "
                             "with deepspeed.stage > 0")
        if self.averaging.method != "none" and self.averaging.k * self.averaging.every > self.steps:
            raise ValueError(f"averaging: k ({self.averaging.k}) x every ({self.averaging.every}) steps is more than "
                             f"the run's {self.steps} steps")
        if self.init_mode == "full" and self.schedule == "cosine":
            raise ValueError("init_mode 'full' continues the learning-rate schedule without re-warming, which a "
                             "cosine schedule cannot do (it has decayed); use schedule wsd, infinite or constant, "
                             "or init_mode weights_optimizer")
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.schedule == "infinite" and self.infinite.warmup_fraction is not None:
            return self  # its warmup is infinite.warmup_fraction; warmup_steps is not read (see _infinite_fits)
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.schedule == "wsd":
            decay_start = self.steps - wsd_decay_steps(self.steps, self.decay_fraction)
            if decay_start < self.warmup_steps:
                raise ValueError(
                    f"wsd: the decay ({self.decay_fraction} of {self.steps} steps) would start at step {decay_start}, "
                    f"inside the warmup ({self.warmup_steps} steps); lower decay_fraction or warmup_steps"
                )
            if self.decay_shape == "exp" and self.min_lr_ratio == 0:
                raise ValueError("wsd: decay_shape 'exp' decays to min_lr_ratio geometrically, so it must be above 0")
        elif self.schedule == "infinite":
            self._infinite_fits()
        elif self.schedule == "rsqrt" and not self.warmup_steps:
            raise ValueError("rsqrt: the decay is sqrt(warmup_steps / step), so warmup_steps must be at least 1")
        elif self.schedule == "rsqrt" and self.steps - wsd_decay_steps(self.steps, self.decay_fraction) < self.warmup_steps:
            raise ValueError(f"rsqrt: the cooldown ({self.decay_fraction} of {self.steps} steps) would start inside the "
                             f"warmup ({self.warmup_steps} steps); lower decay_fraction or warmup_steps")
        return self

    def _infinite_fits(self) -> None:
        inf = self.infinite
        # the infinite schedule has its own warmup and final-LR knobs; a set top-level one would be ignored
        for own, top in (("warmup_fraction", "warmup_steps"), ("min_ratio", "min_lr_ratio")):
            if getattr(inf, own) is not None and top in self.model_fields_set:
                raise ValueError(
                    f"{top} is set, but schedule 'infinite' reads infinite.{own} ({getattr(inf, own)}) instead: "
                    f"remove {top}, or set infinite.{own}: null to use {top}"
                )
        eta_min = self.infinite_min_ratio
        if not 0 < eta_min <= inf.const_ratio:
            raise ValueError(
                f"infinite: the final LR ratio ({eta_min}) must be above 0 and at most const_ratio ({inf.const_ratio}); "
                "the anneal is geometric from const_ratio down to it"
            )
        w, cd, const = inf.boundaries(self.steps, self.warmup_steps)
        if not w < cd <= const < self.steps - 1:
            raise ValueError(
                f"infinite: with {self.steps} steps the phases end at warmup {w}, cooldown {cd}, constant {const}; "
                f"they need warmup < cooldown <= constant < {self.steps - 1} (the last step), "
                "so raise steps or spread the fractions"
            )

    @property
    def infinite_min_ratio(self) -> float:
        """η_min / η_max of the infinite schedule: ``infinite.min_ratio``, or ``min_lr_ratio`` when that is null."""
        return self.min_lr_ratio if self.infinite.min_ratio is None else self.infinite.min_ratio
