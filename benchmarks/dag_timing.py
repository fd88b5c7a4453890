"""Time the whole DAG: a cold `make run` (`dvc repro` under the warm stage runner) in a fresh clone, a no-op rerun,
a one-param change, and with --plain the same cold run with plain `dvc repro` (every stage a fresh process).

Usage (from the repo root, inside .venv):
    python benchmarks/dag_timing.py [--profile params.yaml] [--install] [--lock] [--plain]
Writes the "DAG timing" section of BENCHMARKS.md with the machine, the date and the command, and what `make run`
prints when that cold run ends (`fluxforge summary`, the clone's path shown as /path/to/repo) to
benchmarks/results/summary-<profile>.txt: the README's sample summary is that file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

from fluxforge.config import dump_params, read_params  # noqa: E402


def sh(cmd: list[str], cwd: Path, bin_dir: Path = BIN, starts: list[tuple[str, float]] | None = None) -> tuple[float, str]:
    """Run ``cmd`` as `make run` would (its venv first on PATH, bytecode cached on import); ``starts`` collects
    (stage, seconds since the command started) as DVC announces each stage."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FLUXFORGE_PROGRESS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the Makefile unexports it
    env["PYTHONUNBUFFERED"] = "1"  # DVC's "Running stage" lines arrive when printed, not when a pipe buffer fills
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if starts is not None and (m := re.match(r"Running stage '([^']+)'", line)):
            starts.append((m.group(1), time.perf_counter() - t0))
    proc.wait()
    took, out = time.perf_counter() - t0, "".join(lines)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out[-6000:]}")
    return took, out


REPRO = ["fluxforge", "warm", "dvc", "repro"]  # what `make run` runs (the Makefile's run target)


def cached_outs(lock: Path) -> dict[str, str]:
    """The md5 of every data and model output in a dvc.lock, by stage and path (not metrics, plots and reports,
    which carry timings: tests/pipeline_repo.py's cached_out_hashes)."""
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {f"{name}:{out['path']}": out.get("md5", "") for name, st in stages.items() for out in st.get("outs", [])
            if not out["path"].startswith(("metrics", "plots", "reports"))}


def stage_walls(starts: list[tuple[str, float]], total: float) -> dict[str, float]:
    """Each stage's wall under `dvc repro`: from DVC announcing it to DVC announcing the next (the last: to the end),
    so it holds the process start-up, the work and DVC's bookkeeping of its outputs."""
    ends = [t for _, t in starts[1:]] + [total]
    return {name: end - start for (name, start), end in zip(starts, ends)}


def summary_header(args: argparse.Namespace) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (f"`fluxforge summary` after the cold run (`fluxforge warm dvc repro`) of benchmarks/dag_timing.py --profile {args.profile} "
            f"({commit}, {machine()}, {dt.date.today()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="params.yaml", help="profile merged over params.yaml (default: the default run)")
    ap.add_argument("--install", action="store_true",
                    help="time `make install` in the clone and run the DAG on that fresh .venv (what `make run` does)")
    ap.add_argument("--lock", action="store_true",
                    help="copy the cold run's dvc.lock into this checkout (the committed record of the default run)")
    ap.add_argument("--plain", action="store_true",
                    help="also time a cold plain `dvc repro` (no warm stage runner) in a second clone, and check that "
                    "both runs cached the same outputs")
    args = ap.parse_args()
    if args.lock and args.profile != "params.yaml":
        ap.error("--lock records the default run only (no --profile)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        if args.profile != "params.yaml":  # a profile is an overlay over the clone's params.yaml
            (repo / "params.yaml").write_text(dump_params(read_params(ROOT / "params.yaml", profile=args.profile)))
        bin_dir, install = BIN, None
        if args.install:
            install, _ = sh(["make", "install"], repo)
            bin_dir = repo / ".venv" / "bin"
        starts: list[tuple[str, float]] = []
        total, log = sh(REPRO, repo, bin_dir, starts)
        walls = stage_walls(starts, total)
        _, summary = sh(["fluxforge", "summary"], repo, bin_dir)  # what `make run` prints when the cold run ends
        (RESULTS / f"summary-{Path(args.profile).stem}.txt").write_text(
            f"# {summary_header(args)}\n" + summary.replace(str(repo), "/path/to/repo"))
        if args.lock:
            (ROOT / "dvc.lock").write_text((repo / "dvc.lock").read_text())
        lock_of_cold_run = Path(tmp) / "cold-dvc.lock"
        lock_of_cold_run.write_text((repo / "dvc.lock").read_text())
        stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"stage '([^']+)' done in ([0-9.]+) s", log)}
        noop, log2 = sh(REPRO, repo, bin_dir)
        assert "Running stage" not in log2, "second repro was expected to be a no-op"
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["distill"]["temperature"] += 1.0
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        change, log3 = sh(REPRO, repo, bin_dir)
        rerun = re.findall(r"Running stage '([^']+)'", log3)
        ev = json.loads((repo / "metrics" / "eval.json").read_text())
        plain_total, plain_walls, same = None, {}, None
        if args.plain:
            plain = Path(tmp) / "plain"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(plain)], check=True)
            if args.profile != "params.yaml":  # the first clone's params before its temperature change
                (plain / "params.yaml").write_text(dump_params(read_params(ROOT / "params.yaml", profile=args.profile)))
            plain_starts: list[tuple[str, float]] = []
            plain_total, _ = sh(["dvc", "repro"], plain, bin_dir, plain_starts)
            plain_walls = stage_walls(plain_starts, plain_total)
            same = cached_outs(plain / "dvc.lock") == cached_outs(lock_of_cold_run)
    rows = "\n".join(f"| `{s}` | {t:.1f} | {walls.get(s, float('nan')):.1f} | {walls.get(s, float('nan')) - t:.1f} |"
                     + (f" {plain_walls.get(s, float('nan')):.1f} |" if args.plain else "") for s, t in stages.items())
    plain_head = (" plain `dvc repro` wall (s) |", "---|") if args.plain else ("", "")
    plain_row = (f"| cold plain `dvc repro`, whole DAG (every stage a fresh process; a second clone) | {plain_total:.1f} |\n"
                 if args.plain else "")
    plain_text = (f"\n\nThe plain run's data and models are {'bit for bit' if same else 'NOT'} the warm run's (every "
                  f"`outs` hash of the two dvc.lock files but metrics, plots and reports, which carry timings).") \
        if args.plain else ""
    outside = total - sum(stages.values())
    t = ev["tests"]["cyber"]
    flags = " --install" * args.install + " --lock" * args.lock + " --plain" * args.plain
    install_row = f"| `make install` (a new .venv; pip's and uv's caches already on the machine) | {install:.1f} |\n" if install else ""
    body = f"""Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/dag_timing.py --profile {args.profile}{flags}`
(a fresh `git clone` of HEAD, so it times what is committed; {"the DAG runs on the clone's own new .venv, as `make run` does" if install else "the install is not included"}).

| measurement | seconds |
|---|---|
{install_row}| cold `make run`'s DAG (`fluxforge warm dvc repro`: each stage forked from the warm stage runner) | {total:.1f} |
{plain_row}| second run (every stage up to date) | {noop:.1f} |
| run after changing `distill.temperature` (reran: {', '.join(rerun)}) | {change:.1f} |

Each stage in the cold run: its work (from the stage's own log line), its wall under `dvc repro` (from DVC announcing
it to DVC announcing the next) and the difference, which is the stage's start (the fork, the stage's own modules,
MLflow's store, DVC's stage hash) and DVC's bookkeeping of its outputs: {outside:.0f} s of the cold run over
{len(stages)} stages.{plain_text}

| stage | work (s) | wall (s) | start-up and bookkeeping (s) |{plain_head[0]}
|---|---|---|---|{plain_head[1]}
{rows}

Learning in that run: cyber multiple-choice accuracy {t['acc_pretrain']:.3f} (pretrained) -> {t['acc_final']:.3f} (after the cyber update)
over {t['n']} questions; one-sided exact McNemar p = {t['p_final_vs_pretrain']:.1e}; one-sided binomial p against chance (0.25) = {t['p_final_vs_chance']:.1e}.
General held-out perplexity: untrained {ev['models']['untrained']['general']['ppl']:.1f}, pretrained {ev['models']['pretrain']['general']['ppl']:.1f},
final {ev['models'][ev['final']]['general']['ppl']:.1f}.
"""
    replace_section(ROOT / "BENCHMARKS.md", "DAG timing", body)
    print(body)
    print(f"(python {platform.python_version()})")


if __name__ == "__main__":
    main()
