"""One image-branch training run (``mae@<objective>``, ``clip_pretrain``) through the shared loop.

The loop (fluxforge.train.loop.train) takes any ``Objective(model, batch)`` and any sampler that is a pure
function of the step; here a batch is a column of example indices (:class:`IndexSampler`) and the objective
looks the examples up, so resume after a crash, checkpoints, the LR schedule, clipping and the NaN stop are
the language runs' own. Outputs follow the DAG's conventions: ``models/<name>`` (an HF directory with
``training_state/info.json``), ``metrics/train/<name>.json`` and ``plots/train/<name>.csv``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fluxforge import paths as P
from fluxforge.config import TrainConfig
from fluxforge.errors import FluxForgeError
from fluxforge.io import write_json
from fluxforge.train.job import CURVE_FIELDS, Tracker, write_rows
from fluxforge.train.loop import Objective, Probe, StepHook, train
from fluxforge.train.model import count_params, write_hf_dir
from fluxforge.train.sampler import Batch

log = logging.getLogger(__name__)


class TrainingError(FluxForgeError):
    """A run that cannot go on (its loss became NaN or infinite); the message names the run and the step."""


def fingerprint(*arrays: np.ndarray | torch.Tensor) -> str:
    """A short digest of training data, so a checkpoint of other data is never resumed."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a).tobytes())
    return h.hexdigest()[:16]


class IndexSampler:
    """Batch ``k``: ``batch_size`` distinct example indices drawn from ``n`` with seed (seed, k), as a ``(B, 1)`` column."""

    def __init__(self, n: int, batch_size: int, tokens_per_example: int, seed: int, data: str) -> None:
        if n < 1:
            raise FluxForgeError("no training examples")
        self.n, self.batch_size, self.seq_len, self.seed, self.data = n, batch_size, tokens_per_example, seed, data

    def signature(self) -> str:
        return f"index:{self.n}|{self.data}|{self.batch_size}|{self.seed}"

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.choice(self.n, size=self.batch_size, replace=self.n < self.batch_size)
        return Batch(torch.from_numpy(idx.astype(np.int64)[:, None]))


@dataclass
class ImageJob:
    """What a run trains and how it is saved: ``module`` is optimised, ``saved`` (an HF model inside it) is written."""

    name: str  # the DAG model name: models/<name>
    stage: str
    module: torch.nn.Module
    saved: PreTrainedModel
    sampler: IndexSampler
    cfg: TrainConfig
    objective: Objective
    tokenizer: PreTrainedTokenizerBase | None = None


def run_image_job(job: ImageJob, tracker: Tracker | None, probe: Probe | None = None, probe_every: int = 0,
                  on_step: StepHook | None = None, info: Mapping | None = None,
                  finish: Callable[[torch.nn.Module], Mapping] | None = None) -> dict:
    """Train, save the model and write the metrics and curve; return the metrics (``metrics/train/<name>.json``).

    ``finish(module)`` measures the trained module before it is saved; what it returns is recorded in the model's
    ``training_state/info.json`` as well as in the metrics, so stages that read the model read it too.
    """
    flat = job.name.replace("/", "_")
    curve = P.PLOTS / "train" / f"{flat}.csv"
    ckpt_dir = P.CHECKPOINTS / job.name
    live: list[dict] = []
    probes: list[dict] = []

    def on_log(row: dict) -> None:
        live.append(row)
        if tracker:
            tracker.metrics({k: row[k] for k in ("loss", "lr", "tokens_per_s")}, step=row["step"])
        write_rows(live, curve, CURVE_FIELDS)

    # MAE's masks (HF draws them inside forward) and the bimodal drops come from torch's global RNG: seeded here, so
    # a stage run twice (dvc repro, a Prefect refresh) saves the same weights; a resume restores the saved state.
    torch.manual_seed(job.cfg.seed)
    try:
        history = train(job.module, job.sampler, job.cfg, job.objective, checkpoint_dir=ckpt_dir, desc=job.name,
                        probe=probe, probe_every=probe_every, probes=probes, on_step=on_step, on_log=on_log)
    except FloatingPointError as err:  # the loop names the step; the stage says so without a traceback
        raise TrainingError(f"{job.stage}: {err}") from None
    if finish is not None:
        info = {**(info or {}), **finish(job.module)}
    tokens = job.cfg.steps * job.cfg.batch_size * job.cfg.seq_len
    record = {"name": job.name, "stage": job.stage, "parent": "", "steps": job.cfg.steps, "tokens": tokens,
              "cumulative_tokens": tokens, "parameters": count_params(job.saved), "final_loss": history[-1]["loss"],
              **(info or {})}
    write_hf_dir(job.saved, P.model_dir(job.name), record, job.tokenizer)
    seconds = history[-1]["elapsed"]
    metrics = {"steps": job.cfg.steps, "tokens": tokens, "parameters": record["parameters"],
               "final_loss": record["final_loss"], "train_seconds": seconds, "examples_per_s":
               job.cfg.steps * job.cfg.batch_size / seconds if seconds else 0.0,
               "mlflow_run_id": getattr(tracker, "run_id", ""), **(info or {})}
    if probes:
        metrics["probes"] = probes
    write_json(P.train_metrics_file(job.name), metrics)
    write_rows(history, curve, CURVE_FIELDS)
    if tracker:
        tracker.metrics({k: v for k, v in metrics.items() if k not in ("mlflow_run_id", "probes")})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("%s: %d steps, final loss %.4f, %.1f s", job.name, job.cfg.steps, metrics["final_loss"], seconds)
    return metrics
