"""Start-up of each DVC stage before its work begins: a fresh process importing ``stages.<name>``.

Why: a tiny stage does about a second of work, so its start-up is most of what `make run` and the end-to-end
tests wait for. Two conditions per stage, each in fresh processes, median of ``--repeats``:

- ``cached``: Python reads cached bytecode (what any command run through make leaves: the Makefile unexports
  PYTHONDONTWRITEBYTECODE, so Python caches each module the first time a run imports it);
- ``no bytecode``: Python compiles every module from source, as it did on machines that set
  PYTHONDONTWRITEBYTECODE (CI images, containers) before make stopped passing it on: simulated with -B and an empty
  PYTHONPYCACHEPREFIX, so no cached file is read and none is written.

Usage (inside .venv, on an otherwise idle machine):
    python benchmarks/stage_startup.py [--repeats 3]
Writes the "Stage start-up" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

# What the stages load, one library at a time, each in a fresh process: the floor under a stage's start-up that no
# change of ours can lower. {db} is an MLflow SQLite store that already has its tables (a stage's second run on).
LIBRARIES = [
    ("the interpreter alone", "pass"),
    ("`import torch`", "import torch"),
    ("`from transformers import LlamaForCausalLM` (torch included)", "from transformers import LlamaForCausalLM"),
    ("`import mlflow`", "import mlflow"),
    ("`import mlflow` and opening its SQLite store", "import mlflow; mlflow.MlflowClient(tracking_uri='sqlite:///{db}').search_experiments()"),
    ("`import great_expectations` (validate, dedup, mm_curate)", "import great_expectations"),
    ("`import dvc.repo` (the lineage tag's stage hash)", "import dvc.repo"),
]


def seconds(code: str, env: dict[str, str], flags: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def import_seconds(module: str, env: dict[str, str], flags: list[str]) -> float:
    return seconds(f"import {module}", env, flags)


def library_rows(env: dict[str, str], repeats: int, db: Path) -> list[tuple[str, float]]:
    rows = []
    for label, code in LIBRARIES:
        code = code.format(db=db)
        seconds(code, env, [])  # warm the page cache (and create the store's tables)
        rows.append((label, statistics.median(seconds(code, env, []) for _ in range(repeats))))
        print(f"{label:70s} {rows[-1][1]:5.2f} s", flush=True)
    return rows


WARM_NOTE = ('Under `make run` (and the Prefect refresh, `fluxforge run`, `fluxforge rebuild`) a stage does not start fresh: it is forked from the warm stage runner, which imported all of this once (src/fluxforge/warm.py); "DAG timing" shows what a stage\'s start costs then. These numbers are what plain `dvc repro` and `fluxforge stage` still pay per stage.')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    stages = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
    base = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    rows = []
    with tempfile.TemporaryDirectory() as empty:
        cold = {**base, "PYTHONPYCACHEPREFIX": empty}
        for name in stages:
            module = f"stages.{name}"
            import_seconds(module, base, [])  # warm the page cache
            cached = statistics.median(import_seconds(module, base, []) for _ in range(args.repeats))
            source = statistics.median(import_seconds(module, cold, ["-B"]) for _ in range(args.repeats))
            rows.append((name, cached, source))
            print(f"{name:14s} cached {cached:5.2f} s   no bytecode {source:5.2f} s", flush=True)
        libraries = library_rows(base, args.repeats, Path(empty) / "mlflow.db")
    lines = ["| stage | start-up, bytecode cached (s) | start-up, no bytecode (s) |", "|---|---|---|"]
    lines += [f"| `{n}` | {c:.2f} | {s:.2f} |" for n, c, s in rows]
    floor = ["| what a fresh process loads | seconds, bytecode cached |", "|---|---|"]
    floor += [f"| {label} | {sec:.2f} |" for label, sec in libraries]
    med_c, med_s = statistics.median(r[1] for r in rows), statistics.median(r[2] for r in rows)
    body = (f"Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/stage_startup.py "
            f"--repeats {args.repeats}`.\n\nSeconds for a fresh process to import the stage module (everything a stage "
            f"loads before its work starts), median of {args.repeats}. Median over stages: {med_c:.2f} s with the "
            f"bytecode Python caches under make, {med_s:.2f} s without it (every module compiled from source on each "
            f"start, which is what a PYTHONDONTWRITEBYTECODE machine did before).\n\n" + "\n".join(lines) + "\n\n"
            f"The libraries under those numbers, each alone in a fresh process (median of {args.repeats}): the floor of "
            f"a stage's start-up, which lazy imports of our own cannot lower. A training stage loads transformers' model "
            f"classes when it imports, then MLflow and its store when its run starts, and DVC for its lineage tag.\n\n"
            + "\n".join(floor) + "\n\n" + WARM_NOTE + "\n")
    replace_section(ROOT / "BENCHMARKS.md", "Stage start-up", body)
    print(body)


if __name__ == "__main__":
    main()
