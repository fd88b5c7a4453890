"""The model half of the DAG: pretrain -> continual tasks -> distill."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import torch

from fluxforge import paths as P
from fluxforge.config import AveragingSettings, ModelConfig, Params, TrainConfig
from fluxforge.data.tokenize import load_pretrained_tokenizer, load_streams
from fluxforge.errors import DataError
from fluxforge.io import atomic_file, read_jsonl, write_json
from fluxforge.track.runs import stage_run
from fluxforge.train.engine import is_main_process, load_trainer_state
from fluxforge.train.loop import Objective, Probe, lm_objective, train
from fluxforge.train.model import TRAINER_STATE, count_params, init_model, load_model, save_model
from fluxforge.train.sampler import MixtureSampler, OffsetSampler, PhasedSampler, Sampler, mixture_weights

log = logging.getLogger(__name__)


def _sampler(params: Params, cfg: TrainConfig, tok) -> tuple[Sampler, dict[str, float]]:  # noqa: ANN001
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


def _write_curve(history: list[dict], path: Path) -> None:
    with atomic_file(path) as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "tokens", "tokens_per_s", "mfu"], extrasaction="ignore")
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


def _init_state(cfg: TrainConfig, parent: str) -> dict | None:
    """The parent's optimizer state when ``init_mode`` asks for more than its weights."""
    if not parent or cfg.init_mode == "weights":
        return None
    file = P.model_dir(parent) / "training_state" / TRAINER_STATE
    if not file.exists():
        raise DataError(f"init_mode {cfg.init_mode!r}: {file} does not exist (the parent was trained by DeepSpeed, or "
                        "before models kept their optimizer state); use init_mode: weights or retrain the parent")
    return load_trainer_state(file)


def _train(model: torch.nn.Module, sampler: Sampler, cfg: TrainConfig, objective: Objective, ckpt_dir: Path,
           name: str, **kw) -> tuple[torch.nn.Module, list[dict]]:
    """``train`` once, or, with G_stack growth, the small model then the grown one; returns the final model.

    Averaging snapshots (``ckpt_dir/snapshots``) are taken over the end of the last phase.
    """
    if cfg.growth.factor == 1:
        return model, train(model, sampler, cfg, objective, checkpoint_dir=ckpt_dir, desc=name,
                            on_step=_averaging_hook(cfg, ckpt_dir / "snapshots"), **kw)
    from fluxforge.train.growth import grow

    first = growth_split(model, cfg)
    small_cfg = cfg.model_copy(update={"steps": first, "warmup_steps": min(cfg.warmup_steps, first - 1),
                                       "averaging": AveragingSettings()})
    probes = kw.pop("probes", None)
    hist = train(model, sampler, small_cfg, objective, checkpoint_dir=ckpt_dir / "small", desc=f"{name} (small)",
                 **{k: v for k, v in kw.items() if k not in ("init_state", "export")})
    grown = grow(model, cfg.growth.factor)
    rest = cfg.steps - first
    grown_cfg = cfg.model_copy(update={"steps": rest, "warmup_steps": min(cfg.warmup_steps, rest - 1)})
    tokens, elapsed = first * cfg.batch_size * cfg.seq_len, hist[-1]["elapsed"]

    def shifted(r: dict) -> dict:  # the grown phase's rows on the whole run's axis
        return {**r, "step": r["step"] + first, "tokens": r["tokens"] + tokens, "elapsed": r["elapsed"] + elapsed}

    on_log = kw.pop("on_log", None)
    later = train(grown, OffsetSampler(sampler, first), grown_cfg, objective, checkpoint_dir=ckpt_dir / "grown",
                  desc=f"{name} (grown x{cfg.growth.factor})", probes=probes,
                  on_step=_averaging_hook(grown_cfg, ckpt_dir / "snapshots"),
                  on_log=(lambda r: on_log(shifted(r))) if on_log else None, **kw)
    return grown, hist + [shifted(r) for r in later]


def growth_split(model: torch.nn.Module, cfg: TrainConfig) -> int:
    """Steps the small model trains before stacking: ``growth.fraction`` of the run, or the G_stack formula."""
    from fluxforge.train.growth import growth_step

    if cfg.growth.fraction is not None:
        first = round(cfg.growth.fraction * cfg.steps)
    else:
        layer = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
        target = count_params(model) + (cfg.growth.factor - 1) * layer
        first, capped = growth_step(target, cfg.steps * cfg.batch_size * cfg.seq_len, cfg.batch_size * cfg.seq_len)
        if capped:
            log.warning("growth: the G_stack timing formula asks for more tokens than half this run; stacking at half")
    if not 2 <= first <= cfg.steps - 2:
        raise DataError(f"growth: the small model would train {first} of {cfg.steps} steps; each phase needs >= 2 steps")
    return first


def _averaging_hook(cfg: TrainConfig, directory: Path):  # noqa: ANN202 - a StepHook or None
    """Snapshots for checkpoint averaging: every ``every`` steps over the last ``k * every`` (the end included)."""
    avg = cfg.averaging
    if avg.method == "none":
        return None
    from fluxforge.train.averaging import save_snapshot

    first = cfg.steps - (avg.k - 1) * avg.every

    def hook(step: int, model: torch.nn.Module) -> None:
        if step >= first and (cfg.steps - step) % avg.every == 0:
            save_snapshot(model, directory, step, keep=avg.k)

    return hook


def _run(params: Params, stage: str, name: str, cfg: TrainConfig, model: torch.nn.Module, parent: str,
         objective: Objective | None = None, extra_info: dict | None = None) -> None:
    tok = load_pretrained_tokenizer(P.TOKENS)
    objective = objective or lm_objective(cfg.doc_mask, tok.eos_token_id)
    sampler, weights = _sampler(params, cfg, tok)
    probes: list[dict] = []
    ckpt_dir = P.CHECKPOINTS / name
    parent_info = P.model_info(P.model_dir(parent)) if parent else {}
    init_state = _init_state(cfg, parent)
    snapshots_dir = ckpt_dir / "snapshots"
    common = {"init_state": init_state}
    if not is_main_process():  # another rank of a DeepSpeed job: train its share; rank 0 writes and logs
        _train(model, sampler, cfg, objective, ckpt_dir, name, **common)
        return
    curve = P.PLOTS / "train" / f"{name.replace('/', '_')}.csv"
    with stage_run(stage, params, cfg.model_dump(), inputs={"tokens": P.TOKENS, **({"parent": P.model_dir(parent)} if parent else {})}) as run:
        live: list[dict] = []

        def on_log(row: dict) -> None:  # MLflow and the DVC plot follow the run as it trains
            live.append(row)
            run.metrics({k: row[k] for k in ("loss", "lr", "tokens_per_s", "mfu")}, step=row["step"])
            _write_curve(live, curve)

        export: dict = {}
        model, history = _train(model, sampler, cfg, objective, ckpt_dir, name, probe=_probe(params, cfg, tok),
                                probe_every=cfg.probe_every, probes=probes, on_log=on_log, export=export, **common)
        logged = {r["step"] for r in live}
        run.history([r for r in history if r["step"] not in logged])  # rows from before a crash, or a growth phase
        averaged = _average(cfg, model, snapshots_dir)
        seconds = history[-1]["elapsed"]  # includes the time before a crash when the run was resumed
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
        metrics = {k: info[k] for k in ("steps", "tokens", "cumulative_tokens", "parameters", "final_loss")}
        metrics.update(train_seconds=seconds, tokens_per_s=tokens / seconds if seconds else 0.0, mlflow_run_id=run.run_id,
                       mfu=history[-1].get("mfu", 0.0))
        write_json(P.train_metrics_file(name), metrics)
        _write_curve(history, curve)
        run.metrics({k: v for k, v in metrics.items() if k != "mlflow_run_id"})
        _write_rows(probes or [{"step": 0}], P.PLOTS / "capability" / f"{name.replace('/', '_')}.csv")  # a DVC output either way
        if probes:
            keys = [k for k in probes[0] if k != "step"]
            run.history([{"step": r["step"], **{f"probe_{k}": r[k] for k in keys}} for r in probes],
                        keys=tuple(f"probe_{k}" for k in keys))
        if parent:
            run.tags({"fluxforge.parent": parent, "fluxforge.parent_run_id": P.train_metrics(parent).get("mlflow_run_id", "")})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info("%s: %d steps, final loss %.3f, %.0f tokens/s", name, cfg.steps, metrics["final_loss"], metrics["tokens_per_s"])


def _average(cfg: TrainConfig, model: torch.nn.Module, directory: Path) -> dict | None:
    """Replace the final weights by the average of the run's last snapshots (the stage's output)."""
    if cfg.averaging.method == "none":
        return None
    from fluxforge.train.averaging import load_averaged, snapshots

    paths = snapshots(directory)
    weights = load_averaged(model, paths, cfg.averaging.method, cfg.averaging.k, cfg.averaging.alpha)
    steps = [int(p.stem.split("-")[1]) for p in paths[-len(weights):]]
    log.info("averaging: %s of steps %s with weights %s", cfg.averaging.method, steps, [round(w, 3) for w in weights])
    return {"method": cfg.averaging.method, "steps": steps, "weights": weights}


def new_model(params: Params, cfg: ModelConfig) -> torch.nn.Module:
    """The model from its config, or a base checkpoint (``model.from_pretrained``: a local path or a cached hub id)."""
    return init_model(cfg, json.loads((P.TOKENS / "index.json").read_text()))[0]


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
