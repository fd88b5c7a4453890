"""How a stream updates its model, and on what budget: FoMo-in-Flux's method table (methods.md section 8).

:class:`UpdateSettings` is shared by every stream (the language ``stream`` section inherits it; an image-text
stream's section can too): ``method`` names one row of the table and the sections below hold each family's
own keys; :mod:`fluxforge.continual.methods` builds the method, :mod:`fluxforge.continual.budget` the budget.
Defaults are FoMo's (``configs/config.yaml`` of the original author's last commit) where FoMo has one; where a
key must know the model (a LoRA target module, a rank larger than a layer) it is checked when the stage has
loaded the model, still before any training.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fluxforge.config.base import Fraction, NonNegFloat, PosFloat, PosInt, Strict

# full update | low-rank adapters (peft) | selective tuning | optimiser-side | regularisation | merging schedules
METHODS = ("finetune", "lora", "dora", "vera", "bitfit", "lnfit", "galore", "ewc", "si", "ema_merge", "zs_merge", "ft_merge")
MERGE_SCHEDULES = ("ema_merge", "zs_merge", "ft_merge")
ADAPTERS = ("lora", "dora", "vera")
Method = Literal["finetune", "lora", "dora", "vera", "bitfit", "lnfit", "galore", "ewc", "si",
                 "ema_merge", "zs_merge", "ft_merge"]


class AdapterSettings(Strict):
    """``lora``, ``dora``, ``vera`` through peft: one adapter kept over the whole stream, merged into each deployable model.

    ``target_modules``: module names (a suffix of the dotted name, as peft matches them) or ``all-linear``
    (every linear layer but the output head). ``alpha`` scales the update by ``alpha / rank`` (LoRA, DoRA;
    VeRA has no alpha and does not read it); FoMo's ``scale: 1`` is ``alpha = rank``.
    """

    rank: PosInt = 4  # FoMo's table 4 row "LoRA r=4"
    alpha: PosFloat = 4.0
    dropout: Fraction = 0.0
    target_modules: str | list[str] = "all-linear"


class GaLoreSettings(Strict):
    """GaLore-AdamW (``galore-torch``): the gradients of the target projection matrices in a rank-``rank`` subspace."""

    rank: PosInt = 8  # FoMo's galore defaults
    update_proj_gap: PosInt = 200
    scale: PosFloat = 2.0
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = "std"
    target_modules: str | list[str] = "all-linear"


class EWCSettings(Strict):
    """Online EWC: a diagonal Fisher from ``fisher_samples`` samples of each task, ``lambda/2 * sum F (theta - theta*)^2``."""

    lambda_: NonNegFloat = Field(1.0, alias="lambda")  # FoMo's e_lambda (from TiC-CLIP)
    gamma: Fraction = 1.0  # online decay of the earlier tasks' Fisher
    # FoMo uses 50,000 (98 batches of 512); FoMo charges the Fisher pass to every step (continual.budget)
    fisher_samples: PosInt = 32


class SISettings(Strict):
    """Synaptic Intelligence: importance from the path integral of each parameter's loss decrease, ``c * sum Omega (...)^2``."""

    c: NonNegFloat = 0.5  # FoMo (from Stojanovski et al.; the original SI uses 1)
    xi: PosFloat = 1.0  # damping of Omega = omega / (delta^2 + xi)


class MergeSettings(Strict):
    """Merging across tasks: the operator of the merge schedules, and an evaluation-only merge of any method's models.

    ``method`` is the evaluation-only view (training continues on the trunk): ``ema`` merges each task's model
    into a running merge, ``interpolate`` merges it with the init model. The merge schedules
    (``stream.method`` ema_merge, zs_merge, ft_merge) merge as part of training and need ``method: none``.
    Both combine models with ``operator`` (fluxforge.continual.merge.MergeOperator): ``weight`` is the newer
    model's weight (interpolate, slerp), ``scale`` the merged task vector's (task_arithmetic, ties, dare_ties,
    magmax), ``density`` the share of each task vector TIES/DARE keep, ``seed`` DARE's drop masks.
    """

    method: Literal["none", "ema", "interpolate"] = "none"
    operator: Literal["interpolate", "slerp", "task_arithmetic", "ties", "dare_ties", "magmax"] = "interpolate"
    weight: Fraction = 0.5
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    density: Annotated[float, Field(gt=0, le=1)] = 0.3  # FoMo's prune_percentile 0.7
    seed: int = 0


class BudgetSettings(Strict):
    """What every method is given per task: the same tokens, or the same memory-adjusted FLOPs (FoMo's MAF)."""

    kind: Literal["tokens", "maf"] = "tokens"


class UpdateSettings(Strict):
    """The update method of a stream, its family's keys, its budget and the LR meta-schedule across tasks."""

    method: Method = "finetune"
    adapter: AdapterSettings = AdapterSettings()
    galore: GaLoreSettings = GaLoreSettings()
    ewc: EWCSettings = EWCSettings()
    si: SISettings = SISettings()
    merge: MergeSettings = MergeSettings()
    budget: BudgetSettings = BudgetSettings()
    # the peak LR of each task: "constant" re-warms to the same peak every task; FoMo's autoregressive meta-schedules
    # anneal it across tasks: "meta_cosine" (cosine_with_linear_warmup_and_recovery, cosine tasks) and "meta_rsqrt"
    # (rsqrt_with_recovery, rsqrt tasks); an infinite/wsd schedule instead runs one trunk through all tasks
    task_peak: Literal["constant", "meta_cosine", "meta_rsqrt"] = "constant"


def check_update(settings: UpdateSettings, schedule: str, prefix: str = "stream") -> None:
    """Combinations that cannot run, named by their keys: a merge schedule under an evaluation-only merge, a
    meta-schedule over the wrong per-task schedule."""
    if settings.method in MERGE_SCHEDULES and settings.merge.method != "none":
        raise ValueError(f"{prefix}.method {settings.method} merges as part of training; set {prefix}.merge.method: none "
                         f"(the evaluation-only merge '{settings.merge.method}' would merge the merges again)")
    need = {"meta_cosine": "cosine", "meta_rsqrt": "rsqrt"}.get(settings.task_peak)
    if need and schedule != need:
        raise ValueError(f"{prefix}.task_peak {settings.task_peak} anneals the peak of per-task {need} schedules; "
                         f"{prefix}.train.schedule is {schedule!r}")
