"""Checkpoint averaging: a weighted average of the last K checkpoints in place of a final LR decay.

Luo et al. 2025, "LR decay wastes your best data" (arXiv 2511.18903, ICLR 2026; methods.md section 5):
with a quality-ascending curriculum, decaying the LR to ~0 makes the model learn little from the best
data, which arrives last. Averaging the final few checkpoints ``theta_avg = sum_i w_i theta_{T-(K-i)s}``
(``sum w_i = 1``) gives the noise reduction of a decay while the LR stays useful. Variants:

- SMA: uniform weights (PMA, arXiv 2505.12082, found it best for constant-LR checkpoints);
- EMA: ``w_i ∝ alpha (1 - alpha)^(K - i)``, alpha = 0.2, newest weighs most (the summary reports EMA
  with decay ~0.2 over the last 6 checkpoints; the exact parametrisation is marked UNVERIFIED in
  methods.md, so alpha stays an argument);
- WMA: linear weights ``w_i ∝ i``.

Index ``i = 1..K`` runs oldest to newest everywhere in this module. Sums are accumulated in fp32 and
the result is cast back to each tensor's own dtype, so a bf16 model stays bf16 without bf16 rounding
in the sum. Checkpoints are read from safetensors only (no pickles), either single files or HF model
directories; :func:`save_snapshot` writes the former during a run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from fluxforge.config import TrainConfig
from fluxforge.errors import FluxForgeError
from fluxforge.train.model import write_hf_dir

log = logging.getLogger(__name__)
Method = Literal["sma", "ema", "wma"]
METHODS: tuple[str, ...] = ("sma", "ema", "wma")
EMA_ALPHA = 0.2  # methods.md section 5: "EMA with decay ~0.2 over the last 6 checkpoints"
DEFAULT_K = 6
# config.json entries that describe how a file was written, not the network: they may differ between checkpoints
_CONFIG_NOISE = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"})


class AveragingError(FluxForgeError):
    """Checkpoints that cannot be averaged: the message names the file and the key."""


def averaging_weights(k: int, method: Method = "ema", alpha: float = EMA_ALPHA) -> np.ndarray:
    """Normalised weights ``w_1..w_K`` (oldest first) for K checkpoints; they sum to 1."""
    if k < 1:
        raise AveragingError(f"averaging needs at least one checkpoint, got k={k}")
    i = np.arange(1, k + 1, dtype=np.float64)
    if method == "sma":
        w = np.ones(k)
    elif method == "wma":
        w = i
    elif method == "ema":
        if not 0 < alpha <= 1:
            raise AveragingError(f"EMA alpha must be in (0, 1], got {alpha}")
        w = alpha * (1 - alpha) ** (k - i)
    else:
        raise AveragingError(f"unknown averaging method '{method}' (choose one of {', '.join(METHODS)})")
    return w / w.sum()


def load_state(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint: a ``.safetensors`` file or a directory of them (an HF model dir, sharded or not)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise AveragingError(f"{path}: not a safetensors file (pickled checkpoints are refused)")
        return load_file(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise AveragingError(f"{path}: no safetensors weights found (pickled checkpoints are refused)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def check_compatible(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Same keys, shapes and dtypes everywhere; the first mismatch is reported with its file and key."""
    ref, ref_name = states[0], names[0]
    for state, name in zip(states[1:], names[1:]):
        missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
        if missing or extra:
            what = f"lacks key '{missing[0]}'" if missing else f"has extra key '{extra[0]}'"
            raise AveragingError(f"{name} {what} (compared with {ref_name}): the checkpoints are of different architectures")
        for key, t in ref.items():
            if state[key].shape != t.shape:
                raise AveragingError(f"{name}: key '{key}' has shape {tuple(state[key].shape)}, "
                                     f"{ref_name} has {tuple(t.shape)}: the checkpoints are of different architectures")
            if state[key].dtype != t.dtype:
                raise AveragingError(f"{name}: key '{key}' is {state[key].dtype}, {ref_name} has {t.dtype}")


def average_states(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | np.ndarray,
                   names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``sum_i w_i * state_i`` per floating tensor (fp32 sums, cast back); other tensors must agree and are kept.

    Integer buffers (step counters, position ids) have no meaningful average; a difference there is an error.
    """
    names = list(names) if names is not None else [f"checkpoint {i}" for i in range(len(states))]
    if not states or len(weights) != len(states) or len(names) != len(states):
        raise AveragingError(f"{len(states)} checkpoints, {len(weights)} weights and {len(names)} names: they must match and be >= 1")
    w = [float(x) for x in weights]
    if abs(sum(w) - 1.0) > 1e-6 or min(w) < 0:
        raise AveragingError(f"averaging weights must be >= 0 and sum to 1 (methods.md section 5), got {w}")
    check_compatible(states, names)
    out: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            for state, name in zip(states[1:], names[1:]):
                if not torch.equal(state[key], first):
                    raise AveragingError(f"{name}: non-float key '{key}' differs from {names[0]} and cannot be averaged")
            out[key] = first.clone()
            continue
        out[key] = _weighted_sum([s[key] for s in states], w).to(first.dtype)
    return out


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum w_i x_i`` in fp32, as ``x_K + sum w_i (x_i - x_K)`` (weights sum to 1).

    WHY the offset form: the terms are the small differences between nearby checkpoints, so rounding
    error scales with those instead of with the weights themselves, and identical checkpoints come
    back bit for bit (a plain fp32 sum of 5 x 0.2 x 1.0 gives 1.0000001).
    """
    dtype = torch.promote_types(tensors[-1].dtype, torch.float32)  # fp32, or fp64 for an fp64 checkpoint
    base = tensors[-1].to(dtype)
    acc = base.clone()
    for wi, x in zip(weights[:-1], tensors[:-1]):
        acc.add_(x.to(dtype) - base, alpha=wi)
    return acc


def last_k(paths: Sequence[Path | str], k: int) -> list[Path]:
    """The newest ``k`` of ``paths`` (given oldest first), or an error saying how many there are."""
    if not 1 <= k <= len(paths):
        raise AveragingError(f"asked to average the last {k} checkpoints but {len(paths)} were given: {[str(p) for p in paths]}")
    return [Path(p) for p in paths[-k:]]


def average_checkpoints(paths: Sequence[Path | str], method: Method = "ema", k: int | None = None,
                        alpha: float = EMA_ALPHA) -> dict[str, torch.Tensor]:
    """Average the last ``k`` (default: all) of ``paths``, ordered oldest first, with the chosen weights."""
    chosen = last_k(paths, k or len(paths))
    check_configs(chosen)
    states = [load_state(p) for p in chosen]
    return average_states(states, averaging_weights(len(chosen), method, alpha), [str(p) for p in chosen])


def _network_config(path: Path) -> dict | None:
    file = path / "config.json" if path.is_dir() else None
    if file is None or not file.exists():
        return None
    return {k: v for k, v in json.loads(file.read_text()).items() if k not in _CONFIG_NOISE}


def check_configs(paths: Sequence[Path], ignore: frozenset[str] = frozenset(),
                  error: type[AveragingError] = AveragingError) -> None:
    """HF directories must describe the same network (same shapes can still hide e.g. another rope_theta).

    ``ignore``: config keys allowed to differ (merging tolerates other token ids); ``error``: the class raised.
    """
    configs = [(p, {k: v for k, v in c.items() if k not in ignore}) for p in paths if (c := _network_config(p)) is not None]
    for p, c in configs[1:]:
        ref_path, ref = configs[0]
        for key in sorted(set(ref) | set(c)):
            if ref.get(key) != c.get(key):
                raise error(f"{p / 'config.json'}: key '{key}' is {c.get(key)!r}, "
                            f"{ref_path / 'config.json'} has {ref.get(key)!r}: the models are of different architectures")


def write_averaged_model(paths: Sequence[Path | str], out: Path | str, method: Method = "ema", k: int | None = None,
                         alpha: float = EMA_ALPHA, template: Path | str | None = None, info: dict | None = None) -> PreTrainedModel:
    """Average checkpoints and write the result as an HF model directory (safetensors, config, tokenizer if any).

    The architecture, config and tokenizer come from ``template`` (default: the newest checkpoint, which
    must then be an HF directory). ``training_state/info.json`` records what was averaged, so the model
    directory says how it was made, as :func:`fluxforge.train.model.save_model` does for trained models.
    """
    chosen = last_k(paths, k or len(paths))
    template = Path(template) if template is not None else chosen[-1]
    if not (template / "config.json").exists():
        raise AveragingError(f"{template}: no config.json to build the averaged model from; pass an HF model directory as template")
    avg = average_checkpoints(chosen, method, len(chosen), alpha)
    weights = averaging_weights(len(chosen), method, alpha)
    record = {"averaged": [str(p) for p in chosen], "method": method, "alpha": alpha if method == "ema" else None,
              "weights": weights.round(12).tolist(), **(info or {})}
    return write_state_as_model(avg, template, out, record)


def write_state_as_model(state: Mapping[str, torch.Tensor], template: Path, out: Path | str, record: dict) -> PreTrainedModel:
    """``state`` in ``template``'s architecture, written atomically as an HF directory with the template's tokenizer
    and ``training_state/info.json`` = ``record`` (how the weights were made: averaged, merged)."""
    model = AutoModelForCausalLM.from_pretrained(template, use_safetensors=True)
    _load_strict(model, state, template)
    write_hf_dir(model, out, record, _tokenizer(template))
    return model


def load_averaged(model: PreTrainedModel, paths: Sequence[Path | str], method: Method = "ema", k: int | None = None,
                  alpha: float = EMA_ALPHA) -> list[float]:
    """Replace ``model``'s weights by the average of the last ``k`` of ``paths``; return the weights used.

    For a training stage that already holds the model in memory and saves it itself (the snapshots of
    :func:`save_snapshot` carry no config): every averaged tensor must match a model weight by name and shape.
    """
    chosen = last_k(paths, k or len(paths))
    _load_strict(model, average_checkpoints(chosen, method, len(chosen), alpha), Path(str(chosen[-1])))
    return averaging_weights(len(chosen), method, alpha).tolist()


def _load_strict(model: PreTrainedModel, state: Mapping[str, torch.Tensor], template: Path) -> None:
    """Every averaged tensor lands in the model, and every model weight comes from the average (tied ones aside)."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise AveragingError(f"averaged key '{unexpected[0]}' is not a weight of the model in {template}")
    tied = {k for k in own if k not in state and _is_tied(model, k)}
    missing = sorted(set(own) - set(state) - tied)
    if missing:
        raise AveragingError(f"the checkpoints lack key '{missing[0]}' of the model in {template}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise AveragingError(f"key '{key}': averaged shape {tuple(value.shape)}, the model in {template} has {tuple(own[key].shape)}")
    model.load_state_dict(dict(state), strict=False)


def _is_tied(model: PreTrainedModel, key: str) -> bool:
    """``lm_head.weight`` of a tied model is the embedding; save_pretrained omits it."""
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def _tokenizer(path: Path):  # noqa: ANN202 - a PreTrainedTokenizerFast or None
    if not (path / "tokenizer.json").exists():
        return None
    from fluxforge.data.tokenize import load_tokenizer

    return load_tokenizer(path)


# ----------------------------------------------------------------------------- snapshots during a run
def snapshot_path(directory: Path | str, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}.safetensors"


def save_snapshot(model: torch.nn.Module, directory: Path | str, step: int, keep: int = DEFAULT_K) -> Path:
    """Write the model's weights at ``step`` as safetensors and keep only the newest ``keep`` snapshots.

    Averaging needs the checkpoints ``T-(K-1)s .. T`` (methods.md section 5); the training loop keeps one
    resumable ``state.pt``, so snapshots for averaging are separate, small and pickle-free.
    """
    path = snapshot_path(directory, step)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tied = [k for k in state if _is_tied(model, k)] if isinstance(model, PreTrainedModel) else []
    for k in tied:
        del state[k]  # safetensors refuses shared storage; the tied copy is rebuilt on load
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)  # a crash never leaves a half-written snapshot that averaging would read
    for old in snapshots(directory)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def snapshots(directory: Path | str) -> list[Path]:
    """Snapshots in ``directory``, oldest first (by step)."""
    return sorted(Path(directory).glob("step-*.safetensors"))


def snapshot_hook(cfg: TrainConfig, directory: Path) -> Callable[[int, torch.nn.Module], None] | None:
    """A training step hook that snapshots every ``averaging.every`` steps over the last ``k * every`` (end included)."""
    avg = cfg.averaging
    if avg.method == "none":
        return None
    first = cfg.steps - (avg.k - 1) * avg.every

    def hook(step: int, model: torch.nn.Module) -> None:
        if step >= first and (cfg.steps - step) % avg.every == 0:
            save_snapshot(model, directory, step, keep=avg.k)

    return hook


def average_snapshots(cfg: TrainConfig, model: PreTrainedModel, directory: Path) -> dict | None:
    """Replace ``model``'s weights by the average of the run's last snapshots; None when averaging is off.

    Returns what lineage records: the method, the averaged steps and their weights.
    """
    if cfg.averaging.method == "none":
        return None
    paths = snapshots(directory)
    weights = load_averaged(model, paths, cfg.averaging.method, cfg.averaging.k, cfg.averaging.alpha)
    steps = [int(p.stem.split("-")[1]) for p in paths[-len(weights):]]
    log.info("averaging: %s of steps %s with weights %s", cfg.averaging.method, steps, [round(w, 3) for w in weights])
    return {"method": cfg.averaging.method, "steps": steps, "weights": weights}
