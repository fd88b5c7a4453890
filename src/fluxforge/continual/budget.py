"""Compute budgets of update methods: FoMo-in-Flux's memory-adjusted FLOPs (MAF), measured on the model at hand.

FoMo-in-Flux (methods.md section 8, table 4) gives every method the same *memory-adjusted FLOPs* per task:
``MAF = FLOPs per step x memory multiplier``, the multiplier being the method's peak training memory over full
finetuning's, and ``steps_m = floor(steps_ft * MAF_ft / MAF_m)``. A method that computes less per step (LoRA:
no weight gradients of the frozen base) or holds less memory (LNFit: no optimizer state for most weights)
gets more steps; one that computes more (EWC's Fisher pass) fewer.

What is measured, on any ``nn.Module`` with a loss closure (:func:`measure_cost`), on a copy of the model:

- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` around one training step (forward, backward and the
  optimizer step, where GaLore's projections count; elementwise work such as AdamW's update is not counted by
  the counter, for any method) and around the method's end-of-task hook (EWC's Fisher pass; a merge is
  elementwise and counts nothing, which is why FoMo's table gives the merge schedules full finetuning's budget).
  FoMo measured one step together with ``begin_task``/``end_task`` and charged the sum to *every* step
  (``flops_computation.py``; its EWC row, 6,276,081 GFLOPs, is 99 x full finetuning's: one step plus a Fisher pass
  of 98 batches, hence 14 steps a task); :attr:`Cost.flops` charges the same way.
- memory: on CUDA ``torch.cuda.max_memory_allocated`` over the measured step (after a first step made the
  optimizer state); on CPU the bytes a step must hold: parameters + gradients + optimizer state + the tensors
  autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``; storages counted once, parameters
  not twice) + the method's own per-step state (EWC's Fisher and anchor, SI's paths). Checkpoints a merge keeps
  (on the host, as FoMo does) are read by no step and are not charged.

The steps are measured after one task's ``end_task``, so a regulariser's penalty is in them: the steady state of
a stream, not its first task.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fluxforge.config import TrainConfig
from fluxforge.continual.methods import Objective, UpdateMethod, trainable
from fluxforge.errors import FluxForgeError

CPU_MEMORY = "parameters + gradients + optimizer state + saved for backward + method state"
CUDA_MEMORY = "torch.cuda.max_memory_allocated"


class BudgetError(FluxForgeError, ValueError):
    """A budget a method cannot be run on (zero steps, incomparable measurements); the message names the key."""


@dataclass(frozen=True)
class Cost:
    """What one training step of a method costs on one model and batch."""

    method: str
    step_flops: float  # one step: forward + backward + optimizer (counted FLOPs)
    task_flops: float  # the end-of-task hook (EWC's Fisher pass); 0 for most methods
    memory_bytes: int  # peak training memory of a step
    memory_source: str  # CUDA_MEMORY or CPU_MEMORY
    trainable: int  # parameters the method trains
    memory_parts: dict[str, int] = field(default_factory=dict)  # CPU: the terms of memory_bytes

    @property
    def flops(self) -> float:
        """FLOPs charged per step: the step plus the per-task work, as FoMo charges them (module docstring)."""
        return self.step_flops + self.task_flops


def memory_multiplier(cost: Cost, reference: Cost) -> float:
    """Peak training memory over the reference's (full finetuning's); both measured the same way."""
    if cost.memory_source != reference.memory_source:
        raise BudgetError(f"memory of {cost.method} ({cost.memory_source}) and {reference.method} "
                          f"({reference.memory_source}) were measured differently and cannot be compared")
    return cost.memory_bytes / reference.memory_bytes


def maf(flops: float, multiplier: float) -> float:
    """Memory-adjusted FLOPs: FLOPs per step x memory multiplier (FoMo's table 4)."""
    return flops * multiplier


def steps_for_maf(steps_ft: int, maf_ft: float, maf_method: float) -> int:
    """``floor(steps_ft * MAF_ft / MAF_m)``: the steps that spend full finetuning's MAF budget.

    The ratio is rounded to 12 significant digits before the floor, so that equal costs give exactly
    ``steps_ft`` whatever the float noise of the division.
    """
    if maf_method <= 0 or maf_ft <= 0:
        raise BudgetError(f"memory-adjusted FLOPs must be positive (finetune {maf_ft}, method {maf_method})")
    return math.floor(float(f"{steps_ft * maf_ft / maf_method:.12g}"))


# ----------------------------------------------------------------------------- measurement
def to_device(batch: Any, device: torch.device) -> Any:
    """A batch on ``device``: anything with ``.to`` (a tensor, a sampler Batch), or a dict/list/tuple of them."""
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch.to(device) if hasattr(batch, "to") else batch


def _tensors(obj: Any, seen: set[int]) -> Iterable[torch.Tensor]:
    """Every tensor reachable in an optimizer's state (dicts, lists, and objects such as GaLore's projectors)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v, seen)
    elif hasattr(obj, "__dict__") and id(obj) not in seen:
        seen.add(id(obj))
        yield from _tensors(vars(obj), seen)


def _storage_bytes(tensors: Iterable[torch.Tensor], skip: set[int] = frozenset()) -> int:
    """Bytes of the distinct storages behind ``tensors``, leaving out those in ``skip``."""
    sizes: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            sizes[st.data_ptr()] = st.nbytes()
    return sum(sizes.values())


class _SavedForBackward:
    """Storages autograd saves for backward while active (``saved_tensors_hooks``)."""

    def __init__(self) -> None:
        self.saved: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        self.saved[st.data_ptr()] = st.nbytes()
        return t

    def bytes(self, skip: set[int]) -> int:
        return sum(n for ptr, n in self.saved.items() if ptr not in skip)


def measure_cost(build: Callable[[], UpdateMethod], model: nn.Module, objective: Objective, batch: Any,
                 task_batches: Sequence[Any], cfg: TrainConfig, device: torch.device | str | None = None) -> Cost:
    """FLOPs and peak memory of one training step of the method ``build()`` makes, on a copy of ``model``.

    ``objective(model, batch)`` is the loss; ``task_batches`` the batches its end-of-task hook reads
    (:meth:`UpdateMethod.task_batches` of them); ``cfg`` gives the optimizer's LR and weight decay. The copy takes a
    first step (the optimizer state comes into being), runs the end-of-task hook (counted as per-task FLOPs), then
    the measured step. ``device``: where to measure (default: where ``model`` is); CUDA memory is the allocator's
    peak, CPU memory the sum of what the step holds (module docstring).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    method = build()
    m = method.attach(copy.deepcopy(model).to(device))
    m.train()
    opt = method.optimizer(m, cfg)
    loss_fn = method.objective(objective)
    batch = to_device(batch, device)
    task_batches = [to_device(b, device) for b in task_batches]

    def step(saved: _SavedForBackward | None = None) -> int:
        """One step; returns the gradient bytes it held."""
        opt.zero_grad(set_to_none=True)
        if saved is None:
            loss_fn(m, batch).backward()
        else:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                loss = loss_fn(m, batch)
            loss.backward()
        grads = _storage_bytes(p.grad for p in m.parameters() if p.grad is not None)
        opt.step()
        method.after_step(1, m)
        return grads

    method.begin_task(m)
    step()
    with FlopCounterMode(display=False) as counter:
        method.end_task(m, objective, task_batches)
    task_flops = counter.get_total_flops()
    method.begin_task(m)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    saved = None if cuda else _SavedForBackward()
    with FlopCounterMode(display=False) as counter:
        grad_bytes = step(saved)
    step_flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)
    n_trainable = sum(p.numel() for p in trainable(m).values())
    if cuda:
        torch.cuda.synchronize(device)
        return Cost(method.name, float(step_flops), float(task_flops), int(torch.cuda.max_memory_allocated(device)),
                    CUDA_MEMORY, n_trainable)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    parts = {"parameters": _storage_bytes(m.parameters()), "gradients": grad_bytes,
             "optimizer": _storage_bytes(_tensors(opt.state, set()), params),
             "saved_for_backward": saved.bytes(params), "method": method.state_bytes()}
    return Cost(method.name, float(step_flops), float(task_flops), sum(parts.values()), CPU_MEMORY, n_trainable, parts)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class BudgetRow:
    """One method's line of the budget table (FoMo's table 4, measured here)."""

    method: str
    step_flops: float
    task_flops: float
    flops: float
    memory_bytes: int
    memory_multiplier: float
    maf: float
    trainable: int
    steps: dict[str, int]  # per task

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_table(costs: Sequence[Cost], steps_ft: Mapping[str, int], kind: str, key: str = "stream") -> list[BudgetRow]:
    """Rows for ``costs`` (the first is full finetuning, the reference) with their steps per task.

    ``kind`` ``tokens``: every method takes ``steps_ft`` (the same tokens); ``maf``: ``steps_for_maf``. A method
    left with zero steps on a task is an error naming ``{key}.budget.kind`` and the task.
    """
    reference = costs[0]
    ref_maf = maf(reference.flops, 1.0)
    rows = []
    for cost in costs:
        mult = memory_multiplier(cost, reference)
        m = maf(cost.flops, mult)
        steps = dict(steps_ft) if kind == "tokens" else {t: steps_for_maf(n, ref_maf, m) for t, n in steps_ft.items()}
        starved = [t for t, n in steps.items() if n < 1]
        if starved:
            raise BudgetError(f"{key}.budget.kind {kind}: method {cost.method} costs {m / ref_maf:.2f}x full finetuning's "
                              f"memory-adjusted FLOPs per step, which leaves it 0 steps on task(s) {starved} "
                              f"(full finetuning: {[steps_ft[t] for t in starved]}); raise those tasks' budget_tokens"
                              + (f" or lower {key}.ewc.fisher_samples" if cost.task_flops else ""))
        rows.append(BudgetRow(cost.method, cost.step_flops, cost.task_flops, cost.flops, cost.memory_bytes, mult, m,
                              cost.trainable, steps))
    return rows
