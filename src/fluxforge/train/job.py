"""One training job of the DAG (pretrain, a continual task, distillation): data, phases, averaging, outputs.

A stage recipe builds the model and hands it here with its training section; the job builds the sampler
(mixture, curriculum or MeCo phases), trains (the small model then the grown one with G_stack), replaces the
weights by the average of the last snapshots when asked, and writes the model directory, the metrics file
and the DVC plot CSVs. Logging goes through a :class:`Tracker` (the stage's MLflow run satisfies it), so
training knows nothing of the tracking backend.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from fluxforge import paths as P
from fluxforge.config import AveragingSettings, Params, TrainConfig
from fluxforge.data.tokenize import load_pretrained_tokenizer, load_streams
from fluxforge.errors import DataError
from fluxforge.io import atomic_file, write_json
from fluxforge.train.engine import is_main_process, load_trainer_state
from fluxforge.train.loop import LogHook, Objective, Probe, lm_objective, train
from fluxforge.train.model import TRAINER_STATE, count_params, save_model
from fluxforge.train.sampler import MixtureSampler, OffsetSampler, PhasedSampler, Sampler, mixture_weights

log = logging.getLogger(__name__)
CURVE_FIELDS = ["step", "loss", "lr", "tokens", "tokens_per_s", "mfu", "resumed_from"]


class Tracker(Protocol):
    """Where a job reports live and final numbers (:class:`fluxforge.track.runs.StageRun` is one)."""

    def metrics(self, values: Mapping[str, Any], step: int | None = None) -> None: ...

    def history(self, rows: list[dict], keys: tuple[str, ...] = ...) -> None: ...


@dataclass
class JobResult:
    model: torch.nn.Module
    info: dict  # what the model directory's training_state/info.json holds (deterministic lineage)
    metrics: dict  # metrics/train/<name>.json (timings and the run id included)


def sampler_for(params: Params, cfg: TrainConfig, tok) -> tuple[Sampler, dict[str, float]]:  # noqa: ANN001
    """The data of a run: a weighted mixture of slices, or a quality curriculum, or MeCo's two phases."""
    new = params.expand(cfg.slices)
    replay = [s for s in params.expand(cfg.replay.slices) if s not in new]
    streams = load_streams(P.TOKENS, new + replay)
    weights = mixture_weights(new, replay, cfg.replay.ratio, {k: len(v) for k, v in streams.items()})
    if cfg.curriculum.enabled:
        from fluxforge.train.curriculum import curriculum_from_streams

        sampler = curriculum_from_streams({k: streams[k] for k in new}, tok.batch_decode, tok.eos_token_id,
                                          cfg.seq_len, cfg.batch_size, cfg.steps, cfg.seed)
        return sampler, weights
    plain = MixtureSampler(streams, weights, cfg.seq_len, cfg.batch_size, cfg.seed)
    if not cfg.meco.enabled:
        return plain, weights
    from fluxforge.train.meco import cooldown_start, load_conditioned

    cond, masks = load_conditioned(P.TOKENS, new + replay, tok)
    first = MixtureSampler(cond, weights, cfg.seq_len, cfg.batch_size, cfg.seed, masks=masks)  # weights by plain sizes
    return PhasedSampler(first, plain, cooldown_start(cfg.steps, cfg.meco.cooldown_fraction)), weights


def parent_state(cfg: TrainConfig, parent: str) -> dict | None:
    """The parent's optimizer state when ``init_mode`` asks for more than its weights."""
    if not parent or cfg.init_mode == "weights":
        return None
    file = P.model_dir(parent) / "training_state" / TRAINER_STATE
    if not file.exists():
        raise DataError(f"init_mode {cfg.init_mode!r}: {file} does not exist (the parent was trained by DeepSpeed, or "
                        "before models kept their optimizer state); use init_mode: weights or retrain the parent")
    return load_trainer_state(file)


def train_phases(model: torch.nn.Module, sampler: Sampler, cfg: TrainConfig, objective: Objective, ckpt_dir: Path,
                 name: str, **kw: Any) -> tuple[torch.nn.Module, list[dict]]:
    """``train`` once, or, with G_stack growth, the small model then the grown one; returns the final model.

    Averaging snapshots (``ckpt_dir/snapshots``) are taken over the end of the last phase.
    """
    from fluxforge.train.averaging import snapshot_hook

    if cfg.growth.factor == 1:
        return model, train(model, sampler, cfg, objective, checkpoint_dir=ckpt_dir, desc=name,
                            on_step=snapshot_hook(cfg, ckpt_dir / "snapshots"), **kw)
    from fluxforge.train.growth import grow, growth_split

    first = growth_split(model, cfg)
    small_cfg = cfg.model_copy(update={"steps": first, "warmup_steps": min(cfg.warmup_steps, first - 1),
                                       "averaging": AveragingSettings()})
    probes = kw.pop("probes", None)
    on_log: LogHook | None = kw.pop("on_log", None)
    hist = train(model, sampler, small_cfg, objective, checkpoint_dir=ckpt_dir / "small", desc=f"{name} (small)",
                 **{k: v for k, v in kw.items() if k not in ("init_state", "export")})
    grown = grow(model, cfg.growth.factor)
    rest = cfg.steps - first
    grown_cfg = cfg.model_copy(update={"steps": rest, "warmup_steps": min(cfg.warmup_steps, rest - 1)})
    tokens, elapsed = first * cfg.batch_size * cfg.seq_len, hist[-1]["elapsed"]

    def shifted(r: dict) -> dict:  # the grown phase's rows on the whole run's axis
        return {**r, "step": r["step"] + first, "tokens": r["tokens"] + tokens, "elapsed": r["elapsed"] + elapsed}

    later = train(grown, OffsetSampler(sampler, first), grown_cfg, objective, checkpoint_dir=ckpt_dir / "grown",
                  desc=f"{name} (grown x{cfg.growth.factor})", probes=probes,
                  on_step=snapshot_hook(grown_cfg, ckpt_dir / "snapshots"),
                  on_log=(lambda r: on_log(shifted(r))) if on_log else None, **kw)
    return grown, hist + [shifted(r) for r in later]


def write_rows(rows: list[dict], path: Path, fields: list[str] | None = None) -> None:
    """A DVC plot CSV, written atomically (``fields`` fixes the columns; other keys are dropped)."""
    with atomic_file(path) as fh:
        w = csv.DictWriter(fh, fieldnames=fields or list(dict.fromkeys(k for r in rows for k in r)), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def run_job(params: Params, stage: str, name: str, cfg: TrainConfig, model: torch.nn.Module, parent: str,
            tracker: Tracker | None, objective: Objective | None = None, probe: Probe | None = None,
            extra_info: dict | None = None) -> JobResult | None:
    """Train ``model`` as DAG model ``name`` and write its outputs; None on a non-main DeepSpeed rank.

    Outputs: ``models/<name>`` (weights, tokenizer, ``training_state/``), ``metrics/train/<name>.json``,
    ``plots/train/<name>.csv`` (rewritten at every log row, so the DVC plot follows the run) and
    ``plots/capability/<name>.csv`` (the probe's curve; a header-only file without probes).
    The metrics' ``resumed_from`` is the step at which this process picked up the last training phase from a
    checkpoint (0: it trained from the start); the curve's column says the same per row.
    """
    tok = load_pretrained_tokenizer(P.TOKENS)
    objective = objective or lm_objective(cfg.doc_mask, tok.eos_token_id)
    sampler, weights = sampler_for(params, cfg, tok)
    ckpt_dir = P.CHECKPOINTS / name
    init_state = parent_state(cfg, parent)
    if not is_main_process():  # another rank of a DeepSpeed job: train its share; rank 0 writes and logs
        train_phases(model, sampler, cfg, objective, ckpt_dir, name, init_state=init_state)
        return None
    curve = P.PLOTS / "train" / f"{name.replace('/', '_')}.csv"
    live: list[dict] = []
    probes: list[dict] = []

    def on_log(row: dict) -> None:  # MLflow and the DVC plot follow the run as it trains
        live.append(row)
        if tracker:
            tracker.metrics({k: row[k] for k in ("loss", "lr", "tokens_per_s", "mfu")}, step=row["step"])
        write_rows(live, curve, CURVE_FIELDS)

    export: dict = {}
    model, history = train_phases(model, sampler, cfg, objective, ckpt_dir, name, probe=probe,
                                  probe_every=cfg.probe_every if probe else 0, probes=probes, on_log=on_log,
                                  export=export, init_state=init_state)
    from fluxforge.train.averaging import average_snapshots

    averaged = average_snapshots(cfg, model, ckpt_dir / "snapshots")
    parent_info = P.model_info(P.model_dir(parent)) if parent else {}
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    # info.json travels inside the model directory (a DVC output), so it holds only what is
    # deterministic for the same inputs; run ids and timings go to the metrics file instead.
    info = {
        "name": name, "stage": stage, "parent": parent, "mixture": weights, "steps": cfg.steps, "tokens": tokens,
        "cumulative_tokens": parent_info.get("cumulative_tokens", 0) + tokens if parent and stage != "distill" else tokens,
        "parameters": count_params(model), "final_loss": history[-1]["loss"], "init_mode": cfg.init_mode if parent else "",
        "schedule": cfg.schedule, **({"averaged": averaged} if averaged else {}), **(extra_info or {}),
    }
    save_model(model, tok, P.model_dir(name), info, trainer_state=export)
    seconds = history[-1]["elapsed"]  # includes the time before a crash when the run was resumed
    metrics = {k: info[k] for k in ("steps", "tokens", "cumulative_tokens", "parameters", "final_loss")}
    metrics.update(train_seconds=seconds, tokens_per_s=tokens / seconds if seconds else 0.0,
                   mlflow_run_id=getattr(tracker, "run_id", ""), mfu=history[-1].get("mfu", 0.0),
                   mfu_peak_flops=history[-1].get("peak_flops", 0.0), mfu_peak_source=history[-1].get("peak_source", ""),
                   resumed_from=history[-1]["resumed_from"])
    write_json(P.train_metrics_file(name), metrics)
    write_rows(history, curve, CURVE_FIELDS)
    write_rows(probes or [{"step": 0}], P.PLOTS / "capability" / f"{name.replace('/', '_')}.csv")  # a DVC output either way
    if tracker:
        logged = {r["step"] for r in live}
        tracker.history([r for r in history if r["step"] not in logged])  # rows from before a crash, or a growth phase
        tracker.metrics({k: v for k, v in metrics.items() if k not in ("mlflow_run_id", "mfu_peak_source")})
        if probes:
            keys = [k for k in probes[0] if k != "step"]
            tracker.history([{"step": r["step"], **{f"probe_{k}": r[k] for k in keys}} for r in probes],
                            keys=tuple(f"probe_{k}" for k in keys))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("%s: %d steps, final loss %.3f, %.0f tokens/s", name, cfg.steps, metrics["final_loss"], metrics["tokens_per_s"])
    return JobResult(model, info, metrics)
