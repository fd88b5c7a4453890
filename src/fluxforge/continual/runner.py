"""A continual stream of tasks (FoMo-in-Flux style) with replay, strategies, schedules and merging.

Each task trains on its new slices for a fixed token budget (the same for every method), mixed with replay of
the base model's pretraining data and, when configured, of a capped buffer of earlier tasks' documents, at a
fixed ratio or the one the CMR planner picks from short pilot updates (methods.md section 3). The new data can
be shaped against the stability gap (section 4). With a wsd/infinite schedule a constant-LR *trunk* runs
through all tasks without re-warming, and each task's deployable model is an annealed fork of the trunk
(section 2); a cosine schedule re-warms per task (the baseline). The model is updated by one of FoMo-in-Flux's
methods (section 8, :mod:`fluxforge.continual.methods`: full finetuning, adapters, selective tuning, GaLore,
EWC/SI, merging schedules), each task on the same tokens or the same memory-adjusted FLOPs
(:mod:`fluxforge.continual.budget`). After every task the deployable model (and its merge with earlier ones) is
evaluated on every task's held-out set and on the base data: the accuracy/perplexity matrices, knowledge
accumulation, retention, forgetting and backward transfer (:func:`summarize`, ``metrics/stream.json``).
"""

from __future__ import annotations

import copy
import logging
import math
import shutil

import numpy as np
import torch

from fluxforge import paths as P
from fluxforge.config import Params, StreamConfig, StreamTask, TrainConfig
from fluxforge.continual.budget import BudgetRow, budget_table, measure_cost
from fluxforge.continual.methods import UpdateMethod, build_method, merge_operator, state_of, task_peak_lr
from fluxforge.continual.metrics import continual_metrics
from fluxforge.continual.promise import ClosedLoop, check_promise, promise_record, tolerance
from fluxforge.continual.replay import ReplayBuffer
from fluxforge.data.tokenize import load_streams
from fluxforge.errors import DataError
from fluxforge.eval.heldout import HeldOut
from fluxforge.eval.scoring import perplexity, score_mcq
from fluxforge.train.engine import load_trainer_state, resolve_device
from fluxforge.train.loop import Objective, lm_objective, train
from fluxforge.train.model import TRAINER_STATE, load_model
from fluxforge.train.sampler import MixtureSampler, mixture_weights
from fluxforge.train.schedule import CONTINUABLE, anneal_start

log = logging.getLogger(__name__)
BASE = "base"  # the column of the base model's pretraining data: retention
GAP_FIELDS = ["task", "step", "tokens", "general_loss", "domain_loss"]


class EvalSets:
    """Held-out documents and questions per column (each task's slices, and the base data)."""

    def __init__(self, params: Params, columns: dict[str, list[str]], eval_docs: int) -> None:
        heldout = HeldOut(P.WORLD / "eval")
        self.docs = {c: heldout.docs(sl) for c, sl in columns.items()}
        self.questions = {c: heldout.questions_of(sl) for c, sl in columns.items()}
        self.small = {c: d[:eval_docs] for c, d in self.docs.items()}  # for the planner and the gap curves
        empty = [c for c, d in self.docs.items() if not d]
        if empty:
            raise DataError(f"stream: no held-out documents for {empty} in data/world/eval/heldout.jsonl")
        self.params = params

    @classmethod
    def for_stream(cls, params: Params, s: StreamConfig) -> EvalSets:
        """One column per task (its slices) and the base column (the replay slices, else pretrain's)."""
        columns = {t.name: params.expand(t.slices) for t in s.tasks}
        columns[BASE] = params.expand(s.replay.slices) or params.expand(params.pretrain.slices)
        return cls(params, columns, s.planner.eval_docs)

    def loss(self, model: torch.nn.Module, tok, column: str) -> float:  # noqa: ANN001
        e = self.params.evaluate
        return math.log(perplexity(model, tok, self.small[column], e.seq_len, e.batch_size)["ppl"])

    def full(self, model: torch.nn.Module, tok) -> dict[str, dict[str, float]]:  # noqa: ANN001
        """Accuracy and perplexity of ``model`` on every column."""
        e = self.params.evaluate
        model.eval()
        out = {}
        with torch.no_grad():
            for c in self.docs:
                ppl = perplexity(model, tok, self.docs[c], e.seq_len, e.batch_size)["ppl"]
                res = score_mcq(model, tok, self.questions[c], batch_size=e.batch_size * 2) if self.questions[c] else []
                out[c] = {"ppl": ppl, "acc": float(np.mean([r["correct"] for r in res])) if res else float("nan")}
        return out


class Data:
    """Token streams, the replay buffer and the sampler of each task."""

    def __init__(self, params: Params, s: StreamConfig, tok) -> None:  # noqa: ANN001
        self.params, self.s, self.eos = params, s, tok.eos_token_id
        self.base = params.expand(s.replay.slices)
        self.buffer = ReplayBuffer(s.replay.buffer_tokens, s.replay.policy, self.eos, s.seed) if s.replay.buffer_tokens else None
        self.tok = tok

    def new_stream(self, task: StreamTask, cfg: TrainConfig) -> dict[str, np.ndarray]:
        """The task's new data, shaped by the stability strategy (subset x epochs, or the top-k quality docs)."""
        streams = load_streams(P.TOKENS, self.params.expand(task.slices))
        kind = self.s.strategy.kind
        if kind not in ("subset_epochs", "top_k"):
            return streams
        from fluxforge.continual.stability import top_k_subset, unigram_scorer
        from fluxforge.train.curriculum import split_documents

        docs = [d for st in streams.values() for d in split_documents(np.asarray(st), self.eos)]
        rng = np.random.default_rng(self.s.seed)
        if kind == "top_k":
            texts = self.tok.batch_decode([d[:-1].tolist() for d in docs])
            keep = top_k_subset(texts, unigram_scorer(texts), self.s.strategy.top_k_fraction)
        else:  # a subset of budget/epochs tokens of whole documents: seen ~epochs times within the budget
            target = task.budget_tokens / self.s.strategy.epochs
            order = rng.permutation(len(docs))
            sizes = np.cumsum([len(docs[i]) for i in order])
            keep = order[: max(int(np.searchsorted(sizes, target)) + 1, 1)]
        chosen = np.concatenate([docs[i] for i in sorted(keep)])
        if len(chosen) < cfg.seq_len + 1:
            raise DataError(f"stream task {task.name}: the {kind} subset holds {len(chosen)} tokens, fewer than a window")
        return {f"{task.name}:{kind}": chosen}

    def sampler(self, task: StreamTask, cfg: TrainConfig, ratio: float, seed: int) -> tuple[MixtureSampler, dict]:
        new = self.new_stream(task, cfg)
        mix = self.s.strategy.kind == "pretrain_mix"  # the base data in its pretraining proportions, whatever the ratio
        replay = {} if ratio == 0 and not mix else load_streams(P.TOKENS, [b for b in self.base if b not in new])
        if ratio > 0 and self.buffer is not None and self.buffer.tokens > cfg.seq_len + 1:
            replay["buffer"] = self.buffer.stream()
        streams = {**new, **replay}
        sizes = {k: len(v) for k, v in streams.items()}
        if mix:
            from fluxforge.continual.stability import pretraining_like_mixture

            base_w = mixture_weights(self.base, [], 0.0, sizes)
            weights = pretraining_like_mixture(base_w, {k: sizes[k] for k in new}, self.s.strategy.domain_share)
        else:
            weights = mixture_weights(list(new), [k for k in replay if k != "buffer"], ratio, sizes)
            if "buffer" in replay:  # the buffer takes buffer_share of the replay share
                share = self.s.replay.buffer_share * ratio
                weights = {k: w * (1 - share / ratio) if k not in new else w for k, w in weights.items()}
                weights["buffer"] = share
        return MixtureSampler(streams, weights, cfg.seq_len, cfg.batch_size, seed), weights

    def remember(self, task: StreamTask) -> None:
        if self.buffer is not None:
            for name, st in load_streams(P.TOKENS, self.params.expand(task.slices)).items():
                self.buffer.add(f"{task.name}:{name}", np.asarray(st))


def task_steps(base: TrainConfig, task: StreamTask) -> int:
    """Full finetuning's steps on ``task``: its token budget over one batch (continual.stream.steps_for_budget)."""
    from fluxforge.continual.stream import steps_for_budget

    return steps_for_budget(task.budget_tokens, base.batch_size, base.seq_len)


def task_config(base: TrainConfig, task: StreamTask, index: int, task_peak: str = "constant", steps: int | None = None) -> TrainConfig:
    """Task ``index``'s training config: its slices and steps (``steps``, else :func:`task_steps`), seed, peak LR."""
    steps = steps if steps is not None else task_steps(base, task)
    continuing = index > 0 and base.schedule in CONTINUABLE
    warmup = min(base.warmup_steps, max(steps // 10, 1))
    if base.schedule == "rsqrt":  # its decay is sqrt(W / step): at least one warmup step, before its cooldown
        warmup = max(warmup, 1)
    lr = task_peak_lr(task_peak, base, index, steps, warmup)
    return base.model_copy(update={"slices": list(task.slices), "steps": steps, "seed": base.seed + index, "lr": lr,
                                   "warmup_steps": warmup, "init_mode": "full" if continuing else "weights"})


def plan_replay(data: Data, evals: EvalSets, tok, model: torch.nn.Module, task: StreamTask, column: str,  # noqa: ANN001
                cfg: TrainConfig, opt_state: dict | None, margin: float = 0.0) -> tuple[float, dict]:
    """CMR planner: pilot updates over the grid, general (base) and task loss along each, fit, choose.

    ``margin`` (loss units, from :class:`fluxforge.continual.promise.ClosedLoop`) tightens the tolerance:
    the plan keeps the fitted general loss within ``L_G(0) + ln(1 + max_general_ppl_rise) - margin``.

    The grid holds *replay* ratios (params' meaning); the CMR law is stated in the *domain* share of the
    mixture, ``R = 1 - replay`` (Gu et al.: the critical mixture ratio is the largest domain share whose
    general loss stays within tolerance), so the plan is fitted and chosen in R and converted back.
    """
    from fluxforge.continual.cmr import plan_ratio

    pl = data.s.planner
    every = max(pl.pilot_steps // pl.points, 1)
    # pilots run at the level the task trains at (the constant phase of an infinite schedule), fresh AdamW
    level = cfg.lr * (cfg.infinite.const_ratio if cfg.schedule == "infinite" and cfg.init_mode == "full" else 1.0)
    pilot_cfg = cfg.model_copy(update={"steps": every * pl.points, "warmup_steps": min(cfg.warmup_steps, every - 1),
                                       "schedule": "constant", "lr": level, "init_mode": "weights"})
    baseline = evals.loss(model, tok, BASE)
    curves, tokens_per_step = {}, cfg.batch_size * cfg.seq_len
    for ratio in pl.grid:
        pilot = copy.deepcopy(model)
        sampler, _ = data.sampler(task, pilot_cfg, ratio, seed=cfg.seed + 7919)
        points: list[dict] = []
        train(pilot, sampler, pilot_cfg, probe=lambda m: {"g": evals.loss(m, tok, BASE), "d": evals.loss(m, tok, column)},
              probe_every=every, probes=points, desc=f"pilot {task.name} r={ratio}")
        curves[round(1.0 - ratio, 12)] = [(p["step"] * tokens_per_step, p["g"], p["d"]) for p in points if p["step"] > 0]
    plan = plan_ratio(curves, baseline, tolerance(pl.max_general_ppl_rise, margin), task.budget_tokens, pl.constraint)
    out = plan.to_dict()
    out["margin"] = margin
    out["pilots"] = {str(r): [list(map(float, p)) for p in c] for r, c in curves.items()}
    replay = round(1.0 - float(plan.ratio), 12)
    out["replay_ratio"] = replay
    log.info("stream %s: CMR planner chose domain share R=%.2f, i.e. replay %.2f (feasible=%s, margin %.4f), from replay "
             "grid %s", task.name, plan.ratio, replay, plan.feasible, margin, pl.grid)
    return replay, out


def gap_probe(evals: EvalSets, tok, column: str, steps: int, every: int):  # noqa: ANN001, ANN202
    """General and task loss every ``every`` steps over the first quarter of a task (the stability gap's dip)."""
    if not every:
        return None, 0
    limit = max(steps // 4, every)

    def probe(model: torch.nn.Module) -> dict[str, float]:
        probe.calls += 1
        if (probe.calls - 1) * every > limit:
            return {}
        return {"general_loss": evals.loss(model, tok, BASE), "domain_loss": evals.loss(model, tok, column)}

    probe.calls = 0
    return probe, every


def train_task(model: torch.nn.Module, sampler: MixtureSampler, cfg: TrainConfig, name: str, opt_state: dict | None,
               probe, probe_every: int, probes: list, eos_id: int,  # noqa: ANN001
               method: UpdateMethod | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the trunk through the task with ``method``; return the deployable model (an annealed fork) and the trunk's state.

    The method's penalty joins the loss and it builds the optimizer; its per-step hook follows the trunk only (the
    model the next task continues). The method's name joins ``desc``, part of the run fingerprint, so a checkpoint
    left by another method is never resumed.
    """
    method = method or UpdateMethod()
    name = f"{name} [{method.name}]" if method.name != "finetune" else name
    ckpt = P.CHECKPOINTS / "stream" / name.replace("/", "_").replace(" ", "_")
    export: dict = {}
    objective = method.objective(lm_objective(cfg.doc_mask, eos_id))
    if cfg.schedule not in CONTINUABLE:  # cosine: the task's own warmup and decay; the model is its own deployable copy
        train(model, sampler, cfg, objective, checkpoint_dir=ckpt, desc=name, init_state=opt_state, export=export,
              probe=probe, probe_every=probe_every, probes=probes, optimizer=method.optimizer, on_step=method.after_step)
        shutil.rmtree(ckpt, ignore_errors=True)
        return model, export
    continuing = cfg.init_mode == "full"
    fork = anneal_start(cfg, continuing)
    deploy = copy.deepcopy(model)  # the same starting weights: the run fingerprint matches the trunk's checkpoint
    train(model, sampler, cfg, objective, checkpoint_dir=ckpt, checkpoint_every=fork, desc=name, init_state=opt_state,
          export=export, anneal=False, probe=probe, probe_every=probe_every, probes=probes, optimizer=method.optimizer,
          on_step=method.after_step)
    # the deployable copy: the trunk's checkpoint at the fork, resumed with the annealing schedule
    for extra in sorted(ckpt.glob("state-*.pt"))[:-1]:
        extra.unlink()
    # the same desc: it is part of the run fingerprint, which must match the trunk's checkpoint to resume from it
    train(deploy, sampler, cfg, objective, checkpoint_dir=ckpt, checkpoint_every=cfg.steps + 1, desc=name,
          init_state=opt_state, anneal=True, optimizer=method.optimizer)
    shutil.rmtree(ckpt, ignore_errors=True)
    return deploy, export


def merge_step(running: dict | None, model: torch.nn.Module, init: dict, s: StreamConfig) -> dict | None:
    """The evaluation-only merge after a task (``stream.merge.method``), with ``stream.merge.operator``: ``ema``
    merges the task's model into the running merge (from the init model), ``interpolate`` with the init model."""
    if s.merge.method == "none":
        return None
    op, state = merge_operator(s), state_of(model)
    if s.merge.method == "ema":
        return op(init, [running if running is not None else init, state], ("init model", "running merge", "task model"))
    return op(init, [init, state], ("init model", "init model", "task model"))


def load_init(spec: str, schedule: str) -> tuple[torch.nn.Module, dict | None, dict]:
    """The stream's starting model, the trunk state to continue (if its schedule allows), and its lineage.

    ``models:/NAME@champion`` refreshes from the registry: weights and ``training_state/`` come from the
    registered version, which is pinned and recorded as the parent. A parent trained on a wsd/infinite
    schedule with its optimizer state lets the first task continue its trunk without re-warming.
    """
    lineage: dict = {"parent": spec}
    if spec.startswith("models:/"):
        from fluxforge.track.resolve import local_model_path, version_of

        name, version = version_of(spec)
        lineage.update(parent_model=name, parent_version=version)
        path = local_model_path(f"models:/{name}/{version}")
    else:
        path = P.model_dir(spec)
    model = load_model(path)[0]
    state_file = path / "training_state" / TRAINER_STATE
    parent_schedule = P.model_info(path).get("schedule", "")
    if state_file.exists() and schedule in CONTINUABLE and parent_schedule in CONTINUABLE:
        lineage["continues_trunk"] = True
        return model, load_trainer_state(state_file), lineage
    return model, None, lineage


def measure_budget(s: StreamConfig, data: Data, model: torch.nn.Module, first: StreamTask, base_cfg: TrainConfig,
                   objective: Objective, order: list[str]) -> list[BudgetRow]:
    """The budget table: full finetuning and ``s.method`` measured on the stream's model and its first task's data,
    with their steps per task (the same tokens, or the same memory-adjusted FLOPs: ``s.budget.kind``)."""
    cfg = task_config(base_cfg, first, 0)
    sampler, _ = data.sampler(first, cfg, 0.0, seed=cfg.seed)  # the task's own data
    extra = build_method(s).task_batches(cfg.batch_size)
    batches = [sampler.batch(i) for i in range(1 + extra)]
    builders = [UpdateMethod] + ([lambda: build_method(s)] if s.method != "finetune" else [])
    device = resolve_device(cfg.device)  # where the tasks train: CUDA memory is measured there, CPU memory by its parts
    costs = [measure_cost(b, model, objective, batches[0], batches[1:], cfg, device) for b in builders]
    by_name = {t.name: t for t in s.tasks}
    steps_ft = {name: task_steps(base_cfg, by_name[name]) for name in order}
    rows = budget_table(costs, steps_ft, s.budget.kind)
    for r in rows:
        log.info("stream budget (%s): %s %.3g FLOPs/step (+%.3g per task), memory x%.3f, MAF %.3g, steps %s",
                 s.budget.kind, r.method, r.step_flops, r.task_flops, r.memory_multiplier, r.maf, r.steps)
    return rows


def run_stream(params: Params, s: StreamConfig, tok, evals: EvalSets, with_replay: bool = True) -> dict:  # noqa: ANN001
    """Train the stream once with ``s.method``; return rows of evaluations (deployed and merged), plans, ratios, gap
    curves, the budget table and the final deployable model (a plain HF model: adapters merged in)."""
    from fluxforge.continual.stream import Task, order_tasks

    base_cfg = params.stream_train()
    data = Data(params, s, tok)
    tasks = [t for t in s.tasks]
    by_name = {t.name: t for t in tasks}
    streams = load_streams(P.TOKENS, params.world.slices()) if s.ordering == "similarity" else None
    difficulty = None
    model, opt_state, lineage = load_init(s.init, base_cfg.schedule)
    if s.ordering == "difficulty":
        difficulty = {t.name: evals.loss(model, tok, t.name) for t in tasks}
    order = order_tasks([Task(t.name, tuple(t.slices), t.budget_tokens) for t in tasks], s.ordering, seed=s.seed,
                        streams=streams, difficulty=difficulty).names
    init_state = state_of(model)
    rows = [evals.full(model, tok)]
    merged_rows = [rows[0]]  # before any task, the merge is the init model
    objective = lm_objective(base_cfg.doc_mask, tok.eos_token_id)
    budget = measure_budget(s, data, model, by_name[order[0]], base_cfg, objective, order)
    method = build_method(s)
    model = method.attach(model)  # bad method keys (a target module the model lacks, a rank too large) fail here
    if opt_state is not None and not method.continues_adamw:
        log.info("stream: %s trains with its own optimizer; the parent's AdamW state is not continued", s.method)
        opt_state = None
    running, plans, ratios, gap, promises = None, {}, {}, [], []
    loop = ClosedLoop(enabled=s.planner.closed_loop)
    for i, name in enumerate(order):
        task = by_name[name]
        cfg = task_config(base_cfg, task, i if opt_state is None else i + 1, s.task_peak,  # a continued trunk does not re-warm
                          steps=budget[-1].steps[name])
        method.begin_task(model)
        model.train()
        if not with_replay:
            ratio = 0.0
        elif s.replay.ratio == "planned":
            ratio, plans[name] = plan_replay(data, evals, tok, model, task, name, cfg, opt_state, loop.margin())
        else:
            ratio = float(s.replay.ratio)
        ratios[name] = ratio
        sampler, _ = data.sampler(task, cfg, ratio, seed=cfg.seed)
        probe, every = gap_probe(evals, tok, name, cfg.steps, s.gap_every if with_replay else 0)
        probes: list[dict] = []
        trained, opt_state = train_task(model, sampler, cfg, f"stream/{name}" + ("" if with_replay else " (no replay)"),
                                        opt_state, probe, every, probes, tok.eos_token_id, method)
        if extra := method.task_batches(cfg.batch_size):  # EWC's Fisher: the task's own data, after its training batches
            own, _ = data.sampler(task, cfg, 0.0, seed=cfg.seed)
            method.end_task(model, objective, [own.batch(cfg.steps + k) for k in range(extra)], deployed=trained)
        else:
            method.end_task(model, objective, [], deployed=trained)
        deploy = method.deployable(trained)
        if name in plans:  # the plan's promise, on the planner's own evaluation documents; the next plan learns from it
            promises.append(check_promise(name, plans[name], evals.loss(deploy, tok, BASE), s.planner.max_general_ppl_rise,
                                          plans[name]["margin"]))
            loop.observe(promises[-1])
        tokens_per_step = cfg.batch_size * cfg.seq_len
        gap += [{"task": name, "step": p["step"], "tokens": p["step"] * tokens_per_step, **p} for p in probes if len(p) > 1]
        data.remember(task)
        rows.append(evals.full(deploy, tok))
        running = merge_step(running, deploy, init_state, s)
        if running is not None:
            merged = copy.deepcopy(deploy)
            merged.load_state_dict(running)
            merged_rows.append(evals.full(merged, tok))
        last = deploy if running is None else merged
    return {"order": order, "rows": rows, "merged_rows": merged_rows if running is not None else None, "plans": plans,
            "ratios": ratios, "promise": promise_record(promises) if promises else None, "gap": gap, "final": last, "lineage": lineage, "method": method.describe(),
            "budget": budget_record(s.budget.kind, budget)}


def budget_record(kind: str, rows: list[BudgetRow]) -> dict:
    """The budget table as metrics/stream.json keeps it: keyed by method (``dvc exp show`` shows mappings, not lists);
    ``reference`` is full finetuning, ``method`` the stream's own row."""
    return {"kind": kind, "reference": rows[0].method, "method": rows[-1].method,
            "methods": {r.method: {k: v for k, v in r.to_dict().items() if k != "method"} for r in rows}}


def matrix(rows: list[dict], columns: list[str], key: str) -> list[list[float]]:
    """(tasks + 1) x columns of one number (``acc`` or ``ppl``): row 0 is the zero-shot model."""
    return [[r[c][key] for c in columns] for r in rows]


def without_replay(s: StreamConfig, res: dict) -> StreamConfig | None:
    """The stream to compare ``res`` with (same tasks, no replay, no merging); None when ``res`` replayed nothing."""
    if not s.compare_no_replay or not any(r > 0 for r in res["ratios"].values()):
        return None
    return s.model_copy(update={"merge": s.merge.model_copy(update={"method": "none"})})


def summarize(params: Params, s: StreamConfig, res: dict, plain: dict | None = None) -> dict:
    """``metrics/stream.json``: the matrices, the continual metrics (trunk and merged), replay plans, the rise."""
    cols = [*res["order"], BASE]
    mats = {k: matrix(res["rows"], cols, k) for k in ("acc", "ppl")}
    merged = {k: matrix(res["merged_rows"], cols, k) for k in ("acc", "ppl")} if res["merged_rows"] else None

    def metrics(m: dict) -> dict:
        return {"acc": continual_metrics(m["acc"], higher_is_better=True).to_dict(),
                "ppl": continual_metrics(m["ppl"], higher_is_better=False).to_dict()}

    rise = {"with_replay": mats["ppl"][-1][-1] / mats["ppl"][0][-1] - 1}
    if plain is not None:
        rise["without_replay"] = plain["rows"][-1][BASE]["ppl"] / plain["rows"][0][BASE]["ppl"] - 1
    return {"tasks": res["order"], "columns": cols, "rows": ["zero-shot", *res["order"]], "matrix": mats,
            "method": res["method"], "budget": res["budget"],
            "merged_matrix": merged, "metrics": metrics(mats), "merged_metrics": metrics(merged) if merged else None,
            "replay": {"mode": "planned" if s.replay.ratio == "planned" else "fixed", "ratios": res["ratios"],
                       "plans": res["plans"], "promise": res["promise"]},
            "general_ppl_rise": rise, "merge": s.merge.model_dump(), "strategy": s.strategy.model_dump(),
            "schedule": params.stream_train().schedule, "ordering": s.ordering}


def budget_columns(budget: dict) -> dict[str, list]:
    """The budget table as columns (one row per method; steps summed over tasks), for MLflow's ``log_table``."""
    rows = [{"method": name, **row} for name, row in budget["methods"].items()]
    return {"method": [r["method"] for r in rows], "flops_per_step": [r["step_flops"] for r in rows],
            "flops_per_task_hooks": [r["task_flops"] for r in rows], "memory_bytes": [r["memory_bytes"] for r in rows],
            "memory_multiplier": [r["memory_multiplier"] for r in rows], "maf": [r["maf"] for r in rows],
            "trainable_parameters": [r["trainable"] for r in rows], "steps": [sum(r["steps"].values()) for r in rows]}


def tracked(summary: dict) -> tuple[dict, dict]:
    """(metrics, tags) for the stream's MLflow run."""
    rise = summary["general_ppl_rise"]
    budget = summary["budget"]
    mine = budget["methods"][budget["method"]]
    metrics = {"general_ppl_rise": rise["with_replay"],
               **({"general_ppl_rise_no_replay": rise["without_replay"]} if "without_replay" in rise else {}),
               **{f"acc_{m}": v for m, v in summary["metrics"]["acc"].items() if isinstance(v, float)},
               "budget_memory_multiplier": mine["memory_multiplier"], "budget_steps": sum(mine["steps"].values()),
               "budget_maf_over_finetune": mine["maf"] / budget["methods"][budget["reference"]]["maf"]}
    tags = {f"fluxforge.cmr.{name}.ratio": str(plan.get("ratio")) for name, plan in summary["replay"]["plans"].items()}
    if promise := summary["replay"].get("promise"):  # the planner's promise per task, and how many held
        for name, p in promise["tasks"].items():
            metrics.update({f"cmr_predicted_rise/{name}": p["predicted"], f"cmr_realised_rise/{name}": p["realised"],
                            f"cmr_margin/{name}": p["margin"]})
            tags[f"fluxforge.cmr.{name}.promise"] = "held" if p["held"] else "broken"
        metrics["cmr_promises_held"] = promise["held"]
        tags["fluxforge.cmr.promise"] = f"{promise['held']}/{promise['planned']} held"
    tags.update({"fluxforge.method": summary["method"]["method"], "fluxforge.budget": summary["budget"]["kind"]})
    return metrics, tags
