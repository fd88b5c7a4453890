"""Time the whole DAG: a cold `dvc repro` in a fresh clone, a no-op rerun, and a one-param change.

Usage (from the repo root, inside .venv):  python benchmarks/dag_timing.py [--profile params.yaml] [--lock]
Writes the "DAG timing" section of BENCHMARKS.md with the machine, the date and the command.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

from fluxforge.config import dump_params, read_params  # noqa: E402


def sh(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLUXFORGE_PROGRESS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="params.yaml", help="profile merged over params.yaml (default: the default run)")
    ap.add_argument("--lock", action="store_true",
                    help="copy the cold run's dvc.lock into this checkout (the committed record of the default run)")
    args = ap.parse_args()
    if args.lock and args.profile != "params.yaml":
        ap.error("--lock records the default run only (no --profile)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        if args.profile != "params.yaml":  # a profile is an overlay over the clone's params.yaml
            (repo / "params.yaml").write_text(dump_params(read_params(ROOT / "params.yaml", profile=args.profile)))
        total, log = sh(["dvc", "repro"], repo)
        if args.lock:
            (ROOT / "dvc.lock").write_text((repo / "dvc.lock").read_text())
        stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"stage '([^']+)' done in ([0-9.]+) s", log)}
        noop, log2 = sh(["dvc", "repro"], repo)
        assert "Running stage" not in log2, "second repro was expected to be a no-op"
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["distill"]["temperature"] += 1.0
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        change, log3 = sh(["dvc", "repro"], repo)
        rerun = re.findall(r"Running stage '([^']+)'", log3)
        ev = json.loads((repo / "metrics" / "eval.json").read_text())
    rows = "\n".join(f"| `{s}` | {t:.1f} |" for s, t in stages.items())
    t = ev["tests"]["cyber"]
    body = f"""Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/dag_timing.py --profile {args.profile}`
(a fresh `git clone` of HEAD, so it times what is committed; the install is not included).

| measurement | seconds |
|---|---|
| cold `dvc repro`, whole DAG | {total:.1f} |
| second `dvc repro` (every stage up to date) | {noop:.1f} |
| `dvc repro` after changing `distill.temperature` (reran: {', '.join(rerun)}) | {change:.1f} |

Work inside each stage (from the stage's own log line; the rest of the cold run is process start-up and DVC bookkeeping):

| stage | seconds |
|---|---|
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
