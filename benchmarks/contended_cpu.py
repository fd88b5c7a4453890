"""Training step time of the default pretrain model alone and with a busy process holding one core.

Why: on a 2-core machine where another process spins on one core (a CI neighbour, a browser, a pod on a shared
node), torch's default thread pool (one spinning OpenMP thread per core) collapses: each step waits for the
thread that shares its core with the neighbour. This measures the thread choices against that collapse:
``threads`` x ``OMP_WAIT_POLICY`` (the OpenMP runtime reads it at start, so each variant runs in its own
process), quiet and contended (a ``while True`` process pinned to CPU 0 for the whole measurement).

Usage (inside .venv, on an otherwise idle machine):
    python benchmarks/contended_cpu.py [--steps 30] [--params params.yaml]
Writes the "Contended CPU" section of BENCHMARKS.md (machine, date, command, the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

VARIANTS = [  # (threads, OpenMP settings); "" = the runtime's default
    (2, ""), (2, "OMP_WAIT_POLICY=PASSIVE"), (2, "GOMP_SPINCOUNT=1000"), (2, "GOMP_SPINCOUNT=100"), (1, ""),
]
WARMUP = 5
CHOICE = ("`default` is libgomp's own (an idle thread spins 300,000 times before it sleeps). FluxForge sets "
          "`GOMP_SPINCOUNT=1000` when `fluxforge` is imported, unless `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY` is "
          "already set (`fluxforge.runtime.OPENMP_DEFAULTS`; tests/test_runtime.py checks a stage process has it before "
          "torch loads): the contended step stays within 2.5x of the quiet one at almost no quiet cost, where a passive "
          "policy or one thread gives up more of the quiet speed.\n")


def spin() -> None:
    os.sched_setaffinity(0, {0})
    while True:
        pass


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process: median seconds per training step after a warm-up."""
    import numpy as np
    import torch  # before fluxforge: the variant's settings reach libgomp, not fluxforge's default

    from fluxforge.config import load_params
    from fluxforge.train.loop import train
    from fluxforge.train.model import build_model
    from fluxforge.train.sampler import MixtureSampler

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = params.pretrain.model_copy(update={"steps": args.steps + WARMUP, "log_every": 1, "probe_every": 0,
                                             "checkpoint_every": 10**9})
    vocab = params.tokenizer.vocab_size
    stream = np.random.default_rng(0).integers(2, vocab, 400_000).astype(np.uint16)
    sampler = MixtureSampler({"x": stream}, {"x": 1.0}, cfg.seq_len, cfg.batch_size, seed=0)
    model = build_model(params.model, vocab, 0, 1)
    os.environ["FLUXFORGE_THREADS"] = str(args.threads)
    hist = train(model, sampler, cfg, desc="contended-cpu")
    elapsed = [r["elapsed"] for r in hist]
    steps = [b - a for a, b in zip(elapsed, elapsed[1:])][WARMUP - 1:]
    print(json.dumps({"step_s": statistics.median(steps), "threads": torch.get_num_threads()}))


def measure(threads: int, policy: str, contended: bool, args: argparse.Namespace) -> dict:
    env = {**os.environ, "FLUXFORGE_PROGRESS": "0", "FLUXFORGE_MFU": "0", "PYTHONPATH": str(ROOT / "src")}
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(key, None)
    if policy:
        key, value = policy.split("=")
        env[key] = value
    busy = mp.Process(target=spin, daemon=True) if contended else None
    if busy:
        busy.start()
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps),
                              "--params", args.params], env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if busy:
            busy.terminate()
            busy.join()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="processes per measurement (the median is kept)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for threads, policy in VARIANTS:  # each process's median step; the median over --repeats processes
        quiet = statistics.median(measure(threads, policy, False, args)["step_s"] for _ in range(args.repeats))
        busy = statistics.median(measure(threads, policy, True, args)["step_s"] for _ in range(args.repeats))
        rows.append((threads, policy or "default", quiet, busy))
        print(f"threads {threads} {policy or 'default':8s} quiet {quiet:.3f} s/step, contended {busy:.3f} s ({busy / quiet:.1f}x)",
              flush=True)
    lines = ["| torch threads | OpenMP setting | quiet s/step | contended s/step | contended / quiet |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {p} | {q:.3f} | {b:.3f} | {b / q:.1f}x |" for t, p, q, b in rows]
    body = (f"Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/contended_cpu.py "
            f"--steps {args.steps} --repeats {args.repeats}`.\n\nThe default pretrain model and batch (params.yaml), median step time over "
            f"{args.steps} steps after {WARMUP} warm-up steps (the median of {args.repeats} processes); contended = a busy-looping process pinned to CPU 0.\n\n"
            + "\n".join(lines) + "\n\n" + CHOICE)
    replace_section(ROOT / "BENCHMARKS.md", "Contended CPU", body)
    print(body)


if __name__ == "__main__":
    main()
