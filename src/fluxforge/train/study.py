"""Technique studies: does each technique help on this corpus? Variants of ``pretrain`` against one baseline.

The baseline is plain pretraining (shuffled windows, cosine to ``min_lr_ratio``, from scratch) for
``study.steps`` steps. Each study changes one thing and is measured on the held-out documents and the
questions of the pretraining slices:

- ``meco``: URL-conditioned training with a plain cooldown, at equal tokens (Gao et al. 2025);
- ``curriculum``: quality-ascending documents, a moderate final LR and checkpoint averaging, at equal
  tokens (Luo et al. 2025: "curriculum + averaging" against "shuffle + cosine");
- ``growth``: G_stack (Du et al. 2024) at equal training compute: the small model (``num_layers / g``)
  spends ``growth_compute_fraction`` of the baseline's FLOPs, the grown model the rest.

Numbers are reported whichever way they fall. Each finished variant is kept under
``checkpoints/study/`` with the fingerprint of its config, so a crash re-runs only the unfinished ones.
The measurement is the caller's (a function of the trained model and the slices it trained on), so that
training knows nothing of evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from fluxforge import paths as P
from fluxforge.config import AveragingSettings, CurriculumSettings, GrowthSettings, MeCoSettings, Params, TrainConfig
from fluxforge.train.averaging import average_snapshots
from fluxforge.train.flops import flops_per_token
from fluxforge.train.job import sampler_for, train_phases
from fluxforge.train.loop import lm_objective
from fluxforge.train.model import count_params, new_model

log = logging.getLogger(__name__)
Measure = Callable[[torch.nn.Module, list[str]], dict]  # (model, slices it trained on) -> held-out numbers


def baseline_config(params: Params) -> TrainConfig:
    """``pretrain`` with every technique off, no probes, ``study.steps`` steps."""
    cfg, steps = params.pretrain, params.study.steps
    return cfg.model_copy(update={
        "steps": steps, "warmup_steps": min(cfg.warmup_steps, max(steps // 10, 1)), "probe_every": 0,
        "meco": MeCoSettings(), "curriculum": CurriculumSettings(), "averaging": AveragingSettings(),
        "growth": GrowthSettings(), "replay": cfg.replay.model_copy(update={"ratio": 0.0}), "schedule": "cosine",
    })


def _layers_model(params: Params, layers: int) -> torch.nn.Module:
    return new_model(params.model.model_copy(update={"num_layers": layers}), P.TOKENS)


def growth_steps(params: Params, base: TrainConfig) -> tuple[int, int]:
    """(small-model steps, grown-model steps) that together cost the baseline's FLOPs.

    FLOPs per token (6N + attention, :func:`fluxforge.train.flops.flops_per_token`) of the small and the
    full model; the small phase spends ``growth_compute_fraction`` of the baseline's compute.
    """
    study, m = params.study, params.model
    if m.num_layers % study.growth_factor:
        raise ValueError(f"study.growth_factor {study.growth_factor} must divide model.num_layers {m.num_layers}")
    full, small = _layers_model(params, m.num_layers), _layers_model(params, m.num_layers // study.growth_factor)
    f_full, f_small = (flops_per_token(x.config, base.seq_len) for x in (full, small))
    first = round(study.growth_compute_fraction * base.steps * f_full / f_small)
    rest = base.steps - round(study.growth_compute_fraction * base.steps)
    return first, rest


def variants(params: Params) -> dict[str, tuple[TrainConfig, int]]:
    """Each variant's training config and the number of layers its model starts with."""
    base, study, layers = baseline_config(params), params.study, params.model.num_layers
    out = {"baseline": (base, layers)}
    if "meco" in study.studies:
        out["meco"] = (base.model_copy(update={"meco": study.meco}), layers)
    if "curriculum" in study.studies:
        out["curriculum"] = (base.model_copy(update={"curriculum": CurriculumSettings(enabled=True),
                                                     "min_lr_ratio": study.curriculum_min_lr_ratio,
                                                     "averaging": study.averaging}), layers)
    if "growth" in study.studies:
        first, rest = growth_steps(params, base)
        steps = first + rest
        grown = base.model_copy(update={"steps": steps, "growth": GrowthSettings(factor=study.growth_factor,
                                                                                 fraction=first / steps)})
        out["growth"] = (grown, layers // study.growth_factor)
    return out


def _fingerprint(params: Params, cfg: TrainConfig, layers: int) -> str:
    text = f"{cfg.model_dump_json()}|{params.model.model_dump_json()}|{layers}|{(P.TOKENS / 'index.json').read_text()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def phase_flops(model: torch.nn.Module, cfg: TrainConfig, params: Params) -> list[float]:
    """Training FLOPs of the run: per-token FLOPs of each phase's model times the tokens it trained on."""
    tokens_per_step = cfg.batch_size * cfg.seq_len
    f_final = flops_per_token(model.config, cfg.seq_len)
    if cfg.growth.factor == 1:
        return [f_final * cfg.steps * tokens_per_step]
    first = round(cfg.growth.fraction * cfg.steps)
    small = _layers_model(params, params.model.num_layers // cfg.growth.factor)
    return [flops_per_token(small.config, cfg.seq_len) * first * tokens_per_step,
            f_final * (cfg.steps - first) * tokens_per_step]


def run_variant(params: Params, name: str, cfg: TrainConfig, layers: int, tok, measure: Measure,  # noqa: ANN001
                root: Path = P.CHECKPOINTS / "study") -> dict:
    """Train one variant from scratch and measure it; a finished run with the same fingerprint is reused."""
    done_file = root / f"{name}.json"
    key = _fingerprint(params, cfg, layers)
    if done_file.exists() and json.loads(done_file.read_text()).get("fingerprint") == key:
        log.info("study %s: reusing the finished run in %s", name, done_file)
        return json.loads(done_file.read_text())["result"]
    model = _layers_model(params, layers)
    sampler, _ = sampler_for(params, cfg, tok)
    ckpt = root / name
    model, history = train_phases(model, sampler, cfg, lm_objective(cfg.doc_mask, tok.eos_token_id), ckpt, f"study/{name}")
    averaged = average_snapshots(cfg, model, ckpt / "snapshots")
    result = {**measure(model, params.expand(cfg.slices)), "steps": cfg.steps,
              "tokens": cfg.steps * cfg.batch_size * cfg.seq_len, "train_flops": sum(phase_flops(model, cfg, params)),
              "parameters": count_params(model), "final_train_loss": history[-1]["loss"],
              "train_seconds": history[-1]["elapsed"], **({"averaged_steps": averaged["steps"]} if averaged else {}),
              "curve": [{"tokens": r["tokens"], "loss": r["loss"]} for r in history]}
    done_file.parent.mkdir(parents=True, exist_ok=True)
    done_file.write_text(json.dumps({"fingerprint": key, "result": result}))
    shutil.rmtree(ckpt, ignore_errors=True)
    return result


def compare(results: dict[str, dict], steps: int) -> dict:
    """metrics/study.json: each variant's numbers (curves left out) and its changes against the baseline."""
    base = results["baseline"]
    vs = {name: {"heldout_loss_change": r["heldout_loss"] - base["heldout_loss"], "acc_change": r["acc"] - base["acc"],
                 "compute_ratio": r["train_flops"] / base["train_flops"], "tokens_ratio": r["tokens"] / base["tokens"]}
          for name, r in results.items() if name != "baseline"}
    return {"variants": {k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in results.items()},
            "vs_baseline": vs, "steps": steps}
