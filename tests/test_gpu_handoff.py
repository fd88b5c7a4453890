"""GPU stages handed off for real: `fluxforge refresh --gpu-deployment` on one checkout, a `prefect worker` polling
the GPU pool in a second checkout (its own clone), the two sharing only a Prefect server process and the S3 (moto)
DVC remote. The GPU stages run in the worker's checkout, their outputs come back through the remote, and the final
dvc.lock equals a plain single-machine `dvc repro` of the same params (the session's `tiny_repo`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fluxforge.orchestrate import dag
from fluxforge.orchestrate.storage import configure_remote
from fluxforge.track.servers import create_bucket
from pipeline_repo import BIN, ROOT, cached_out_hashes, run
from servers import PrefectServer, S3Server

pytestmark = pytest.mark.slow  # a Prefect server, a worker and the tiny DAG with four stages handed over

POOL, DEPLOYMENT, BUCKET = "fluxforge-gpu", "fluxforge-gpu-stage/gpu", "fluxforge-handoff"


def _env(server: PrefectServer, s3: S3Server, checkout: Path) -> dict[str, str]:
    """One machine's environment: the shared Prefect API and S3 store, its own checkout's code first on the path."""
    env = {**os.environ, **s3.env, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(checkout / ".prefect"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": f"{checkout / 'src'}{os.pathsep}{checkout}",
           "FLUXFORGE_PROGRESS": "0", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _stage_runs(checkout: Path) -> dict[str, set[str]]:
    """{stage: MLflow run ids} in this checkout's own store (tracking.tracking_uri: sqlite:///mlflow.db)."""
    db = checkout / "mlflow.db"
    if not db.exists():
        return {}
    runs: dict[str, set[str]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        for stage, run_id in con.execute("SELECT value, run_uuid FROM tags WHERE key = 'fluxforge.stage'"):
            runs.setdefault(stage, set()).add(run_id)
    return runs


def _checkouts(tiny_repo, tmp_path: Path, s3: S3Server, gpu_stages: set[str]) -> tuple[Path, Path]:
    """The refresh's checkout: the session's reproduced tiny repo with every output in the shared remote, then the GPU
    stages' outputs and dvc.lock entries removed (so only they and what reads them are out of date); and the GPU
    machine's checkout: a git clone of it, with no output at all."""
    cpu = tmp_path / "cpu"
    shutil.copytree(tiny_repo[0], cpu, symlinks=True)
    run([sys.executable, "-m", "dvc", "checkout", "--force"], cpu)  # other tests may have changed the shared repo
    shutil.copytree(ROOT / "infra" / "work-pools", cpu / "infra" / "work-pools")  # the project's pool templates
    create_bucket(s3.endpoint_url, BUCKET, s3.env)
    configure_remote(cpu, f"s3://{BUCKET}/cache", endpoint_url=s3.endpoint_url)
    subprocess.run([sys.executable, "-m", "dvc", "push"], cwd=cpu, env={**os.environ, **s3.env}, check=True, capture_output=True)
    lock = yaml.safe_load((cpu / "dvc.lock").read_text())
    for name in gpu_stages:
        for out in lock["stages"].pop(name)["outs"]:
            target = cpu / out["path"]
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    (cpu / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "add", "-A"], cpu)
    run(["git", "commit", "-qm", "the DAG on a shared DVC remote; GPU stages to run"], cpu)
    gpu = tmp_path / "gpu"
    run(["git", "clone", "-q", str(cpu), str(gpu)], tmp_path)  # the GPU machine's own clone: nothing else shared
    return cpu, gpu


def test_refresh_hands_gpu_stages_to_a_worker_in_another_checkout(prefect_server: PrefectServer, s3_server: S3Server,
                                                                  tiny_repo, tmp_path):
    gpu_stages = {s.name for s in dag.read(tiny_repo[0]) if s.gpu}
    assert {"pretrain", "distill"} < gpu_stages and any(s.startswith("continual@") for s in gpu_stages)
    cpu, gpu = _checkouts(tiny_repo, tmp_path, s3_server, gpu_stages)
    runs_before = _stage_runs(cpu)
    gpu_env, cpu_env = _env(prefect_server, s3_server, gpu), _env(prefect_server, s3_server, cpu)

    # a CPU machine stands in for the GPU one: the pool's template asks for CUDA, this deployment for DeepSpeed on CPU
    deploy = ("from pathlib import Path; from fluxforge.orchestrate.deploy import DeploySpec, deploy; "
              "deploy(DeploySpec(root=Path('.'), gpu_job_variables={'env': {'DS_ACCELERATOR': 'cpu', 'CUDA_VISIBLE_DEVICES': ''}}))")
    subprocess.run([sys.executable, "-c", deploy], cwd=gpu, env=gpu_env, check=True, capture_output=True)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                                  cwd=gpu, env=gpu_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        refresh = subprocess.run([str(BIN / "fluxforge"), "refresh", "--root", str(cpu), "--gpu-deployment", DEPLOYMENT],
                                 cwd=cpu, env=cpu_env, capture_output=True, text=True, timeout=900)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    out = refresh.stdout + refresh.stderr
    assert refresh.returncode == 0, f"refresh failed:\n{out[-4000:]}\nworker:\n{log.read_text()[-4000:]}"

    handed = dict(re.findall(r"gpu: (\S+) ran in (\S+) \(ran\)", out))
    assert handed == {s: str(gpu.resolve()) for s in gpu_stages}, out[-3000:]
    # each GPU stage logged its MLflow run in the worker's checkout, and no new one in the refresh's
    runs_gpu, runs_cpu = _stage_runs(gpu), _stage_runs(cpu)
    assert gpu_stages <= set(runs_gpu), runs_gpu.keys()
    assert all(runs_cpu.get(s, set()) == runs_before.get(s, set()) for s in gpu_stages), "a GPU stage ran in the refresh's checkout"

    # the outputs came back through the remote: the refresh's dvc.lock equals a single-machine dvc repro's
    lock = yaml.safe_load((cpu / "dvc.lock").read_text())
    assert cached_out_hashes(lock) == tiny_repo[1]
    for name in gpu_stages:
        for o in lock["stages"][name]["outs"]:
            assert (cpu / o["path"]).exists(), f"{o['path']} of {name} did not come back"
    status = run([sys.executable, "-m", "dvc", "status"], cpu).stdout
    assert "up to date" in status.lower() or status.strip() == "", status
