"""Ways to update a model on a stream of tasks: FoMo-in-Flux's method table (methods.md section 8), for any torch module.

FoMo-in-Flux (Roth et al. 2024, arXiv 2408.14471) compares full finetuning, parameter-efficient adapters,
selective tuning, GaLore, regularisers and merging schedules at equal compute. Each row here is an
:class:`UpdateMethod` with one small interface, the one FoMo's ``BaseContinualLearner`` has
(``continual_lib/utils/base_continual_learner.py``), cut to what a training loop needs:

- :meth:`~UpdateMethod.attach`: what is trainable (peft wraps the model, selective tuning freezes the rest);
- :meth:`~UpdateMethod.optimizer`: how the optimizer is built (AdamW over the trainable parameters, GaLore-AdamW);
- :meth:`~UpdateMethod.penalty`: a term added to the loss (EWC, SI), through :meth:`~UpdateMethod.objective`;
- :meth:`~UpdateMethod.begin_task`, :meth:`~UpdateMethod.after_step`, :meth:`~UpdateMethod.end_task`: hooks (where
  the next task starts, SI's path integral, EWC's Fisher, merging);
- :meth:`~UpdateMethod.deployable`: the model that is evaluated and saved (a plain module: adapters merged in).

Nothing here knows what the model or the loss is: a method is given a module and a loss closure
``objective(model, batch) -> scalar``, so the language stream (``continual.runner``) and an image-text stream
(a CLIP model and its contrastive loss) use the same methods. :func:`build_method` makes one from
:class:`fluxforge.config.UpdateSettings`; :mod:`fluxforge.continual.budget` measures what a step of it costs.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from fluxforge.config import TrainConfig, UpdateSettings
from fluxforge.config.methods import ADAPTERS, MERGE_SCHEDULES
from fluxforge.continual.merge import MergeOperator, State
from fluxforge.errors import FluxForgeError
from fluxforge.train.engine import BETAS, EPS, adamw, decay_groups
from fluxforge.train.schedule import meta_cosine_peak, meta_rsqrt_peak

log = logging.getLogger(__name__)
Objective = Callable[[nn.Module, Any], torch.Tensor]
NORM_CLASS_HINT = "Norm"  # LayerNorm, RMSNorm, LlamaRMSNorm, GroupNorm, BatchNorm2d: normalisation modules by class name


class MethodError(FluxForgeError, ValueError):
    """An update method that cannot run on this model; the message names the params key."""


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters an optimizer updates (``requires_grad``), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def state_of(model: nn.Module) -> State:
    """A detached copy of ``model``'s state dict on the host (what a merge combines; FoMo keeps these off the device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class UpdateMethod:
    """Full finetuning, and the interface every method implements (each hook a no-op here).

    ``key`` is the params prefix error messages name (``stream``).
    """

    name = "finetune"
    continues_adamw = True  # trains every parameter with AdamW: a parent's AdamW state can be continued

    def __init__(self, key: str = "stream") -> None:
        self.key = key

    def attach(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` for the stream and return the module to train (the same one, or a peft wrapper)."""
        return model

    def optimizer(self, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        """The optimizer of a task (``train(..., optimizer=method.optimizer)``): AdamW over the trainable parameters."""
        return adamw(model, cfg)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the loss, or None."""
        return None

    def objective(self, objective: Objective) -> Objective:
        """``objective`` plus :meth:`penalty`: what the loop minimises."""
        def loss(model: nn.Module, batch: Any) -> torch.Tensor:
            value = objective(model, batch)
            extra = self.penalty(model)
            return value if extra is None else value + extra.to(value.dtype)

        return loss

    def begin_task(self, model: nn.Module) -> None:
        """Before a task trains: set the weights it starts from."""

    def after_step(self, step: int, model: nn.Module) -> None:
        """After each optimizer step of the model that continues to the next task (``train(..., on_step=...)``)."""

    def end_task(self, model: nn.Module, objective: Objective, batches: Iterable[Any], deployed: nn.Module | None = None) -> None:
        """After a task: ``model`` is the one the next task continues, ``deployed`` the task's deployable copy (an
        annealed fork of an infinite-schedule trunk; ``model`` itself when None), ``batches`` the task's own data
        (:meth:`task_batches` of them) for per-task statistics, ``objective`` the loss without the penalty."""

    def task_batches(self, batch_size: int) -> int:
        """How many batches of the task's data :meth:`end_task` reads (EWC's Fisher samples); 0 for most methods."""
        return 0

    def deployable(self, deployed: nn.Module) -> nn.Module:
        """The model to evaluate and save after a task: a plain module of the base architecture."""
        return deployed

    def state_bytes(self) -> int:
        """Bytes of the tensors the method keeps that every training step reads or writes (EWC's Fisher and anchor,
        SI's paths): memory it costs on the training device, beyond weights, gradients and optimizer (continual.budget)."""
        return 0

    def describe(self) -> dict[str, Any]:
        """The method and its settings, for metrics and lineage."""
        return {"method": self.name}


# ----------------------------------------------------------------------------- targets of adapters and GaLore
def linear_targets(model: nn.Module, targets: str | list[str], key: str) -> dict[str, nn.Linear]:
    """The linear layers ``targets`` names (suffixes of module names as peft matches them, or ``all-linear``: every
    linear layer but the output head); a name matching no linear layer is an error naming ``key``."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if targets == "all-linear" or targets == ["all-linear"]:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        found = {n: m for n, m in linears.items() if m is not head}
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in linears)]
        if missing:
            known = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise MethodError(f"{key}: {missing} match no linear module of the model (its linear modules: {known}, "
                              "or all-linear)")
        found = {n: m for n, m in linears.items() if any(n == t or n.endswith("." + t) for t in names)}
    if not found:
        raise MethodError(f"{key}: the model has no linear module to adapt")
    return found


def check_rank(layers: Mapping[str, nn.Linear], rank: int, key: str) -> None:
    """A rank above a layer's smaller side adds parameters and no expressiveness: refuse it, naming the layer."""
    for name, layer in layers.items():
        limit = min(layer.in_features, layer.out_features)
        if rank > limit:
            raise MethodError(f"{key}: rank {rank} is larger than layer {name} ({layer.out_features} x {layer.in_features}, "
                              f"rank at most {limit})")


class Adapter(UpdateMethod):
    """LoRA, DoRA or VeRA through peft: the base frozen, one adapter trained over the whole stream.

    FoMo keeps one LoRA over the stream and evaluates base + adapter; here the deployable model is that sum made
    plain (``merge_and_unload`` on a copy), an HF checkpoint like any other, and training continues the adapter.
    """

    continues_adamw = False

    def __init__(self, name: str, rank: int, alpha: float, dropout: float, target_modules: str | list[str],
                 key: str = "stream") -> None:
        super().__init__(key)
        self.name, self.rank, self.alpha, self.dropout, self.targets = name, rank, alpha, dropout, target_modules

    def peft_config(self) -> Any:
        from peft import LoraConfig, VeraConfig

        targets = "all-linear" if self.targets == ["all-linear"] else self.targets
        if self.name == "vera":
            return VeraConfig(r=self.rank, target_modules=targets, vera_dropout=self.dropout)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          use_dora=self.name == "dora")

    def attach(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        check_rank(linear_targets(model, self.targets, f"{self.key}.adapter.target_modules"), self.rank,
                   f"{self.key}.adapter.rank")
        try:
            return get_peft_model(model, self.peft_config())
        except ValueError as err:  # peft's own refusals (e.g. VeRA over layers it cannot share projections with)
            raise MethodError(f"{self.key}.adapter: peft cannot build a {self.name} adapter here: {err}") from err

    def deployable(self, deployed: nn.Module) -> nn.Module:
        return copy.deepcopy(deployed).merge_and_unload()

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": self.targets}


class Selective(UpdateMethod):
    """BitFit (every bias) or LNFit (every normalisation module's parameters): the rest frozen (FoMo's bitfit/lnfit)."""

    continues_adamw = False

    def __init__(self, name: str, key: str = "stream") -> None:
        super().__init__(key)
        self.name = name

    def selected(self, model: nn.Module) -> set[str]:
        if self.name == "bitfit":
            return {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
        return {f"{m}.{p}" if m else p for m, mod in model.named_modules() if NORM_CLASS_HINT in type(mod).__name__
                for p, _ in mod.named_parameters(recurse=False)}

    def attach(self, model: nn.Module) -> nn.Module:
        chosen = self.selected(model)
        if not chosen:
            what = ("bias parameters (Llama-style blocks have none: their linear layers are bias-free and their norms "
                    "are RMSNorms without a bias); use stream.method lnfit, which trains the normalisation weights")
            if self.name == "lnfit":
                what = "normalisation modules (no module class named *Norm*)"
            raise MethodError(f"{self.key}.method {self.name}: the model has no {what}")
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
        return model


class GaLore(UpdateMethod):
    """GaLore-AdamW (Zhao et al. 2024, arXiv 2403.03507; ``galore-torch``): every parameter trains, the target
    projection matrices with their gradients and Adam moments in a rank-``rank`` subspace (FoMo's ``galore_adamw``)."""

    name = "galore"
    continues_adamw = False

    def __init__(self, rank: int, update_proj_gap: int, scale: float, proj_type: str, target_modules: str | list[str],
                 key: str = "stream") -> None:
        super().__init__(key)
        self.rank, self.gap, self.scale, self.proj_type, self.targets = rank, update_proj_gap, scale, proj_type, target_modules

    def attach(self, model: nn.Module) -> nn.Module:
        check_rank(linear_targets(model, self.targets, f"{self.key}.galore.target_modules"), self.rank, f"{self.key}.galore.rank")
        return model

    def optimizer(self, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        from galore_torch import GaLoreAdamW
        from galore_torch.galore_projector import GaLoreProjector

        # its projectors live in the optimizer state: allow them in checkpoints read back with weights_only=True
        torch.serialization.add_safe_globals([GaLoreProjector])
        projected = {id(m.weight) for m in linear_targets(model, self.targets, f"{self.key}.galore.target_modules").values()}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in projected]} for g in decay_groups(model, cfg.weight_decay)]
        low_rank = [p for p in model.parameters() if p.requires_grad and id(p) in projected]
        groups.append({"params": low_rank, "weight_decay": cfg.weight_decay, "rank": self.rank,
                       "update_proj_gap": self.gap, "scale": self.scale, "proj_type": self.proj_type})
        return GaLoreAdamW(groups, lr=cfg.lr, betas=BETAS, eps=EPS, no_deprecation_warning=True)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "rank": self.rank, "update_proj_gap": self.gap, "scale": self.scale,
                "proj_type": self.proj_type, "target_modules": self.targets}


def _quadratic(model: nn.Module, weights: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``sum_i w_i (theta_i - anchor_i)^2`` over the trainable parameters ``weights`` names."""
    params = trainable(model)
    terms = [(weights[n] * (params[n] - anchor[n]) ** 2).sum() for n in weights if n in params]
    return torch.stack(terms).sum()


class EWC(UpdateMethod):
    """Online EWC (Kirkpatrick et al. 2017; Schwarz et al. 2018), as FoMo's ``ewc.py``.

    After each task, the diagonal Fisher is the mean over ``ceil(fisher_samples / batch)`` batches of the
    squared gradient of the batch loss (FoMo's ``fim_avg: batch``); ``F <- gamma F + F_task`` and the anchor
    moves to the task's weights. The loss gains ``lambda/2 * sum F (theta - theta*)^2`` (eq. 3 of the paper).
    """

    name = "ewc"

    def __init__(self, lam: float, gamma: float, fisher_samples: int, key: str = "stream") -> None:
        super().__init__(key)
        if fisher_samples < 1:
            raise MethodError(f"{key}.ewc.fisher_samples: EWC needs at least one sample per task for its Fisher, got {fisher_samples}")
        self.lam, self.gamma, self.samples = lam, gamma, fisher_samples
        self.fisher: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.fisher is None:
            return None
        return self.lam / 2 * _quadratic(model, self.fisher, self.anchor)

    def task_batches(self, batch_size: int) -> int:
        return math.ceil(self.samples / batch_size)

    def end_task(self, model: nn.Module, objective: Objective, batches: Iterable[Any], deployed: nn.Module | None = None) -> None:
        params = trainable(model)
        squares = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        was_training = model.training
        model.train()
        with torch.enable_grad():
            for batch in batches:
                for p in params.values():
                    p.grad = None
                objective(model, batch).backward()
                for n, p in params.items():
                    if p.grad is not None:
                        squares[n] += p.grad.detach() ** 2
                count += 1
        for p in params.values():
            p.grad = None  # nothing of the Fisher pass leaks into the next step
        model.train(was_training)
        if not count:
            raise MethodError(f"{self.key}.ewc.fisher_samples: the task gave no batches for the Fisher")
        new = {n: s / count for n, s in squares.items()}
        self.fisher = new if self.fisher is None else {n: self.gamma * f + new[n] for n, f in self.fisher.items()}
        self.anchor = {n: p.detach().clone() for n, p in params.items()}

    def state_bytes(self) -> int:
        return nbytes([*(self.fisher or {}).values(), *self.anchor.values()])

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "lambda": self.lam, "gamma": self.gamma, "fisher_samples": self.samples}


class SI(UpdateMethod):
    """Synaptic Intelligence (Zenke et al. 2017, arXiv 1703.04200), as FoMo's ``si.py`` but with the exact path integral.

    Along a task, ``omega += -g * delta_theta`` per step (g: the gradient the step used, read by a
    post-accumulate-grad hook; FoMo approximates it by ``lr * g^2``, exact only for plain SGD); at the task's end
    ``Omega += omega / ((theta - theta_start)^2 + xi)``. The loss gains ``c * sum Omega (theta - theta_start)^2``.
    """

    name = "si"

    def __init__(self, c: float, xi: float, key: str = "stream") -> None:
        super().__init__(key)
        self.c, self.xi = c, xi
        self.omega: dict[str, torch.Tensor] = {}
        self.big_omega: dict[str, torch.Tensor] | None = None
        self.start: dict[str, torch.Tensor] = {}
        self.previous: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}

    def attach(self, model: nn.Module) -> nn.Module:
        for name, p in trainable(model).items():
            def keep(param: torch.Tensor, name: str = name, mine: torch.Tensor = p) -> None:
                if param is mine and param.grad is not None:  # a deep copy of the model (a deployable fork) is not tracked
                    self.grads[name] = param.grad.detach().clone()

            p.register_post_accumulate_grad_hook(keep)
            self.omega[name] = torch.zeros_like(p, requires_grad=False)
        self.start = self._snapshot(model)
        self.previous = self._snapshot(model)
        return model

    @staticmethod
    def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in trainable(model).items()}

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.big_omega is None:
            return None
        return self.c * _quadratic(model, self.big_omega, self.start)

    def after_step(self, step: int, model: nn.Module) -> None:
        for name, p in trainable(model).items():
            grad = self.grads.pop(name, None)
            now = p.detach()
            if grad is not None:
                self.omega[name] -= grad.to(now.device) * (now - self.previous[name])
            self.previous[name] = now.clone()

    def end_task(self, model: nn.Module, objective: Objective, batches: Iterable[Any], deployed: nn.Module | None = None) -> None:
        now = self._snapshot(model)
        if self.big_omega is None:
            self.big_omega = {n: torch.zeros_like(t) for n, t in now.items()}
        for n, t in now.items():
            self.big_omega[n] += self.omega[n] / ((t - self.start[n]) ** 2 + self.xi)
            self.omega[n].zero_()
        self.start, self.previous = now, {n: t.clone() for n, t in now.items()}

    def state_bytes(self) -> int:
        kept = [*self.omega.values(), *(self.big_omega or {}).values(), *self.start.values(), *self.previous.values()]
        return nbytes(kept) + nbytes(self.omega.values())  # + the captured gradients, one omega's worth during a step

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "c": self.c, "xi": self.xi}


class MergeSchedule(UpdateMethod):
    """FoMo's merging schedules over full finetuning (``ema_paint``, ``zs_paint``, ``ft_paint``), with any merge operator.

    - ``ema_merge``: ``run <- op(zs, [run, theta_t])`` from the zero-shot weights; the merge is both the evaluated
      model and the next task's start;
    - ``zs_merge``: every task starts from the zero-shot weights; the evaluated model is the unrolled merge of
      all task models (the same recursion, kept incrementally);
    - ``ft_merge``: training continues from each task's model; the evaluated model is ``op(zs, [zs, theta_t])``.

    Merges cost no counted FLOPs (elementwise work; FoMo's table gives merges full finetuning's budget) and the
    checkpoints they keep are not read by a training step, so they are not charged to its memory.
    """

    def __init__(self, name: str, operator: MergeOperator, key: str = "stream") -> None:
        super().__init__(key)
        if name not in MERGE_SCHEDULES:
            raise MethodError(f"{key}.method: '{name}' is not a merge schedule ({', '.join(MERGE_SCHEDULES)})")
        self.name, self.op = name, operator
        self.zero_shot: State = {}
        self.running: State = {}
        self.merged: State | None = None

    def attach(self, model: nn.Module) -> nn.Module:
        self.zero_shot = state_of(model)
        self.running = self.zero_shot
        return model

    def begin_task(self, model: nn.Module) -> None:
        if self.name == "zs_merge":
            model.load_state_dict(self.zero_shot)

    def end_task(self, model: nn.Module, objective: Objective, batches: Iterable[Any], deployed: nn.Module | None = None) -> None:
        latest = state_of(deployed if deployed is not None else model)
        names = ("zero-shot model", "merge so far", "latest task model")
        if self.name == "ft_merge":
            self.merged = self.op(self.zero_shot, [self.zero_shot, latest], ("zero-shot model", "zero-shot model", names[2]))
            return
        self.running = self.merged = self.op(self.zero_shot, [self.running, latest], names)
        if self.name == "ema_merge":
            model.load_state_dict(self.running)

    def deployable(self, deployed: nn.Module) -> nn.Module:
        if self.merged is None:
            return deployed
        merged = copy.deepcopy(deployed)
        merged.load_state_dict(self.merged)
        return merged

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "operator": self.op.name, "weight": self.op.weight, "scale": self.op.scale,
                "density": self.op.density, "seed": self.op.seed}


def merge_operator(settings: UpdateSettings) -> MergeOperator:
    """The merge operator ``settings.merge`` describes (the merge schedules' and the evaluation-only merge's)."""
    m = settings.merge
    return MergeOperator(m.operator, m.weight, m.scale, m.density, m.seed)


def build_method(settings: UpdateSettings, key: str = "stream") -> UpdateMethod:
    """The :class:`UpdateMethod` that ``settings.method`` names, with its family's keys; ``key`` prefixes error messages."""
    name = settings.method
    if name in ADAPTERS:
        a = settings.adapter
        return Adapter(name, a.rank, a.alpha, a.dropout, a.target_modules, key)
    if name in ("bitfit", "lnfit"):
        return Selective(name, key)
    if name == "galore":
        g = settings.galore
        return GaLore(g.rank, g.update_proj_gap, g.scale, g.proj_type, g.target_modules, key)
    if name == "ewc":
        e = settings.ewc
        return EWC(e.lambda_, e.gamma, e.fisher_samples, key)
    if name == "si":
        return SI(settings.si.c, settings.si.xi, key)
    if name in MERGE_SCHEDULES:
        return MergeSchedule(name, merge_operator(settings), key)
    if name == "finetune":
        return UpdateMethod(key)
    raise MethodError(f"{key}.method: unknown update method '{name}'")


def task_peak_lr(kind: str, cfg: TrainConfig, task: int, steps: int, warmup: int) -> float:
    """Task ``task``'s peak LR under the meta-schedule ``kind`` (UpdateSettings.task_peak): ``cfg.lr`` for
    ``constant``, FoMo's autoregressive cosine or rsqrt recovery otherwise (floor ``cfg.lr * cfg.min_lr_ratio``)."""
    low = cfg.lr * cfg.min_lr_ratio
    if kind == "meta_cosine":
        return meta_cosine_peak(cfg.lr, low, task, steps, warmup)
    if kind == "meta_rsqrt":
        return meta_rsqrt_peak(cfg.lr, low, task, steps, warmup)
    return cfg.lr
