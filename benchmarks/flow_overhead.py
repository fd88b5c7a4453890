"""What Prefect orchestration costs per stage, over plain `dvc repro`.

Usage (from the repo root, inside .venv):  python benchmarks/flow_overhead.py [--profile profiles/tiny.yaml]

Two fresh clones of HEAD with the same params: one reproduced by `dvc repro`, one by the refresh
flow (`fluxforge refresh --no-commit`, Prefect's temporary server, no DVC remote). Both are then
run again with nothing to do. Overhead per stage = (flow time - dvc time) / number of stages.
The temporary server's start-up (about 4 s once its database exists; the benchmark creates the
database first, untimed) is part of the flow's time: it is what a local refresh pays.
Writes the "Prefect flow overhead" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

from fluxforge.config import dump_params, read_params  # noqa: E402


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="profiles/tiny.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLUXFORGE_PROGRESS": "0",
               "PREFECT_HOME": str(Path(tmp) / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_URL", None)
        repos = {}
        for kind in ("dvc", "flow"):
            repos[kind] = Path(tmp) / kind
            subprocess.run(["git", "clone", "-q", str(ROOT), str(repos[kind])], check=True)
            merged = read_params(ROOT / "params.yaml", profile=args.profile)  # the profile is an overlay
            (repos[kind] / "params.yaml").write_text(dump_params(merged))
        n = len(subprocess.run([str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=repos["dvc"], capture_output=True,
                               text=True, env=env).stdout.split())
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
        warm = "from prefect import flow\n@flow\ndef f():\n    return 1\nf()"
        timed([sys.executable, "-c", warm], Path(tmp), env)  # migrate the temporary server's database once, untimed
        refresh = [str(BIN / "fluxforge"), "refresh", "--no-commit"]
        cold = {"dvc": timed(["dvc", "repro"], repos["dvc"], env), "flow": timed(refresh, repos["flow"], env)}
        noop = {"dvc": timed(["dvc", "repro"], repos["dvc"], env), "flow": timed(refresh, repos["flow"], env)}
    rows = "\n".join(f"| {what} | {t['dvc']:.1f} | {t['flow']:.1f} | {(t['flow'] - t['dvc']) / n:+.2f} |"
                     for what, t in (("cold run, every stage runs", cold), ("second run, nothing to do", noop)))
    body = f"""Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/python benchmarks/flow_overhead.py --profile {args.profile}`
(fresh `git clone`s of HEAD; {n} stages; the flow runs on Prefect's temporary local server, started by each run,
its database created beforehand).

| run | `dvc repro` s | refresh flow s | overhead per stage s |
|---|---|---|---|
{rows}
"""
    replace_section(ROOT / "BENCHMARKS.md", "Prefect flow overhead", body)
    print(body)


if __name__ == "__main__":
    main()
