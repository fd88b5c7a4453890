"""The CMR planner's promise per task, checked after the task: predicted vs realised base-data perplexity rise.

The planner (:mod:`fluxforge.continual.cmr`) chooses a replay ratio from short pilot runs and, in doing so,
promises that the base-data perplexity rises by at most ``max_general_ppl_rise`` over the task. The pilots are
short and start from fresh AdamW, so the fitted law extrapolated to the task's budget can be optimistic: on
the default world one run planned +5 % and realised +23 % (issue 21). This module makes the promise a record
(:class:`Promise`: predicted, realised, bound, held) that the stream writes to metrics/stream.json, MLflow and
the report, and a WARNING line when it breaks, so a broken promise is never silent.

The closed loop (:class:`ClosedLoop`) is how the plan improves within a stream: after each task the gap between
realised and predicted rise, in loss units, is a residual of the planner's extrapolation; the next task plans
with its tolerance tightened by the mean of those residuals so far (never loosened below the stated bound),
i.e. the CMR rule becomes ``L_G(T;R) + margin <= L_G(0) + eps``. This is a bias correction learnt from the
realised points; it cannot help the first task, nor a task whose grid holds no ratio safe enough (then the
planner falls back to the grid's smallest general-loss rise and the plan says so).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)


def rise_of(loss: float, baseline: float) -> float:
    """Relative perplexity rise of a mean log-loss over the baseline's: ``exp(loss - baseline) - 1``."""
    return math.expm1(loss - baseline)


def predicted_loss(plan: dict) -> float:
    """The fitted general loss at the budget for the ratio the plan chose (``CMRPlan.to_dict`` record)."""
    key = f"{float(plan['ratio']):g}"
    return float(plan["fits"][key]["general_loss_at_budget"])


@dataclass(frozen=True)
class Promise:
    """One task's promise: the rise the plan predicted at its ratio, the rise realised, the bound it promised.

    ``predicted`` and ``realised`` are relative base-data perplexity rises over the task (from the model the
    task started from to the task's deployable model, on the planner's evaluation documents); ``margin`` is the
    loss-units safety margin the plan was made with (0 for the first task of a closed loop).
    """

    task: str
    replay_ratio: float
    predicted: float
    realised: float
    bound: float
    margin: float = 0.0
    feasible: bool = True

    @property
    def held(self) -> bool:
        return self.realised <= self.bound

    @property
    def residual(self) -> float:
        """Realised minus predicted general loss (loss units): > 0 when the plan was optimistic."""
        return math.log1p(self.realised) - math.log1p(self.predicted)

    def to_dict(self) -> dict:
        return {**asdict(self), "held": self.held, "residual": self.residual}


def check_promise(task: str, plan: dict, realised_loss: float, bound: float, margin: float = 0.0) -> Promise:
    """The promise of ``plan`` for ``task`` given the base-data loss measured after it; warns when it broke."""
    baseline = float(plan["baseline_general_loss"])
    promise = Promise(task=task, replay_ratio=float(plan["replay_ratio"]), predicted=rise_of(predicted_loss(plan), baseline),
                      realised=rise_of(realised_loss, baseline), bound=bound, margin=margin, feasible=bool(plan["feasible"]))
    if promise.held:
        log.info("stream %s: planner promise held: base-data perplexity rise %+.2f%% (predicted %+.2f%%, bound %+.2f%%)",
                 task, 100 * promise.realised, 100 * promise.predicted, 100 * bound)
    else:
        log.warning("stream %s: planner promise BROKEN: base-data perplexity rose %+.2f%%, above the bound "
                    "max_general_ppl_rise %+.2f%% (predicted %+.2f%% at replay ratio %g)",
                    task, 100 * promise.realised, 100 * bound, 100 * promise.predicted, promise.replay_ratio)
    return promise


@dataclass
class ClosedLoop:
    """The safety margin of the next plan, learnt from the realised points of the tasks so far.

    ``enabled=False`` keeps the margin at 0 (the open-loop planner), so the two can be compared on one stream.
    """

    enabled: bool = True
    residuals: list[float] = field(default_factory=list)

    def margin(self) -> float:
        """Mean residual so far, clipped at 0: the plan is tightened by how optimistic it has been, never loosened."""
        if not self.enabled or not self.residuals:
            return 0.0
        return max(0.0, sum(self.residuals) / len(self.residuals))

    def observe(self, promise: Promise) -> None:
        self.residuals.append(promise.residual)


def tolerance(bound: float, margin: float) -> float:
    """The CMR tolerance in loss units for a bound on the perplexity rise, tightened by ``margin`` (>= 0)."""
    return max(math.log1p(bound) - margin, 0.0)


def promise_record(promises: Sequence[Promise]) -> dict:
    """metrics/stream.json's ``replay.promise``: per task (a mapping, as ``dvc exp show`` wants) and the count held."""
    return {"tasks": {p.task: p.to_dict() for p in promises}, "held": sum(p.held for p in promises),
            "planned": len(promises)}
