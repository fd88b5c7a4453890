"""Update methods on the default world's language stream at equal memory-adjusted FLOPs (FoMo-in-Flux, methods.md 8).

Usage (from a repository where the DAG's tokens and pretrained model exist: `make run`, or `dvc repro tokenize
pretrain` in a scratch clone):
    FLUXFORGE_THREADS=1 nice python benchmarks/update_methods.py [--params params.yaml] [--methods ...] [--seeds 0 1 2]
                                                                 [--budget-scale 1.0]

Each method trains the params' stream (its tasks, ordering, schedule and replay slices) with ``stream.method`` set,
``stream.budget.kind: maf`` (each method gets full finetuning's memory-adjusted FLOPs per task), the evaluation-only
merge off (the deployed model is the method's own), a fixed replay ratio (``--replay``, instead of the CMR planner,
which would pick another ratio per method) and no no-replay comparison, once per seed (``stream.train.seed``).
``--budget-scale`` multiplies every task's token budget (a reduced setting for a busy machine). In this process;
the DVC outputs are not touched. Reported per method, mean and 95% t-interval over the seeds: A_KA (accuracy on the
tasks' held-out questions after the stream), A_ZS (accuracy on the base data's), their geometric mean, and
forgetting; then the paired difference to full finetuning, seed by seed. Writes
benchmarks/results/update_methods.json and the "Update methods at equal MAF" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

from fluxforge import paths as P  # noqa: E402
from fluxforge.config import load_params, parse_params, read_params  # noqa: E402
from fluxforge.continual.metrics import continual_metrics  # noqa: E402
from fluxforge.continual.runner import BASE, EvalSets, matrix, run_stream  # noqa: E402
from fluxforge.data.tokenize import load_pretrained_tokenizer  # noqa: E402
from fluxforge.eval.update_methods import METHODS, METRICS, RESULTS, compare  # noqa: E402
from fluxforge.runtime import setup_logging  # noqa: E402


def one_run(args: argparse.Namespace, method: str, seed: int, base_seed: int, tok, evals: EvalSets) -> dict:  # noqa: ANN001
    overrides = [f"stream.method={method}", "stream.budget.kind=maf", "stream.merge.method=none",
                 f"stream.replay.ratio={args.replay}", f"stream.train.seed={base_seed + seed}"]
    raw = read_params(args.params, overrides=overrides)
    for task in raw["stream"]["tasks"]:
        task["budget_tokens"] = int(task["budget_tokens"] * args.budget_scale)
    params = parse_params(raw, args.params)
    t0 = time.perf_counter()
    res = run_stream(params, params.stream, tok, evals)
    seconds = time.perf_counter() - t0
    cols = [*res["order"], BASE]
    m = continual_metrics(matrix(res["rows"], cols, "acc"), higher_is_better=True).to_dict()
    ppl = matrix(res["rows"], cols, "ppl")
    mine = res["budget"]["methods"][method]
    print(f"{method} seed {seed}: A_KA {m['a_ka']:.3f} A_ZS {m['a_zs']:.3f} forgetting {m['forgetting']} "
          f"steps {mine['steps']} in {seconds:.0f} s", flush=True)
    return {"method": method, "seed": seed, "seconds": seconds, **{k: m[k] for k, _, _ in METRICS},
            "base_ppl_rise": ppl[-1][-1] / ppl[0][-1] - 1, "steps": mine["steps"],
            "memory_multiplier": mine["memory_multiplier"], "maf_over_finetune": mine["maf"] / res["budget"]["methods"]["finetune"]["maf"],
            "zero_shot": {"a_zs": res["rows"][0][BASE]["acc"]}}


def section(runs: list[dict], args: argparse.Namespace, methods: list[str], seconds: float, command: str) -> tuple[str, dict]:
    cmp = compare(runs, methods)
    head = "| method | steps per task | memory x | " + " | ".join(label for _, label, _ in METRICS) + " | base ppl rise |"
    lines = [head, "|" + "---|" * (4 + len(METRICS))]
    for row in cmp.rows:
        steps = ", ".join(f"{t} {n}" for t, n in row.steps.items())
        lines.append(f"| {row.method} | {steps} | {row.memory_multiplier:.2f} | "
                     + " | ".join(f"{mu:.3f} ± {h:.3f}" for mu, h in row.cells.values())
                     + f" | {row.ppl_rise[0]:+.1%} ± {row.ppl_rise[1]:.1%} |")
    verdicts = [f"- **{m}**{v[len(m):]}" for m, v in cmp.verdicts.items()]
    finetune = [r for r in runs if r["method"] == "finetune"]
    zero_shot = finetune[0]["zero_shot"]["a_zs"]
    body = (f"Machine: {machine()}. Date: {dt.date.today().isoformat()}. Command: `{command}` "
            f"({seconds / 60:.0f} minutes, FLUXFORGE_THREADS=1 under `nice`; the tokens and pretrained model of "
            f"`dvc repro tokenize pretrain` on the default params in a scratch clone).\n\n"
            f"Setting: the default world's stream ({', '.join(finetune[0]['steps'])}), token budgets x{args.budget_scale:g}, "
            f"`stream.budget.kind: maf` (full finetuning's memory-adjusted FLOPs per task, measured on this model: "
            f"continual/budget.py), replay ratio {args.replay} fixed, the evaluation-only merge off, seeds "
            f"{', '.join(map(str, args.seeds))} (`stream.train.seed`). Accuracy on the held-out multiple-choice questions; "
            f"A_KA over the stream's tasks, A_ZS on the base data (zero-shot A_ZS {zero_shot:.3f}), forgetting "
            f"(Chaudhry et al.) over the first task; mean ± half-width of the 95% t-interval over seeds.\n\n"
            + "\n".join(lines) + "\n\nDirections (a difference is called only when the paired 95% interval excludes 0):\n\n"
            + "\n".join(verdicts) + "\n")
    return body, cmp.summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--replay", type=float, default=0.25, help="fixed replay ratio for every method (default 0.25)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every task's budget_tokens (reduced setting)")
    args = ap.parse_args()
    setup_logging()  # the stream's own log lines (budgets, replay, progress) while it runs
    if "finetune" not in args.methods:
        sys.exit("update_methods compares with full finetuning: keep finetune in --methods")
    params = load_params(args.params)
    if params.stream is None or not (P.TOKENS / "index.json").exists() or not (P.model_dir(params.stream.init) / "config.json").exists():
        sys.exit("update_methods needs the DAG's tokens and the stream's init model: run `dvc repro tokenize pretrain` first")
    tok, evals = load_pretrained_tokenizer(P.TOKENS), EvalSets.for_stream(params, params.stream)
    base_seed = params.stream_train().seed
    t0 = time.perf_counter()
    runs = [one_run(args, m, s, base_seed, tok, evals) for s in args.seeds for m in args.methods]
    seconds = time.perf_counter() - t0
    command = "python benchmarks/update_methods.py " + shlex.join(sys.argv[1:])
    body, summary = section(runs, args, args.methods, seconds, command.strip())
    out = ROOT / RESULTS
    out.write_text(json.dumps({"command": command, "date": dt.date.today().isoformat(), "machine": machine(),
                               "runs": runs, "summary": summary}, indent=1))
    replace_section(ROOT / "BENCHMARKS.md", "Update methods at equal MAF (FoMo-in-Flux)", body)
    print(body)


if __name__ == "__main__":
    main()
