"""Model merging across continual tasks: interpolation, SLERP, EMA merge, task arithmetic, TIES, DARE-TIES, MagMax,
instruction residual.

FoMo-in-Flux (Roth et al. 2024, arXiv 2408.14471; methods.md section 8) found model merging the best
trade-off between accumulating new knowledge and keeping zero-shot ability. Its ``ema_paint``
recursion, read from the official code (``continual_lib/ema_paint.py``, ``merge.py``), is
``theta_run = 0.5 * theta_t + 0.5 * theta_run`` starting from the zero-shot (base) weights, with the
default interpolation being the arithmetic mean of two models. Beside it:

- task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic", arXiv 2212.04089):
  ``base + scale * sum_i (ft_i - base)``;
- instruction residual: ``updated_base + scale * (instruct - base)``, i.e. re-apply the weight change
  that instruction tuning made to the old base onto a continually pretrained base, so the CPT model
  gets its instruction following back without a new SFT run (Jindal et al. 2024, "Balancing Continuous
  Pre-Training and Instruction Fine-Tuning", Samsung Research, arXiv 2410.10739: the "instruction
  residual" is the parameter delta instruct - base; checked against the abstract and summaries only,
  so ``scale`` stays an argument).

FoMo's further operators (``continual_lib/merge.py``), the merge schedules' ``operator`` (:class:`MergeOperator`,
:mod:`fluxforge.continual.methods`):

- SLERP: per tensor, spherical interpolation of the two flattened weights (the angle from their unit vectors,
  the coefficients ``sin((1-t)w)/sin w`` and ``sin(t w)/sin w`` on the raw tensors), linear when they are
  (anti)parallel (|cos| > 0.9995), as FoMo and mergekit do;
- TIES (Yadav et al. 2023, arXiv 2306.01708) and DARE-TIES (Yu et al. 2024, arXiv 2311.03099): task vectors
  ``ft_i - base`` trimmed to their top-``density`` magnitudes (DARE: a random ``density`` share, rescaled),
  a sign elected per entry, the agreeing entries averaged; peft's ``merge_utils`` per tensor (FoMo trims one
  flattened vector of the whole model, and calls the kept share ``1 - prune_percentile``);
- MagMax (Marczak et al. 2024, arXiv 2407.06322): per entry, the task vector of largest magnitude.

Every merge is an affine combination (coefficients sum to 1) and is computed as
``anchor + sum_j c_j * (x_j - y_j)``, where the anchor is the model the result should equal in the
degenerate cases (the heavier side of an interpolation, the finetuned model of a one-model task
arithmetic, the updated base of a residual). WHY: the differences are small and exact zeros when the
models agree, so "merge of identical weights is a no-op" holds bit for bit, and rounding scales with
the differences, as in :mod:`fluxforge.train.averaging`. Sums are in fp32 (fp64 for fp64 tensors) and
cast back to the anchor's dtype; checkpoints are read from safetensors only (``averaging.load_state``).
Integer buffers cannot be merged and must agree across all models.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel

from fluxforge.train.averaging import AveragingError, check_compatible, check_configs, load_state, write_state_as_model

State = dict[str, torch.Tensor]
Method = Literal["interpolate", "slerp", "ema", "task_arithmetic", "ties", "dare_ties", "magmax", "instruction_residual"]
METHODS: tuple[str, ...] = ("interpolate", "slerp", "ema", "task_arithmetic", "ties", "dare_ties", "magmax",
                            "instruction_residual")
# the operators a merge schedule (ema_merge, zs_merge, ft_merge) combines its models with
OPERATORS: tuple[str, ...] = ("interpolate", "slerp", "task_arithmetic", "ties", "dare_ties", "magmax")
FOMO_EMA_WEIGHT = 0.5  # ema_paint: equal-weight merge of the task model and the running merge (methods.md section 8)
TIES_DENSITY = 0.3  # the share of each task vector TIES/DARE keep: FoMo's prune_percentile 0.7 in its merge schedules
SLERP_LINEAR_ABOVE = 0.9995  # FoMo's and mergekit's DOT_THRESHOLD: nearly parallel tensors are interpolated linearly
_OPTIONS: dict[str, tuple[str, ...]] = {"interpolate": ("weight_b",), "slerp": ("weight_b",), "ema": ("weight_new",),
                                        "task_arithmetic": ("scale",), "ties": ("scale", "density"),
                                        "dare_ties": ("scale", "density", "seed"), "magmax": ("scale",),
                                        "instruction_residual": ("scale",)}
# peft imports bitsandbytes (a dependency of galore-torch), whose CPU backend warns on import that an optional kernel
# package is missing; FluxForge runs no 4-bit kernels, so the warning says nothing to a user
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# config.json entries that are about tokens, not the network: an instruct model often has other eos ids
_TOKEN_IDS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id"})


class MergeError(AveragingError):
    """Models that cannot be merged; the message names the file and the first mismatching tensor.

    A subclass of :class:`AveragingError` because the shared key/shape checks of averaging raise that:
    ``except AveragingError`` catches both.
    """


# ----------------------------------------------------------------------------- state-dict merges
def _check_mergeable(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Same keys and shapes everywhere (averaging's check); float tensors may differ in precision.

    Shape-only meta tensors are checked, with every float dtype mapped to fp32, so a bf16 instruct
    model merges with an fp32 CPT base while a float-vs-integer mismatch is still refused.
    """
    def shape_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.empty(v.shape, dtype=torch.float32 if v.is_floating_point() else v.dtype, device="meta")
                for k, v in state.items()}

    check_compatible([shape_only(s) for s in states], names)


Term = tuple[float, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]  # (c, x, y): adds c * (x - y)


def _shared(key: str, ref: torch.Tensor, states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str],
            ref_name: str) -> torch.Tensor:
    """A non-float tensor (an integer buffer) cannot be merged: every model must hold the same one."""
    for state, name in zip(states, names):
        if not torch.equal(state[key], ref):
            raise MergeError(f"{name}: non-float key '{key}' differs from {ref_name} and cannot be merged")
    return ref.clone()


def _affine(anchor: Mapping[str, torch.Tensor], terms: Sequence[Term], states: Sequence[Mapping[str, torch.Tensor]],
            names: Sequence[str]) -> State:
    """``anchor + sum_j c_j * (x_j - y_j)`` per float tensor; ``states``/``names`` are all inputs, for the checks."""
    _check_mergeable(states, names)
    anchor_name = names[next(i for i, s in enumerate(states) if s is anchor)]
    out: State = {}
    for key, first in anchor.items():
        if not first.is_floating_point():
            out[key] = _shared(key, first, states, names, anchor_name)
            continue
        dtype = torch.promote_types(first.dtype, torch.float32)
        acc = first.to(dtype, copy=True)
        for coef, x, y in terms:
            if coef != 0.0:
                acc.add_(x[key].to(dtype) - y[key].to(dtype), alpha=coef)
        out[key] = acc.to(first.dtype)
    return out


def _check_unit(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise MergeError(f"{what} must be in [0, 1], got {value}")
    return value


def interpolate(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], weight_b: float,
                names: Sequence[str] = ("model a", "model b")) -> State:
    """``(1 - w) * a + w * b``: weight 0 gives ``a``, 1 gives ``b``, 0.5 the mean (FoMo's default merge)."""
    w = _check_unit(weight_b, "interpolation weight_b")
    if w >= 0.5:
        return _affine(b, [(1.0 - w, a, b)], [a, b], names)
    return _affine(a, [(w, b, a)], [a, b], names)


def ema_merge(running: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], weight_new: float = FOMO_EMA_WEIGHT,
              names: Sequence[str] = ("running merge", "new task model")) -> State:
    """One step of FoMo's ``ema_paint``: ``theta_run = w * theta_t + (1 - w) * theta_run`` (w = 0.5).

    Start ``running`` at the base (zero-shot) weights and call once per finished task.
    """
    return interpolate(running, new, _check_unit(weight_new, "EMA weight_new"), names)


def task_arithmetic(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]], scale: float = 1.0,
                    names: Sequence[str] | None = None) -> State:
    """``base + scale * sum_i (ft_i - base)`` (Ilharco et al. 2023); ``names`` = base first, then each ft.

    Anchored on the last finetuned model: ``ft_n + (scale - 1)(ft_n - base) + scale * sum_{i<n} (ft_i - base)``,
    so one model at scale 1 comes back exactly.
    """
    if not finetuned:
        raise MergeError("task arithmetic needs at least one finetuned model")
    if not torch.isfinite(torch.tensor(float(scale))):
        raise MergeError(f"task arithmetic scale must be finite, got {scale}")
    names = list(names) if names is not None else ["base"] + [f"finetuned {i}" for i in range(len(finetuned))]
    if len(names) != len(finetuned) + 1:
        raise MergeError(f"{len(names)} names for 1 base and {len(finetuned)} finetuned models")
    last = finetuned[-1]
    terms = [(float(scale) - 1.0, last, base)] + [(float(scale), ft, base) for ft in finetuned[:-1]]
    return _affine(last, terms, [base, *finetuned], names)


def instruction_residual(instruct: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                         updated_base: Mapping[str, torch.Tensor], scale: float = 1.0,
                         names: Sequence[str] = ("instruct", "base", "updated base")) -> State:
    """``updated_base + scale * (instruct - base)``: put the instruction-tuning delta onto a CPT-updated base."""
    if not torch.isfinite(torch.tensor(float(scale))):
        raise MergeError(f"instruction residual scale must be finite, got {scale}")
    return _affine(updated_base, [(float(scale), instruct, base)], [instruct, base, updated_base], names)


def slerp(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], weight_b: float,
          names: Sequence[str] = ("model a", "model b")) -> State:
    """Spherical interpolation per tensor: weight 0 gives ``a``, 1 gives ``b``; (anti)parallel tensors interpolate linearly."""
    w = _check_unit(weight_b, "slerp weight_b")
    linear = interpolate(a, b, w, names)  # exact where the tensors agree (the anchored affine form)
    out: State = {}
    for key, lin in linear.items():
        x, y = a[key], b[key]
        if not x.is_floating_point() or w in (0.0, 1.0):
            out[key] = lin
            continue
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf, yf = x.to(dtype).flatten(), y.to(dtype).flatten()
        nx, ny = xf.norm().item(), yf.norm().item()
        cos = float(xf @ yf) / (nx * ny) if nx > 0 and ny > 0 else 0.0
        if abs(cos) > SLERP_LINEAR_ABOVE:
            out[key] = lin
            continue
        omega = math.acos(max(-1.0, min(1.0, cos)))
        ca, cb = math.sin((1 - w) * omega) / math.sin(omega), math.sin(w * omega) / math.sin(omega)
        out[key] = (ca * x.to(dtype) + cb * y.to(dtype)).to(x.dtype)
    return out


def _task_vector_merge(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]],
                       combine: Callable[[str, list[torch.Tensor]], torch.Tensor], scale: float,
                       names: Sequence[str] | None) -> State:
    """``base + scale * combine(key, [ft_i - base])`` per float tensor, anchored on the last model (exact when it agrees)."""
    if not finetuned:
        raise MergeError("a task-vector merge needs at least one finetuned model")
    if not math.isfinite(float(scale)):
        raise MergeError(f"merge scale must be finite, got {scale}")
    names = list(names) if names is not None else ["base"] + [f"finetuned {i}" for i in range(len(finetuned))]
    states = [base, *finetuned]
    _check_mergeable(states, names)
    last = finetuned[-1]
    out: State = {}
    for key, ref in last.items():
        if not ref.is_floating_point():
            out[key] = _shared(key, ref, states, names, names[-1])
            continue
        dtype = torch.promote_types(ref.dtype, torch.float32)
        b = base[key].to(dtype)
        vectors = [ft[key].to(dtype) - b for ft in finetuned]
        merged = combine(key, vectors) * float(scale)
        out[key] = (ref.to(dtype) + (merged - vectors[-1])).to(ref.dtype)
    return out


def _unit_density(density: float) -> float:
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise MergeError(f"merge density (the share of each task vector kept) must be in (0, 1], got {density}")
    return density


def ties(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]], scale: float = 1.0,
         density: float = TIES_DENSITY, names: Sequence[str] | None = None) -> State:
    """TIES: keep each task vector's top-``density`` magnitudes, elect a sign per entry, average the agreeing ones."""
    from peft.utils import merge_utils

    d = _unit_density(density)

    def combine(key: str, vectors: list[torch.Tensor]) -> torch.Tensor:
        if d >= 1.0:  # nothing trimmed (peft warns and returns the vector unchanged)
            stacked = torch.stack(vectors)
            return merge_utils.disjoint_merge(stacked, merge_utils.calculate_majority_sign_mask(stacked))
        return merge_utils.ties(vectors, torch.ones(len(vectors), dtype=vectors[0].dtype), d)

    return _task_vector_merge(base, finetuned, combine, scale, names)


def dare_ties(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]], scale: float = 1.0,
              density: float = TIES_DENSITY, seed: int = 0, names: Sequence[str] | None = None) -> State:
    """DARE-TIES: drop entries of each task vector at random (keep ``density``, rescaled by 1/density), then TIES' sign election.

    Each tensor's drop masks come from the generator seeded with ``seed`` and the tensor's name (the global RNG is
    left as it was), so a merge is reproducible whatever order or files the tensors come in.
    """
    from peft.utils import merge_utils

    d = _unit_density(density)

    def combine(key: str, vectors: list[torch.Tensor]) -> torch.Tensor:
        if d >= 1.0:
            stacked = torch.stack(vectors)
            return merge_utils.disjoint_merge(stacked, merge_utils.calculate_majority_sign_mask(stacked))
        torch.manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode())) % 2**63)  # peft draws from the global generator
        return merge_utils.dare_ties(vectors, torch.ones(len(vectors), dtype=vectors[0].dtype), d)

    with torch.random.fork_rng(devices=[]):
        return _task_vector_merge(base, finetuned, combine, scale, names)


def magmax(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]], scale: float = 1.0,
           names: Sequence[str] | None = None) -> State:
    """MagMax: per entry, the task vector with the largest magnitude (ties: the earliest model)."""
    def combine(key: str, vectors: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(vectors)
        pick = stacked.abs().argmax(dim=0, keepdim=True)
        return stacked.gather(0, pick).squeeze(0)

    return _task_vector_merge(base, finetuned, combine, scale, names)


@dataclass(frozen=True)
class MergeOperator:
    """How a merge schedule combines models: ``operator(base, [older, newer])`` (FoMo's ``f_merge``).

    ``base`` is the zero-shot model (task vectors are differences from it); ``weight`` is the newest model's
    weight (interpolate, slerp), ``scale`` multiplies the merged task vector (task_arithmetic, ties, dare_ties,
    magmax), ``density`` is the share of each task vector TIES/DARE keep, ``seed`` DARE's drop masks.
    """

    name: str = "interpolate"
    weight: float = FOMO_EMA_WEIGHT
    scale: float = 1.0
    density: float = TIES_DENSITY
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in OPERATORS:
            raise MergeError(f"unknown merge operator '{self.name}' (choose one of {', '.join(OPERATORS)})")

    def __call__(self, base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]],
                 names: Sequence[str] | None = None) -> State:
        if self.name in ("interpolate", "slerp"):
            if len(models) != 2:
                raise MergeError(f"merge operator '{self.name}' combines two models, got {len(models)}")
            pair = tuple(names[1:]) if names else ("older model", "newer model")
            return (interpolate if self.name == "interpolate" else slerp)(models[0], models[1], self.weight, pair)
        names = list(names) if names else None
        if self.name == "task_arithmetic":
            return task_arithmetic(base, models, self.scale, names)
        if self.name == "ties":
            return ties(base, models, self.scale, self.density, names)
        if self.name == "dare_ties":
            return dare_ties(base, models, self.scale, self.density, self.seed, names)
        return magmax(base, models, self.scale, names)


# ----------------------------------------------------------------------------- HF directories
def _check_networks(paths: Sequence[Path]) -> None:
    """HF configs must describe the same network (averaging's rule), token ids aside."""
    check_configs(paths, ignore=frozenset(_TOKEN_IDS), error=MergeError)


def _arity(method: str, n: int) -> None:
    many = "[base, finetuned_1, ..., finetuned_n] (n >= 1)"
    expect = {"interpolate": "[a, b]", "slerp": "[a, b]", "ema": "[base, task_1, ..., task_n] (n >= 1)",
              "task_arithmetic": many, "ties": many, "dare_ties": many, "magmax": many,
              "instruction_residual": "[instruct, base, updated_base]"}
    if method not in expect:
        raise MergeError(f"unknown merge method '{method}' (choose one of {', '.join(METHODS)})")
    fixed = {"interpolate": 2, "slerp": 2, "instruction_residual": 3}.get(method)
    if (fixed is not None and n != fixed) or n < 2:
        raise MergeError(f"merge method '{method}' takes paths {expect[method]}, got {n} path(s)")


def merge_states(method: Method, paths: Sequence[Path | str], **kw: float) -> State:
    """Load the safetensors checkpoints in ``paths`` (order as in :func:`merge_models`) and merge them."""
    _arity(method, len(paths))
    unknown = sorted(set(kw) - set(_OPTIONS[method]))
    if unknown:
        raise MergeError(f"merge method '{method}' has no option '{unknown[0]}' (options: {', '.join(_OPTIONS[method])})")
    paths = [Path(p) for p in paths]
    _check_networks(paths)
    names = [str(p) for p in paths]
    if method == "ema":  # unrolled, holding two states at a time: theta_run starts at the base
        running = load_state(paths[0])
        for prev, path in zip(names, paths[1:]):
            running = ema_merge(running, load_state(path), kw.get("weight_new", FOMO_EMA_WEIGHT),
                                (f"running merge up to {prev}", str(path)))
        return running
    states = [load_state(p) for p in paths]
    merges: dict[str, Callable[[], State]] = {
        "interpolate": lambda: interpolate(states[0], states[1], kw.get("weight_b", 0.5), names),
        "slerp": lambda: slerp(states[0], states[1], kw.get("weight_b", 0.5), names),
        "task_arithmetic": lambda: task_arithmetic(states[0], states[1:], kw.get("scale", 1.0), names),
        "ties": lambda: ties(states[0], states[1:], kw.get("scale", 1.0), kw.get("density", TIES_DENSITY), names),
        "dare_ties": lambda: dare_ties(states[0], states[1:], kw.get("scale", 1.0), kw.get("density", TIES_DENSITY),
                                       int(kw.get("seed", 0)), names),
        "magmax": lambda: magmax(states[0], states[1:], kw.get("scale", 1.0), names),
        "instruction_residual": lambda: instruction_residual(*states, scale=kw.get("scale", 1.0), names=names),
    }
    return merges[method]()


def merge_models(method: Method, paths: Sequence[Path | str], out: Path | str, template: Path | str | None = None,
                 info: dict | None = None, **kw: float) -> PreTrainedModel:
    """Merge HF model directories (or safetensors files) and write the result as an HF model directory.

    ``paths`` per method, always ending with the newest / updated model:

    - ``"interpolate"``, ``"slerp"``: ``[a, b]``, keyword ``weight_b`` (default 0.5);
    - ``"ema"``: ``[base, task_1, ..., task_n]``, keyword ``weight_new`` (default 0.5), FoMo's unrolled recursion;
    - ``"task_arithmetic"``: ``[base, finetuned_1, ..., finetuned_n]``, keyword ``scale`` (default 1);
    - ``"ties"``, ``"dare_ties"``, ``"magmax"``: the same paths, keywords ``scale`` (1), ``density`` (0.3,
      TIES/DARE), ``seed`` (0, DARE);
    - ``"instruction_residual"``: ``[instruct, base, updated_base]``, keyword ``scale`` (default 1).

    Config and tokenizer come from ``template`` (default: the last path, which must be an HF
    directory); the weights keep the template's dtype. ``training_state/info.json`` records the merge.
    """
    _arity(method, len(paths))
    template = Path(template) if template is not None else Path(paths[-1])
    if not (template / "config.json").exists():
        raise MergeError(f"{template}: no config.json to build the merged model from; pass an HF model directory as template")
    merged = merge_states(method, paths, **kw)
    record = {"merged": [str(p) for p in paths], "method": method, "options": dict(kw), "template": str(template), **(info or {})}
    return write_state_as_model(merged, template, out, record)
