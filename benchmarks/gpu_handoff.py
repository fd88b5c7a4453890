"""What handing the GPU stages to another machine costs a refresh, per hand-off and per stage.

Usage (from the repo root, inside .venv):  python benchmarks/gpu_handoff.py [--profile tiny]

The set-up of tests/test_flow_refresh.py::test_a_refresh_hands_its_gpu_stages_to_a_worker_in_another_checkout, on
one machine: a repository of the pipeline (``--profile`` merged over params.yaml) with an S3 DVC remote on a local
S3 server process (moto), a second clone of it as the "GPU machine" with its own `prefect worker` polling the GPU
pool, and a Prefect server process (Prefect's test harness). `fluxforge refresh --gpu-deployment` then runs the
whole DAG; every stage runs for real (no run-cache is shared). GPU stages that follow one another in DAG order go
over in one hand-off; per hand-off the refresh reports where the time went: here (push the inputs, wait for the GPU
flow run, pull the outputs) and there (pull, each stage, push). The hand-off's cost is what is not the stages' own
work: the flow-run wait minus the stages, plus the transfers here. Writes the "GPU hand-off" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from report_md import machine, replace_section  # noqa: E402

from pipeline_repo import make_repo, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="profile merged over params.yaml (default tiny)")
    args = ap.parse_args()
    os.environ.setdefault("FLUXFORGE_PROGRESS", "0")
    from flows.refresh import refresh
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from fluxforge.orchestrate import storage
    from fluxforge.orchestrate.deploy import DeploySpec, deploy
    from fluxforge.track import servers

    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    with tempfile.TemporaryDirectory() as tmp, servers.s3_server("fluxforge-bench", env=creds, log=Path(tmp) / "s3.log") as s3, \
            prefect_test_harness(server_startup_timeout=120):
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", *storage.ENDPOINT_ENV):
            os.environ.pop(name, None)
        os.environ.update(creds)
        cpu = make_repo(Path(tmp) / "cpu", profile=None if args.profile == "none" else args.profile)
        storage.configure_remote(cpu, f"s3://{s3.bucket}/dvc", s3.endpoint_url)
        run(["git", "commit", "-qam", "DVC remote"], cpu)
        gpu = Path(tmp) / "gpu"
        run(["git", "clone", "-q", str(cpu), str(gpu)], Path(tmp))
        deploy(DeploySpec(root=cpu, gpu_root=gpu))
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        with open(Path(tmp) / "worker.log", "w") as fh:
            worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "fluxforge-gpu",
                                       "--type", "process"], cwd=gpu, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            t0 = time.perf_counter()
            result = refresh(str(cpu), gpu_deployment="fluxforge-gpu-stage/gpu", commit=False)
            total = time.perf_counter() - t0
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    rows, overheads, handed = [], [], 0
    batches = {tuple(h["batch"]): h for h in result["gpu"].values()}
    for batch, h in batches.items():
        here, there = h["seconds_here"], h["seconds_there"]
        own = {s: result["gpu"][s]["seconds_there"]["stage"] for s in batch}
        overhead = here["flow_run"] - sum(own.values()) + here["push"] + here["pull"]
        overheads.append(overhead)
        handed += len(batch)
        rows.append(f"| {', '.join(f'`{s}`' for s in batch)} | {here['push']:.1f} | {here['flow_run']:.1f} | "
                    f"{here['pull']:.1f} | {there['pull']:.1f} | {' + '.join(f'{v:.1f}' for v in own.values())} | "
                    f"{there['push']:.1f} | {overhead:.1f} |")
    command = "python benchmarks/gpu_handoff.py " + " ".join(sys.argv[1:])
    body = (f"Machine: {machine()}. Date: {dt.date.today().isoformat()}. Command: `{command.strip()}` (profile "
            f"{args.profile}; both checkouts, the S3 server and the Prefect server on this machine, so transfers are "
            f"loopback: a real GPU machine adds the network).\n\n"
            f"The whole refresh took {total:.0f} s, {handed} stages handed over in {len(rows)} hand-off(s). Seconds per "
            "hand-off; its cost = the flow-run wait minus the stages' own time, plus the push and pull here:\n\n"
            "| stages | here: push | here: wait for the GPU flow run | here: pull | there: pull | there: each stage | "
            "there: push | hand-off cost |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\nHand-off cost {sum(overheads):.1f} s in all, {sum(overheads) / handed:.1f} s per GPU stage: a flow "
            "run's start on the worker (a fresh Python process that imports Prefect and the flow) and the DVC "
            "transfers, paid once for consecutive GPU stages.\n")
    replace_section(ROOT / "BENCHMARKS.md", "GPU hand-off", body)
    print(body)


if __name__ == "__main__":
    main()
