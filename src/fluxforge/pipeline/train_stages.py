"""The model half of the DAG: pretrain -> continual tasks -> distill."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import torch

from fluxforge import paths as P
from fluxforge.config import ModelConfig, Params, TrainConfig
from fluxforge.data.tokenize import load_streams, load_tokenizer
from fluxforge.errors import DataError
from fluxforge.io import atomic_file, read_jsonl, write_json
from fluxforge.track.runs import stage_run
from fluxforge.train.engine import is_main_process
from fluxforge.train.loop import Objective, Probe, causal_lm_loss, train
from fluxforge.train.model import build_model, count_params, load_info, load_model, save_model
from fluxforge.train.sampler import MixtureSampler, mixture_weights

log = logging.getLogger(__name__)


def _sampler(params: Params, cfg: TrainConfig) -> tuple[MixtureSampler, dict[str, float]]:
    new = params.expand(cfg.slices)
    replay = [s for s in params.expand(cfg.replay.slices) if s not in new]
    streams = load_streams(P.TOKENS, new + replay)
    weights = mixture_weights(new, replay, cfg.replay.ratio, {k: len(v) for k, v in streams.items()})
    return MixtureSampler(streams, weights, cfg.seq_len, cfg.batch_size, cfg.seed), weights


def _write_curve(history: list[dict], path: Path) -> None:
    with atomic_file(path) as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "tokens", "tokens_per_s"], extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def _probe(params: Params, cfg: TrainConfig, tok) -> Probe | None:  # noqa: ANN001
    if not cfg.probe_every:
        return None
    from fluxforge.eval.probe import capability_probe

    return capability_probe(tok, read_jsonl(P.WORLD / "eval" / "mcq.jsonl"), read_jsonl(P.WORLD / "eval" / "heldout.jsonl"),
                            cfg.probe_questions, cfg.seq_len)


def _write_rows(rows: list[dict], path: Path) -> None:
    with atomic_file(path) as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def _run(params: Params, stage: str, name: str, cfg: TrainConfig, model: torch.nn.Module, parent: str,
         objective: Objective = causal_lm_loss, extra_info: dict | None = None) -> None:
    tok = load_tokenizer(P.TOKENS)
    sampler, weights = _sampler(params, cfg)
    probes: list[dict] = []
    ckpt_dir = P.CHECKPOINTS / name
    parent_info = load_info(P.model_dir(parent)) if parent else {}
    if not is_main_process():  # another rank of a DeepSpeed job: train its share; rank 0 writes and logs
        train(model, sampler, cfg, objective, checkpoint_dir=ckpt_dir, desc=name)
        return
    with stage_run(stage, params, cfg.model_dump(), inputs={"tokens": P.TOKENS, **({"parent": P.model_dir(parent)} if parent else {})}) as run:
        history = train(model, sampler, cfg, objective, checkpoint_dir=ckpt_dir, desc=name,
                        probe=_probe(params, cfg, tok), probe_every=cfg.probe_every, probes=probes)
        seconds = history[-1]["elapsed"]  # includes the time before a crash when the run was resumed
        tokens = cfg.steps * cfg.batch_size * cfg.seq_len
        # info.json travels inside the model directory (a DVC output), so it holds only what is
        # deterministic for the same inputs; run ids and timings go to the metrics file instead.
        info = {
            "name": name, "stage": stage, "parent": parent, "mixture": weights, "steps": cfg.steps, "tokens": tokens,
            "cumulative_tokens": parent_info.get("cumulative_tokens", 0) + tokens if parent and stage != "distill" else tokens,
            "parameters": count_params(model), "final_loss": history[-1]["loss"], **(extra_info or {}),
        }
        save_model(model, tok, P.model_dir(name), info)
        metrics = {k: info[k] for k in ("steps", "tokens", "cumulative_tokens", "parameters", "final_loss")}
        metrics.update(train_seconds=seconds, tokens_per_s=tokens / seconds if seconds else 0.0, mlflow_run_id=run.run_id)
        write_json(P.train_metrics_file(name), metrics)
        _write_curve(history, P.PLOTS / "train" / f"{name.replace('/', '_')}.csv")
        run.metrics(metrics)
        run.history(history)
        _write_rows(probes or [{"step": 0}], P.PLOTS / "capability" / f"{name.replace('/', '_')}.csv")  # a DVC output either way
        if probes:
            keys = [k for k in probes[0] if k != "step"]
            run.history([{"step": r["step"], **{f"probe_{k}": r[k] for k in keys}} for r in probes],
                        keys=tuple(f"probe_{k}" for k in keys))
        if parent:
            run.tags({"fluxforge.parent": parent, "fluxforge.parent_run_id": P.train_metrics(parent).get("mlflow_run_id", "")})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("%s: %d steps, final loss %.3f, %.0f tokens/s", name, cfg.steps, metrics["final_loss"], metrics["tokens_per_s"])


def new_model(params: Params, cfg: ModelConfig) -> torch.nn.Module:
    index = json.loads((P.TOKENS / "index.json").read_text())
    return build_model(cfg, index["vocab_size"], index["eos_id"], index["pad_id"])


def pretrain(params: Params) -> None:
    _run(params, "pretrain", "pretrain", params.pretrain, new_model(params, params.model), parent="")


def continual(params: Params, task: str) -> None:
    if task not in params.continual.tasks:
        raise DataError(f"continual task '{task}' is not in params continual.tasks ({list(params.continual.tasks)})")
    cfg = params.continual.tasks[task]
    model, _ = load_model(P.model_dir(cfg.init))
    _run(params, f"continual@{task}", f"continual/{task}", cfg, model, parent=cfg.init, extra_info={"kind": cfg.kind})


def teacher_dir(spec: str) -> Path:
    """A teacher's HF directory: a registry URI (downloaded once), else a model of this DAG."""
    if spec.startswith("models:/"):
        from fluxforge.track.resolve import local_model_path

        return local_model_path(spec)
    return P.model_dir(spec)


def distill(params: Params) -> None:
    from fluxforge.train.distill import TargetCache, distillation_objective, keep_layers

    cfg = params.distill
    names = params.teacher_names()
    versions = {}
    if any(n.startswith("models:/") for n in names):
        from fluxforge.track.resolve import version_of

        versions = {n: "/".join(version_of(n)) for n in names if n.startswith("models:/")}  # pin what the alias meant now
        log.warning("distill: registry teachers are not DVC dependencies; `dvc repro` reruns distill only "
                    "when something else changes (use `dvc repro -f distill` after a new champion)")
    dirs = [teacher_dir(n) for n in names]
    teachers = [load_model(d)[0] for d in dirs]
    student = keep_layers(teachers[0], cfg.student_layers) if cfg.student_layers else new_model(params, cfg.student)
    cache = TargetCache(P.CHECKPOINTS / "teacher_targets", dirs, cfg.temperature, cfg.ensemble, cfg.top_k) if cfg.teacher_cache else None
    objective = distillation_objective(teachers, cfg.temperature, cfg.alpha, cfg.ensemble, cfg.top_k, cache)
    local = [n for n in names if not n.startswith("models:/")]
    _run(params, "distill", "student", cfg, student, parent=local[0] if local else "", objective=objective,
         extra_info={"teacher": ",".join(names), "teachers": names, "teacher_versions": versions, "ensemble": cfg.ensemble if len(names) > 1 else "",
                     "teacher_parameters": max(count_params(t) for t in teachers),
                     "student_init": f"layers {cfg.student_layers} of {names[0]}" if cfg.student_layers else "config"})
    if cache:
        log.info("distill: teacher targets %d from cache, %d computed (%s)", cache.hits, cache.misses, cache.dir)
