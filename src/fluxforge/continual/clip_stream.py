"""FoMo-in-Flux on the generated image world: a CLIP updated over a stream of concept tasks (stage ``mm_stream``).

FoMo-in-Flux (Roth et al. 2024; methods.md section 8) names every stream item ``DATASET+++classname``, orders the
items (its ordering files are JSON lists of them), cuts the ordered list into T contiguous tasks (the first
``len % T`` get one more item) and trains each task on batches that mix pretraining replay, the task's own pairs
and a reservoir buffer of the earlier tasks' pairs. Every method gets the same memory-adjusted FLOPs per task
(:mod:`fluxforge.continual.budget`). After every task the deployable model is scored zero-shot on each task's
held-out images, on the base concepts' held-out images and on the digits (a domain never trained on), which
gives FoMo's (T+1) x (T + held-out) matrix and its A_KA, A_ZS, forgetting, BWT and FWT
(:mod:`fluxforge.continual.metrics`).

Here the items are ``shapes-s<slice>+++<concept>``: the concepts each later world slice adds (and the one whose
look changes), in the world's order. The update methods are the language stream's (:mod:`fluxforge.continual
.methods`): nothing in them knows that the model is a CLIP.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CLIPModel, PreTrainedTokenizerBase

from fluxforge import paths as P
from fluxforge.config import NO_REPLAY, MMConfig, MMStream, TrainConfig
from fluxforge.continual.budget import BudgetRow, budget_table, measure_cost
from fluxforge.continual.methods import UpdateMethod, build_method
from fluxforge.continual.metrics import continual_metrics
from fluxforge.continual.stream import StreamError, chunk_stream
from fluxforge.data.captions import encode_captions
from fluxforge.data.images import ImageSet, load_image_set, read_image_table, select_rows
from fluxforge.errors import FluxForgeError
from fluxforge.eval.zero_shot import class_embeddings, image_embeddings, retrieval, text_embeddings, zero_shot
from fluxforge.io import write_json
from fluxforge.train.clip import ClipData, caption_keys, clamp_temperature, clip_objective
from fluxforge.train.image_job import TrainingError, fingerprint
from fluxforge.train.job import Tracker, write_rows
from fluxforge.train.loop import train
from fluxforge.train.model import write_hf_dir
from fluxforge.train.sampler import Batch
from fluxforge.world.images import DIGIT_TEMPLATES, DIGITS, caption_variants, concepts, digit_concept

log = logging.getLogger(__name__)
SOURCE = "shapes"
SEP = "+++"  # FoMo-in-Flux's item separator: DATASET+++classname
HELD_OUT = ("base", "digits")  # the matrix's columns after the tasks: never trained on by the stream
KEY = "mm.stream"


class ClipStreamError(FluxForgeError, ValueError):
    """A stream that cannot be built (ordering file, tasks, items); the message names the params key or the file."""


# ----------------------------------------------------------------------------- items, orderings, tasks
def item_name(slice_: int, concept: str) -> str:
    return f"{SOURCE}-s{slice_}{SEP}{concept}"


def parse_item(item: str) -> tuple[int, str]:
    """(slice, concept) of ``shapes-s<slice>+++<concept>``; anything else is a ValueError."""
    dataset, sep, concept = item.partition(SEP)
    prefix = f"{SOURCE}-s"
    if not sep or not concept or not dataset.startswith(prefix) or not dataset[len(prefix):].isdigit():
        raise ValueError(f"{item!r} is not '{SOURCE}-s<slice>{SEP}<concept>'")
    return int(dataset[len(prefix):]), concept


def read_order_file(path: Path | str, known: Sequence[str], held_out: Sequence[str]) -> list[str]:
    """FoMo's ordering file (a JSON list of ``SET+++concept``), checked against the stream's items.

    Every problem names ``mm.stream.order_file``, the file and the item's position: a file that is missing or not
    a JSON list, a malformed or repeated item, a held-out concept, an item the curated data does not hold. An
    ordering of a subset of the items is allowed (a shorter stream), as FoMo's files order what they list.
    """
    where = f"{KEY}.order_file: {path}"
    try:
        order = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ClipStreamError(f"{where}: no such file") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ClipStreamError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(order, list) or not order:
        raise ClipStreamError(f"{where}: must be a non-empty JSON list of \"SET{SEP}concept\" strings")
    seen: set[str] = set()
    for pos, item in enumerate(order):
        if not isinstance(item, str):
            raise ClipStreamError(f"{where}, item {pos}: {item!r} is not a string")
        try:
            _, concept = parse_item(item)
        except ValueError as err:
            raise ClipStreamError(f"{where}, item {pos}: {err}") from None
        if item in seen:
            raise ClipStreamError(f"{where}, item {pos}: {item!r} is listed twice")
        if concept in held_out:
            raise ClipStreamError(f"{where}, item {pos}: {concept!r} is a held-out concept (never trained on)")
        if item not in known:
            raise ClipStreamError(f"{where}, item {pos}: {item!r} is not in the stream's curated data "
                                  f"({len(known)} items, e.g. {known[0]!r})")
        seen.add(item)
    return order


def order_items(items: Sequence[str], cfg: MMStream, held_out: Sequence[str]) -> list[str]:
    """The stream's order: ``order_file`` when set, else ``given`` (world order), ``reverse`` or ``random`` (seeded)."""
    if cfg.order_file:
        return read_order_file(cfg.order_file, items, held_out)
    if cfg.ordering == "reverse":
        return list(reversed(items))
    if cfg.ordering == "random":
        return [items[i] for i in np.random.default_rng(cfg.seed).permutation(len(items))]
    return list(items)


def stream_tasks(ordered: Sequence[str], num_tasks: int, held_out: Sequence[str]) -> list[list[str]]:
    """FoMo's chunks of the ordered items; a held-out concept, or one concept in two tasks, is an error."""
    try:
        tasks = chunk_stream(list(ordered), num_tasks)
    except StreamError as err:
        raise ClipStreamError(f"{KEY}.num_tasks: {err}") from None
    first: dict[str, int] = {}
    for t, task in enumerate(tasks):
        for item in task:
            concept = parse_item(item)[1]
            if concept in held_out:
                raise ClipStreamError(f"{KEY}: task {t + 1} holds {concept!r}, a held-out concept (never trained on)")
            if first.setdefault(concept, t) != t:
                raise ClipStreamError(f"{KEY}: concept {concept!r} is in task {first[concept] + 1} and task {t + 1}; "
                                      "its held-out images would score two tasks (reorder or drop one item)")
    return tasks


# ----------------------------------------------------------------------------- buffer and batches
class Reservoir:
    """A fixed-capacity uniform sample of every pair offered so far (Vitter's algorithm R), seeded."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.seen, self.items = capacity, 0, []
        self.rng = np.random.default_rng([seed, 7])

    def add(self, indices: Sequence[int]) -> None:
        for i in indices:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(int(i))
            else:
                j = int(self.rng.integers(self.seen))
                if j < self.capacity:
                    self.items[j] = int(i)


@dataclass(frozen=True)
class MixtureSampler:
    """Batch ``k`` of a task: ``counts`` pairs from each pool (pretraining replay, task update, buffer), a pure
    function of (seed, task, k) as the loop's resume needs; a pool with no pairs gives its share to the update."""

    pools: dict[str, np.ndarray]
    shares: dict[str, float]
    batch_size: int
    seq_len: int
    seed: int
    task: int
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        counts = {name: int(self.batch_size * share) for name, share in self.shares.items()
                  if name != "update" and len(self.pools.get(name, ()))}
        counts["update"] = self.batch_size - sum(counts.values())  # with every empty pool's share
        object.__setattr__(self, "counts", counts)

    def signature(self) -> str:
        pools = fingerprint(*(np.asarray(self.pools[k], dtype=np.int64) for k in sorted(self.pools)))
        return f"mixture:{self.counts}|{pools}|{self.seed}|{self.task}"

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.task, step])
        parts = [rng.choice(self.pools[n], size=k, replace=len(self.pools[n]) < k) for n, k in self.counts.items() if k]
        return Batch(torch.from_numpy(np.concatenate(parts).astype(np.int64)[:, None]))


# ----------------------------------------------------------------------------- data and scoring
@dataclass
class StreamData:
    """Every pair a stream trains on (pretraining replay first, then the stream's slices) and its held-out sets."""

    pairs: ClipData
    replay: np.ndarray  # indices of the pretraining pairs
    items: dict[str, np.ndarray]  # stream item -> indices of its training pairs
    tests: dict[str, ImageSet]  # item -> its held-out images
    base: ImageSet
    digits: ImageSet


def load_stream_data(mm: MMConfig, tok: PreTrainedTokenizerBase, curated: Path = P.MM_CURATED) -> StreamData:
    size = mm.clip.vision.image_size
    table = read_image_table(curated / f"{SOURCE}.parquet")
    replay = load_image_set(table, size, slices=mm.clip.slices, splits=["train"])
    stream = load_image_set(table, size, slices=mm.stream.slices, splits=["train"])
    captions = replay.captions + stream.captions
    ids, attention = encode_captions(tok, captions)
    pairs = ClipData(torch.from_numpy(np.concatenate([replay.pixels, stream.pixels])), torch.from_numpy(ids),
                     torch.from_numpy(attention), caption_keys(captions))
    items: dict[str, list[int]] = {}
    for k, (s, c) in enumerate(zip(stream.slices, stream.concepts)):
        items.setdefault(item_name(int(s), c), []).append(len(replay) + k)
    test = load_image_set(table, size, slices=mm.stream.slices, splits=["test"])
    tests = {}
    for item in items:
        s, c = parse_item(item)
        keep = (test.slices == s) & np.array([x == c for x in test.concepts])
        if not keep.any():
            raise ClipStreamError(f"{KEY}: item {item!r} has no held-out images to score it on")
        tests[item] = test.select(keep)
    return StreamData(pairs, np.arange(len(replay)), {k: np.array(v) for k, v in items.items()}, tests,
                      load_image_set(table, size, slices=mm.clip.slices, splits=["test"]),
                      load_image_set(curated / "digits.parquet", size, splits=["test"]))


def held_out_concepts(curated: Path = P.MM_CURATED) -> list[str]:
    """Concepts the world never trains on (its ``unseen`` split)."""
    table = read_image_table(curated / f"{SOURCE}.parquet")
    return sorted(set(select_rows(table, splits=["unseen"])["concept"]))


def digit_prompts(concept: str) -> list[str]:
    return [t.format(digit=concept.removeprefix("digit ")) for t in DIGIT_TEMPLATES]


class Scorer:
    """One row of the matrix: zero-shot accuracy per task (its items' held-out images), on the base concepts and on
    the digits (labels: the ten digits), and image<->text retrieval on all the tasks' held-out pairs."""

    def __init__(self, data: StreamData, tasks: Sequence[Sequence[str]], tok: PreTrainedTokenizerBase, batch_size: int) -> None:
        self.tok, self.batch_size = tok, batch_size
        self.sets = {f"task{t + 1}": _union([data.tests[i] for i in items]) for t, items in enumerate(tasks)}
        self.sets["base"] = data.base
        self.digits = data.digits
        self.labels = concepts()
        self.digit_labels = [digit_concept(d) for d in range(len(DIGITS))]
        self.pairs = _union(list(self.sets.values())[: len(tasks)])

    @property
    def columns(self) -> list[str]:
        return [*self.sets, "digits"]

    def __call__(self, model: CLIPModel) -> dict[str, Any]:
        classes = class_embeddings(model, self.tok, self.labels, caption_variants)
        row: dict[str, Any] = {}
        for name, images in self.sets.items():
            row[name] = zero_shot(image_embeddings(model, images.pixels, self.batch_size), classes, images.concepts,
                                  self.labels).accuracy
        digits = class_embeddings(model, self.tok, self.digit_labels, digit_prompts)
        row["digits"] = zero_shot(image_embeddings(model, self.digits.pixels, self.batch_size), digits,
                                  self.digits.concepts, self.digit_labels).accuracy
        emb = image_embeddings(model, self.pairs.pixels, self.batch_size)
        row["retrieval"] = retrieval(emb, text_embeddings(model, self.tok, self.pairs.captions), self.pairs.captions)
        return row


def _union(sets: Sequence[ImageSet]) -> ImageSet:
    return ImageSet([i for s in sets for i in s.ids], np.concatenate([s.pixels for s in sets]),
                    [c for s in sets for c in s.captions], [c for s in sets for c in s.concepts],
                    np.concatenate([s.slices for s in sets]), [x for s in sets for x in s.splits])


# ----------------------------------------------------------------------------- budgets and runs
def task_config(cfg: MMStream, steps: int, tokens_per_example: int) -> TrainConfig:
    train_cfg = cfg.train.model_copy(update={"steps": steps, "warmup_steps": min(cfg.train.warmup_steps, steps - 1)})
    return train_cfg.train_config(tokens_per_example)


def measure_budget(cfg: MMStream, model: CLIPModel, data: StreamData, tasks: Sequence[Sequence[str]],
                   tokens_per_example: int) -> list[BudgetRow]:
    """Full finetuning and every other method of ``cfg.methods`` measured on the CLIP and a first-task batch;
    steps per task from ``budget.kind`` (full finetuning: ``train.steps``)."""
    tcfg = task_config(cfg, cfg.train.steps, tokens_per_example)
    sampler = MixtureSampler({"update": data.items[tasks[0][0]]}, {"update": 1.0}, tcfg.batch_size, tcfg.seq_len, 0, 0)
    objective = clip_objective(data.pairs)
    names = list(dict.fromkeys(cfg.settings_for(r).method for r in cfg.methods))
    builders = [UpdateMethod] + [lambda n=n: build_method(cfg.settings_for(n), KEY) for n in names if n != "finetune"]
    costs = [measure_cost(b, model, objective, sampler.batch(0), [], tcfg) for b in builders]
    rows = budget_table(costs, {f"task{t + 1}": cfg.train.steps for t in range(len(tasks))}, cfg.budget.kind, KEY)
    for r in rows:
        log.info("mm_stream budget (%s): %s %.3g FLOPs/step, memory x%.3f, steps %s", cfg.budget.kind, r.method,
                 r.step_flops, r.memory_multiplier, r.steps)
    return rows


@dataclass
class StreamRun:
    """One method's pass over the stream: the score rows (zero-shot first), the final deployable model, the curve."""

    name: str
    method: dict
    rows: list[dict]
    final: CLIPModel
    steps: dict[str, int]
    batches: dict[str, dict[str, int]]  # per task: pairs per batch from each pool
    curve: list[dict]
    seconds: float


def run_method(run: str, cfg: MMStream, base: CLIPModel, data: StreamData, tasks: Sequence[Sequence[str]],
               scorer: Scorer, budget: dict[str, BudgetRow], tokens_per_example: int) -> StreamRun:
    """Train a copy of ``base`` through every task with one method; score it after each task."""
    torch.manual_seed(cfg.train.seed)
    settings = cfg.settings_for(run)
    method = build_method(settings, KEY)
    model = copy.deepcopy(base)
    rows = [scorer(model)]
    model = method.attach(model)
    objective = clip_objective(data.pairs)
    reservoir = Reservoir(cfg.buffer_size, cfg.seed)
    curve: list[dict] = []
    steps: dict[str, int] = {}
    batches: dict[str, dict[str, int]] = {}
    seconds = 0.0

    def on_step(step: int, m: torch.nn.Module) -> None:
        clamp_temperature(step, m)
        method.after_step(step, m)

    shares = cfg.mixture.model_dump() if run != NO_REPLAY else {"update": 1.0}
    for t, items in enumerate(tasks):
        name = f"task{t + 1}"
        tcfg = task_config(cfg, budget[settings.method].steps[name], tokens_per_example)
        own = np.concatenate([data.items[i] for i in items])
        pools = {"replay": data.replay, "update": own, "buffer": np.array(reservoir.items, dtype=np.int64)}
        sampler = MixtureSampler(pools, shares, tcfg.batch_size, tcfg.seq_len, cfg.train.seed, t)
        method.begin_task(model)
        model.train()
        ckpt = P.CHECKPOINTS / "mm_stream" / run / name
        try:
            history = train(model, sampler, tcfg, method.objective(objective), checkpoint_dir=ckpt,
                            desc=f"mm_stream/{run}/{name}", on_step=on_step, optimizer=method.optimizer)
        except FloatingPointError as err:
            raise TrainingError(f"mm_stream: {run}, {name}: {err}") from None
        shutil.rmtree(ckpt, ignore_errors=True)
        method.end_task(model, objective, [], deployed=model)
        deploy = method.deployable(model)
        rows.append(scorer(deploy))
        reservoir.add(own)
        steps[name], batches[name] = tcfg.steps, sampler.counts
        offset = sum(list(steps.values())[:-1])
        curve += [{"run": run, "task": name, "step": offset + h["step"], "loss": h["loss"]} for h in history]
        seconds += history[-1]["elapsed"]
        log.info("mm_stream %s %s: %d steps (%s), A_KA so far %.3f", run, name, tcfg.steps, sampler.counts,
                 np.mean([rows[-1][f"task{j + 1}"] for j in range(t + 1)]))
    return StreamRun(run, {**method.describe(), "replay": run != NO_REPLAY}, rows, method.deployable(model), steps,
                     batches, curve, seconds)


def summarize(run: StreamRun, columns: Sequence[str]) -> dict:
    """The run's matrix, continual metrics (FoMo's A_KA over every task at every row) and retrieval per row."""
    matrix = [[row[c] for c in columns] for row in run.rows]
    metrics = continual_metrics(matrix, higher_is_better=True, ka_over="all").to_dict()
    return {"method": run.method, "steps": run.steps, "batches": run.batches, "train_seconds": run.seconds, "matrix": matrix,
            "metrics": metrics, "retrieval": [row["retrieval"] for row in run.rows]}


KA_RISE = 0.15  # issue 16: replay raises A_KA by at least this over the zero-shot row
ZS_SLACK = 0.01  # ema_merge keeps A_ZS >= finetune's - this


def stream_claims(runs: dict[str, dict]) -> dict[str, dict]:
    """Issue 16's checks on one stream (those whose runs are present): each with its numbers and whether it holds."""
    out = {}
    if "finetune" in runs:
        m = runs["finetune"]["metrics"]
        rise = m["a_ka_curve"][-1] - m["a_ka_curve"][0]
        out["replay_raises_a_ka"] = {"rise": rise, "need": KA_RISE, "holds": rise >= KA_RISE}
        if NO_REPLAY in runs:
            gap = m["geometric_mean"] - runs[NO_REPLAY]["metrics"]["geometric_mean"]
            out["replay_beats_no_replay"] = {"gap": gap, "holds": gap > 0}
        if "ema_merge" in runs:
            gap = runs["ema_merge"]["metrics"]["a_zs"] - m["a_zs"]
            out["ema_merge_keeps_a_zs"] = {"gap": gap, "need": -ZS_SLACK, "holds": gap >= -ZS_SLACK}
    return out


# ----------------------------------------------------------------------------- the stage
def run_clip_stream(mm: MMConfig, base: CLIPModel, tok: PreTrainedTokenizerBase, tracker: Tracker | None = None,
                    curated: Path = P.MM_CURATED) -> dict:
    """Every run of ``mm.stream.methods``; writes ``models/mm_stream`` (the ``deploy`` run's final CLIP and the
    tokenizer), ``metrics/mm_stream.json``, ``metrics/train/mm_stream.json`` and ``plots/mm_stream/``; returns the
    metrics."""
    cfg = mm.stream
    data = load_stream_data(mm, tok, curated)
    held_out = held_out_concepts(curated)
    tasks = stream_tasks(order_items(list(data.items), cfg, held_out), cfg.num_tasks, held_out)
    tokens_per_example = (mm.clip.vision.image_size // mm.clip.vision.patch_size) ** 2
    budget = {r.method: r for r in measure_budget(cfg, base, data, tasks, tokens_per_example)}
    scorer = Scorer(data, tasks, tok, mm.eval.batch_size)
    runs, finals, curves = {}, {}, []
    for run in cfg.methods:
        result = run_method(run, cfg, base, data, tasks, scorer, budget, tokens_per_example)
        runs[run] = summarize(result, scorer.columns)
        finals[run] = result.final
        curves += result.curve
        if tracker:
            tracker.metrics({f"{run}.{k}": v for k, v in runs[run]["metrics"].items() if isinstance(v, float)})
    metrics = {"tasks": {f"task{t + 1}": list(items) for t, items in enumerate(tasks)}, "columns": scorer.columns,
               "held_out": list(HELD_OUT), "rows": ["zero-shot", *(f"task{t + 1}" for t in range(len(tasks)))],
               "mixture": cfg.mixture.model_dump(), "budget": {"kind": cfg.budget.kind, "reference": "finetune",
               "methods": {k: {f: v for f, v in r.to_dict().items() if f != "method"} for k, r in budget.items()}},
               "deploy": cfg.deploy, "runs": runs, "claims": stream_claims(runs)}
    deployed = runs[cfg.deploy]
    info = {"name": "mm_stream", "stage": "mm_stream", "parent": "clip", "method": deployed["method"],
            "steps": sum(deployed["steps"].values()), "tasks": metrics["tasks"],
            "tokens": sum(deployed["steps"].values()) * cfg.train.batch_size * tokens_per_example,
            "parameters": sum(p.numel() for p in finals[cfg.deploy].parameters()), "a_ka": deployed["metrics"]["a_ka"],
            "a_zs": deployed["metrics"]["a_zs"]}
    write_hf_dir(finals[cfg.deploy], P.model_dir("mm_stream"), info, tok)
    write_json(P.METRICS / "mm_stream.json", metrics)
    # what a training stage reports for its model (fluxforge.paths.train_metrics): the registry sums train_seconds
    # along the lineage, so fluxforge-clip's compute includes the stream's (the deployed run's) and the CLIP's
    write_json(P.train_metrics_file("mm_stream"), {
        "method": cfg.deploy, "steps": info["steps"], "tokens": info["tokens"], "parameters": info["parameters"],
        "train_seconds": deployed["train_seconds"], "all_runs_seconds": sum(r["train_seconds"] for r in runs.values()),
        "mlflow_run_id": getattr(tracker, "run_id", "")})
    write_plots(metrics, curves, P.PLOTS / "mm_stream")
    return metrics


def write_plots(metrics: dict, curves: list[dict], out: Path) -> None:
    """DVC plot files: the score matrix per run (long form), the metrics per run, the loss curves."""
    out.mkdir(parents=True, exist_ok=True)
    cells = [{"run": run, "after": metrics["rows"][i], "column": c, "accuracy": v}
             for run, r in metrics["runs"].items() for i, row in enumerate(r["matrix"]) for c, v in zip(metrics["columns"], row)]
    write_rows(cells, out / "matrix.csv", ["run", "after", "column", "accuracy"])
    keys = ["a_ka", "a_zs", "geometric_mean", "forgetting", "bwt", "fwt"]
    write_rows([{"run": run, **{k: r["metrics"][k] for k in keys}, "steps": sum(r["steps"].values())}
                for run, r in metrics["runs"].items()], out / "metrics.csv", ["run", *keys, "steps"])
    write_rows(curves, out / "loss.csv", ["run", "task", "step", "loss"])
