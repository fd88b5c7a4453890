"""Distillation variants on the default world: student from scratch vs cut from the teacher, dense vs top-k targets.

Usage (from the repo root, after `make run` so that data/tokens and the final model exist):
    python benchmarks/distill_variants.py [--params params.yaml] [--steps N]

Each variant trains a student from the same teacher (params' distill.teacher), with the same data, steps
and schedule, in this process (the DVC outputs are not touched), then evaluates it on the full evaluation
set. The top-k variant runs twice on one fresh target cache: cold (teacher outputs computed and stored),
then warm (all read back), which is what a student sweep costs per student after the first.
Writes the "Distillation variants" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

from fluxforge import paths as P  # noqa: E402
from fluxforge.config import load_params  # noqa: E402
from fluxforge.eval.evaluate import evaluate_model  # noqa: E402
from fluxforge.io import read_jsonl  # noqa: E402
from fluxforge.track.resolve import dag_or_registry_dirs  # noqa: E402
from fluxforge.train.distill import TargetCache, distillation_objective, keep_layers  # noqa: E402
from fluxforge.train.job import sampler_for  # noqa: E402
from fluxforge.train.loop import train  # noqa: E402
from fluxforge.train.model import load_model, new_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, help="override distill.steps")
    args = ap.parse_args()
    params = load_params(args.params)
    (tdir,), _ = dag_or_registry_dirs(params.teacher_names()[:1])
    if not (P.TOKENS / "index.json").exists() or not (tdir / "config.json").exists():
        sys.exit("distill_variants needs the DAG's tokens and teacher model: run `make run` (or `dvc repro`) first")
    cfg = params.distill if args.steps is None else params.distill.model_copy(update={"steps": args.steps})
    layers = cfg.student_layers or [0, params.model.num_layers - 1]
    teacher, tok = load_model(tdir)
    heldout, questions = read_jsonl(P.WORLD / "eval" / "heldout.jsonl"), read_jsonl(P.WORLD / "eval" / "mcq.jsonl")
    ev = params.evaluate

    def score(model) -> dict:  # noqa: ANN001
        r, _ = evaluate_model(model, tok, heldout, questions, ev.seq_len, ev.batch_size)
        return r

    rows = [("teacher " + params.teacher_names()[0], "-", score(teacher))]
    cache_root = Path(tempfile.mkdtemp(prefix="ff-kd-cache-"))
    variants = [
        ("scratch: `student` config", lambda: new_model(cfg.student, P.TOKENS), 0, None),
        (f"cut: layers {layers} of the teacher", lambda: keep_layers(teacher, layers), 0, None),
        (f"cut {layers}, top-64 targets, cold cache", lambda: keep_layers(teacher, layers), 64, "cold"),
        (f"cut {layers}, top-64 targets, warm cache", lambda: keep_layers(teacher, layers), 64, "warm"),
    ]
    for name, make, top_k, cache_state in variants:
        sampler, _ = sampler_for(params, cfg, tok)
        cache = TargetCache(cache_root, [tdir], cfg.temperature, cfg.ensemble, top_k) if cache_state else None
        student = make()
        objective = distillation_objective([teacher], cfg.temperature, cfg.alpha, cfg.ensemble, top_k, cache)
        t0 = time.perf_counter()
        train(student, sampler, cfg, objective, desc=name)
        seconds = time.perf_counter() - t0
        print(f"{name}: {seconds:.1f} s", flush=True)
        rows.append((name, f"{seconds:.0f}", score(student)))

    t = rows[0][2]
    lines = ["| student | train s | parameters | forward tokens/s | general acc | cyber acc | general ppl | cyber ppl "
             "| above-chance acc kept (general / cyber) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, secs, r in rows:
        kept = " / ".join(f"{(r[d]['acc'] - 0.25) / (t[d]['acc'] - 0.25):.0%}" for d in ("general", "cyber"))
        lines.append(f"| {name} | {secs} | {r['parameters']:,} | {r['tokens_per_s']:,.0f} | {r['general']['acc']:.3f} | "
                     f"{r['cyber']['acc']:.3f} | {r['general']['ppl']:.1f} | {r['cyber']['ppl']:.1f} | {kept} |")
    body = (f"Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/distill_variants.py"
            f"{' --params ' + args.params if args.params != 'params.yaml' else ''}"
            f"{' --steps ' + str(args.steps) if args.steps else ''}`.\n\n"
            f"{cfg.steps} steps of batch {cfg.batch_size} x {cfg.seq_len} tokens, T = {cfg.temperature}, alpha = {cfg.alpha}, "
            "the full evaluation set (481 questions, held-out documents). Forward tokens/s is measured on a shared "
            "2-core machine: compare it within one run only.\n\n" + "\n".join(lines) + "\n")
    replace_section(ROOT / "BENCHMARKS.md", "Distillation variants", body)
    print(body)


if __name__ == "__main__":
    main()
