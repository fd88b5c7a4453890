"""The Prefect refresh flow runs the same DAG as `dvc repro`, with the same results."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from pipeline_repo import cached_out_hashes, make_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect_home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


SECRET = "fake-secret-Zq8v2LmN4pXw"  # planted in the environment of the whole refresh


# The stages the flow runs for real (a data stage and a training stage, the one a thread count or a seed in the
# flow's environment would change); every other one it restores from the run-cache of the session's tiny repo
# (reproduced by plain `dvc repro`), which it can only do if what these produced under the flow matches that repo
# bit for bit: a stage downstream of a differing output misses the run-cache and runs. register, mm_register (their
# outputs are `persist`, never restored) and report (it reads register's fresh metrics) always run. The whole DAG
# run for real under the flow cost three minutes of a CI worker.
RUN_FOR_REAL = frozenset({"world", "pretrain"})


def test_flow_runs_every_stage_in_order_and_matches_plain_repro(prefect_api, tmp_path, tiny_repo, monkeypatch):
    from flows.refresh import refresh

    from fluxforge.orchestrate import dag
    from pipeline_repo import seed_run_cache

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake-key-id")
    flow_repo = make_repo(tmp_path / "flow")
    stages = dag.names(flow_repo)
    assert stages[0] == "world" and stages[-1] == "report"
    assert stages.index("continual@slice2022") < stages.index("continual@cyber") < stages.index("distill")
    plain_repo, plain_hashes = tiny_repo
    assert len(seed_run_cache(plain_repo, flow_repo, run=RUN_FOR_REAL)) == len(RUN_FOR_REAL)

    state = refresh(str(flow_repo), return_state=True)
    result = state.result()
    assert list(result["stages"]) == stages  # every stage, in the DAG's order
    ran = {s for s, how in result["stages"].items() if how == "ran"}
    assert ran == RUN_FOR_REAL | {"register", "mm_register", "report"}, result["stages"]
    assert {how for s, how in result["stages"].items() if s not in ran} == {"restored"}
    # the flow's outputs are plain `dvc repro`'s: those it ran, and so (run-cache hits) everything that reads them
    flow_hashes = cached_out_hashes(yaml.safe_load((flow_repo / "dvc.lock").read_text()))
    assert flow_hashes == plain_hashes
    assert {"data/world", "data/tokens", "models/pretrain", "models/continual/cyber", "models/student"} <= set(flow_hashes)

    # the refresh committed what it ran, naming the model version; a second refresh changes nothing
    log = subprocess.run(["git", "log", "-1", "--format=%s", "--name-only"], cwd=flow_repo, capture_output=True, text=True).stdout
    assert log.startswith("refresh: fluxforge-lm v1 (champion)") and "dvc.lock" in log
    assert result["commit"] and result["model"]["promoted"] is True

    # the version points at that commit, which holds its params and its dvc.lock: it can be rebuilt from it
    import mlflow

    tags = mlflow.MlflowClient(tracking_uri=f"sqlite:///{flow_repo / 'mlflow.db'}").get_model_version("fluxforge-lm", "1").tags
    assert tags["git_commit"] == result["commit"] and tags["git_dirty"] == "false" and result["model"]["rebuildable"]
    parent = subprocess.run(["git", "rev-parse", f"{result['commit']}^"], cwd=flow_repo, capture_output=True, text=True)
    assert tags["git_commit.at_registration"].startswith(f"{parent.stdout.strip()} dirty, diff sha256 ")  # as registered
    shown = subprocess.run(["git", "show", f"{tags['git_commit']}:dvc.lock"], cwd=flow_repo, capture_output=True, text=True)
    model = next(o["md5"] for o in yaml.safe_load(shown.stdout)["stages"]["continual@cyber"]["outs"]
                 if o["path"] == "models/continual/cyber")
    assert model == flow_hashes["models/continual/cyber"] == json.loads(tags["fluxforge.lineage"])[0]["outs"]["models/continual/cyber"]
    assert result["watermark"]["after"] and result["watermark"]["new_documents"] is None  # first refresh: no watermark before

    from fluxforge.orchestrate.flows import stages_to_run

    assert stages_to_run(flow_repo) == set()
    report_code = flow_repo / "src" / "fluxforge" / "eval" / "report" / "studies.py"
    original = report_code.read_text()
    report_code.write_text(original + "\n# edited\n")
    assert stages_to_run(flow_repo) == {"report"}
    image_branch = {s for s in stages if s.startswith(("mm_", "mae@", "clip_"))}  # does not read ingest's output
    assert image_branch and stages_to_run(flow_repo, force={"ingest"}) == set(stages) - {"world"} - image_branch
    report_code.write_text(original)

    again = refresh(str(flow_repo))
    assert set(again["stages"].values()) == {"up to date"} and again["commit"] is None
    assert again["watermark"]["new_documents"] == 0

    # an image-branch param changes (its registry gate): the refresh reruns what reads it and registers a new
    # fluxforge-clip version through that gate, the language stages and the image training stay up to date (which
    # image stages a stream param reruns is test_mm_e2e's)
    params = yaml.safe_load((flow_repo / "params.yaml").read_text())
    params["mm"]["register"]["gate"]["min_recall5_over_chance"] = 0.5
    (flow_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    image = refresh(str(flow_repo))
    assert {s for s, how in image["stages"].items() if how != "up to date"} == {"mm_register", "report"}
    clip = mlflow.MlflowClient(tracking_uri=f"sqlite:///{flow_repo / 'mlflow.db'}").get_model_version("fluxforge-clip", "2")
    assert clip.tags["gate"] in ("passed", "failed") and clip.tags["gate.reasons"]
    assert json.loads((flow_repo / "metrics" / "mm_register.json").read_text())["version"] == "2"

    # the planted secret is nowhere: not in dvc.lock or params, MLflow's store, or the flow run's Prefect logs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert len(logs) > 10 and not any(SECRET in log.message for log in logs)
    for path in ("dvc.lock", "params.yaml", "mlflow.db"):
        assert SECRET.encode() not in (flow_repo / path).read_bytes(), path
    assert not any(SECRET.encode() in f.read_bytes() for f in (flow_repo / "mlruns").rglob("*") if f.is_file())


def test_a_failing_stage_stops_the_flow_with_its_message(prefect_api, tmp_path):
    from flows.refresh import refresh

    repo = make_repo(tmp_path / "bad")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["world"]["years"] = [2022, 2021]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(Exception, match="years must be strictly increasing"):
        refresh(str(repo))


def test_deployments_read_back_with_pool_schedule_and_job_variables(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    from fluxforge.orchestrate.deploy import DeploySpec, deploy
    from pipeline_repo import ROOT

    ids = deploy(DeploySpec(root=ROOT, cron="0 4 * * 1", timezone="Europe/Berlin",
                            gpu_job_variables={"env": {"CUDA_VISIBLE_DEVICES": "0"}}))
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment(ids["fluxforge-refresh/nightly"])
        gpu = client.read_deployment(ids["fluxforge-gpu-stage/gpu"])
        gpu_pool = client.read_work_pool("fluxforge-gpu")
    assert nightly.work_pool_name == "fluxforge-cpu" and nightly.entrypoint == "flows/refresh.py:refresh"
    cron = nightly.schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 4 * * 1", "Europe/Berlin")
    assert nightly.parameters["gpu_deployment"] == "fluxforge-gpu-stage/gpu"
    assert nightly.global_concurrency_limit.limit == 1  # a late refresh waits; two never share one checkout
    assert gpu.work_pool_name == "fluxforge-gpu" and gpu.job_variables == {"env": {"CUDA_VISIBLE_DEVICES": "0"}}
    assert not gpu.schedules
    assert gpu_pool.type == "process" and "env" in gpu_pool.base_job_template["variables"]["properties"]


def test_a_gpu_stage_runs_through_the_gpu_pool_on_a_worker(prefect_api, tmp_path):
    """The GPU deployment is picked up by a real process worker polling the GPU pool, which runs the stage."""
    import signal
    import sys
    import time

    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from fluxforge.orchestrate.deploy import DeploySpec, deploy
    from pipeline_repo import BIN

    repo = make_repo(tmp_path / "gpu")
    deploy(DeploySpec(root=repo, gpu_job_variables={"env": {"FLUXFORGE_POOL_MARK": "gpu-worker"}}))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLUXFORGE_PROGRESS": "0"}
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "fluxforge-gpu",
                                   "--type", "process"], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        run = run_deployment("fluxforge-gpu-stage/gpu", parameters={"root": str(repo), "stage": "world"},
                             timeout=300, poll_interval=1, as_subflow=False)
        assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{log.read_text()[-3000:]}"
        assert time.monotonic() - t0 < 300
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine can take longer to shut a worker down; not the subject here
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    assert run.work_pool_name == "fluxforge-gpu"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "world" in lock["stages"] and (repo / "data" / "world").is_dir()


def test_a_stage_name_from_outside_that_starts_with_a_dash_never_reaches_dvc(prefect_api, tmp_path):
    """The GPU flow's `stage` is a deployment parameter: '--help' or '--dry' would be options to `dvc repro`."""
    from fluxforge.orchestrate.dag import DagError
    from fluxforge.orchestrate.flows import gpu_stage

    repo = make_repo(tmp_path / "dash")
    for name in ("--help", "--dry"):
        with pytest.raises(DagError, match=rf"no stage '{name}' in .*dvc.yaml \(stages: world, ingest"):
            gpu_stage(str(repo), name)
    assert not (repo / "dvc.lock").exists() and not (repo / ".dvc" / "tmp" / "repro.dat").exists()
