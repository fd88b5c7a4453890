"""G_stack depthwise growth: a trained L-layer model becomes a g*L-layer model by stacking its blocks.

Du et al., NeurIPS 2024, "Stacking Your Transformers" (arXiv 2405.15319; methods.md section 6), operator as
in the official code (``tongxuluo/prts``, ``prts_lit/scaling/stackingpt.py``): ``stacking_list = [0..L-1] * g``
and target layer ``i`` is a clone of source layer ``stacking_list[i] = i % L``; token embedding, final norm
and LM head are copied unchanged, the width stays the same. The grown model then trains normally with a
fresh optimizer. The paper's guidelines: g = 4, and grow after ``d`` tokens given by
:func:`growth_tokens`.

The grown model is built from its own config (``num_hidden_layers = g*L``), so every attention module
carries its own ``layer_idx`` and the KV cache has one slot per layer; copying module objects instead
would leave g layers writing into the same cache slot.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from numbers import Integral

import torch
from transformers import PreTrainedModel

from fluxforge.config import TrainConfig
from fluxforge.errors import FluxForgeError

log = logging.getLogger(__name__)
GROWTH_FACTOR = 4  # methods.md section 6, README guideline: g = 4
# log10(d) = A*log10(N) + B/log10(C) - E (prts README; methods.md section 6): d and N in tokens / parameters, C in FLOPs
TIMING_A, TIMING_B, TIMING_E = 0.88, 163.27, 5.74
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")  # HF decoders (Llama, Qwen, Mistral), as in train.distill


class GrowthError(FluxForgeError):
    """A growth request that cannot be honoured (bad factor, a model without ``model.layers.N``)."""


def stacking_list(num_layers: int, g: int) -> list[int]:
    """Source layer of each target layer: ``[0..L-1] * g`` (prts ``stackingpt.py``)."""
    _check_factor(g)
    if num_layers < 1:
        raise GrowthError(f"cannot stack a model with {num_layers} layers")
    return list(range(num_layers)) * int(g)


def _check_factor(g: object) -> None:
    """g copies of the whole layer list: only a positive integer means anything (g=1 is the identity)."""
    if isinstance(g, bool) or not isinstance(g, Integral) or g < 1:
        raise GrowthError(f"growth factor g must be an integer >= 1 (the paper uses {GROWTH_FACTOR}), got {g!r}")


def grown_config(config, g: int):  # noqa: ANN001, ANN201 - any PretrainedConfig
    """A copy of ``config`` with ``g`` times the layers; per-layer lists (``layer_types``) are stacked alike."""
    new = copy.deepcopy(config)
    order = stacking_list(config.num_hidden_layers, g)
    new.num_hidden_layers = len(order)
    if getattr(new, "layer_types", None):
        new.layer_types = [config.layer_types[i] for i in order]
    return new


def stacked_state(state: dict[str, torch.Tensor], num_layers: int, g: int) -> dict[str, torch.Tensor]:
    """Target state dict: layer ``i`` gets a clone of source layer ``i % L``; every other tensor is copied."""
    order = stacking_list(num_layers, g)
    out: dict[str, torch.Tensor] = {}
    by_layer: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        m = _LAYER.match(key)
        if m is None:
            out[key] = value.clone()
        else:
            by_layer.setdefault(int(m[1]), []).append((m[2], value))
    if sorted(by_layer) != list(range(num_layers)):
        raise GrowthError(f"expected weights for layers 0..{num_layers - 1} under 'model.layers.N.', found {sorted(by_layer)}")
    for target, source in enumerate(order):
        for rest, value in by_layer[source]:
            out[f"model.layers.{target}.{rest}"] = value.clone()
    return out


def grow(model: PreTrainedModel, g: int = GROWTH_FACTOR) -> PreTrainedModel:
    """G_stack: a new model of the same class with ``g * L`` layers, stacked from ``model`` (which is untouched).

    Works for HF decoders that name their blocks ``model.layers.N`` (Llama, Qwen, Mistral). The result has
    the source's dtype and is in eval mode, like a freshly loaded model.
    """
    _check_factor(g)
    num_layers = model.config.num_hidden_layers
    with torch.random.fork_rng(devices=[]):  # the throwaway random init must not shift the caller's RNG stream
        target = type(model)(grown_config(model.config, g))
    state = stacked_state(model.state_dict(), num_layers, g)
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]  # rotary inv_freq is rebuilt from the config
    if missing or unexpected:
        raise GrowthError(f"cannot stack a {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    dtype = next(model.parameters()).dtype
    return target.to(dtype).eval()


def growth_tokens(n_params: float, tokens: float | None = None, compute: float | None = None) -> float:
    """Tokens ``d`` to train the small model before stacking (Du et al. 2024, prts README; methods.md section 6).

    ``log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74`` with ``N`` the TARGET model's parameters and
    ``C`` the target's training compute in FLOPs, ``C = 6 N D`` for ``D`` target training tokens. Give either
    ``tokens`` (D) or ``compute`` (C). Fitted on models of 410M-7B parameters; far below that (the tiny
    profile's ~1e5 parameters) it predicts more tokens than the whole run, so callers should cap it.
    """
    if (tokens is None) == (compute is None):
        raise GrowthError("give exactly one of tokens (D) or compute (C = 6*N*D)")
    if not n_params > 0:
        raise GrowthError(f"target parameter count N must be positive, got {n_params}")
    c = compute if compute is not None else 6.0 * n_params * float(tokens)  # type: ignore[arg-type]
    if not c > 10:
        raise GrowthError(f"target compute C must exceed 10 FLOPs for log10(C) > 1 in the formula, got {c}")
    return 10 ** (TIMING_A * math.log10(n_params) + TIMING_B / math.log10(c) - TIMING_E)


def growth_step(n_params: float, total_tokens: float, tokens_per_step: int, max_fraction: float = 0.5) -> tuple[int, bool]:
    """The training step at which to stack, and whether the paper's ``d`` had to be capped.

    ``d`` comes from :func:`growth_tokens`; it is capped at ``max_fraction`` of the run, because a small
    model that uses the whole budget leaves nothing for the grown one (the formula is an extrapolation
    for models far below its fitted range).
    """
    if tokens_per_step < 1 or not 0 < max_fraction <= 1:
        raise GrowthError(f"tokens_per_step must be >= 1 and max_fraction in (0, 1], got {tokens_per_step}, {max_fraction}")
    d = growth_tokens(n_params, tokens=total_tokens)
    cap = max_fraction * total_tokens
    return max(1, math.ceil(min(d, cap) / tokens_per_step)), d > cap


def growth_split(model: torch.nn.Module, cfg: TrainConfig) -> int:
    """Steps the small model trains before stacking: ``growth.fraction`` of the run, or the G_stack formula."""
    if cfg.growth.fraction is not None:
        first = round(cfg.growth.fraction * cfg.steps)
    else:
        layer = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
        target = sum(p.numel() for p in model.parameters()) + (cfg.growth.factor - 1) * layer
        first, capped = growth_step(target, cfg.steps * cfg.batch_size * cfg.seq_len, cfg.batch_size * cfg.seq_len)
        if capped:
            log.warning("growth: the G_stack timing formula asks for more tokens than half this run; stacking at half")
    if not 2 <= first <= cfg.steps - 2:
        raise GrowthError(f"growth: the small model would train {first} of {cfg.steps} steps; each phase needs >= 2 steps")
    return first
