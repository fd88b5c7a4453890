"""The Prefect refresh flow runs the same DAG as `dvc repro`, with the same results."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

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
# (reproduced by `dvc repro`), which it can only do if what these produced under the flow matches that repo
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
    # the flow's outputs are `dvc repro`'s: those it ran, and so (run-cache hits) everything that reads them
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
    took = {m.group(1): float(m.group(2)) for log in logs if (m := re.fullmatch(r"(\S+): ran in (\d+\.\d) s( \(.*\))?", log.message))}
    assert set(took) == ran and all(seconds > 0 for seconds in took.values()), took  # each stage's own time, in its log
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


GPU_MODULES = frozenset({"pretrain", "continual", "distill"})  # dvc.yaml's `meta: {gpu: true}` stages


def _object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def test_a_refresh_hands_its_gpu_stages_to_a_worker_in_another_checkout(prefect_api, s3_server, tiny_repo, tmp_path,
                                                                        monkeypatch):
    """Issue 19: a second checkout acts as the GPU machine (its own clone, its own `prefect worker` on the GPU pool),
    sharing only the Prefect API and the S3 DVC remote. The refresh's GPU stages run there, their outputs come back
    through the remote, and the refresh's dvc.lock is a single-machine `dvc repro`'s."""
    import signal
    import sys

    from flows.refresh import refresh
    from prefect.settings import PREFECT_API_URL

    from fluxforge.orchestrate import dag, storage
    from fluxforge.orchestrate.deploy import DeploySpec, deploy
    from pipeline_repo import BIN, run, seed_run_cache

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", *storage.ENDPOINT_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():  # both machines' DVC reads its credentials from the environment
        monkeypatch.setenv(name, value)
    cpu = make_repo(tmp_path / "cpu")
    remote = f"s3://{s3_server.bucket}/gpu-handoff"
    storage.configure_remote(cpu, remote, s3_server.endpoint_url)
    run(["git", "commit", "-qam", "DVC remote"], cpu)
    gpu = tmp_path / "gpu"
    run(["git", "clone", "-q", str(cpu), str(gpu)], tmp_path)  # the GPU machine's checkout: no DVC cache, no outputs
    # the CPU machine may restore its own stages from the plain repro's run-cache; the GPU stages' runs, and the
    # objects only their outputs use (the weights), it does not have: those can only come back from the GPU machine
    plain_repo, plain_hashes = tiny_repo
    seed_run_cache(plain_repo, cpu, run=GPU_MODULES, objects=False)
    plain_lock = yaml.safe_load((plain_repo / "dvc.lock").read_text())
    weights = {}
    for stage in ("pretrain", "distill"):
        out = next(o for o in plain_lock["stages"][stage]["outs"] if o["md5"].endswith(".dir"))
        listing = json.loads(_object(plain_repo / ".dvc" / "cache", out["md5"]).read_text())
        weights[stage] = next(f["md5"] for f in listing if f["relpath"].endswith(".safetensors"))
        assert not _object(cpu / ".dvc" / "cache", weights[stage]).exists()

    deploy(DeploySpec(root=cpu, gpu_root=gpu, gpu_job_variables={"env": {"FLUXFORGE_POOL_MARK": "gpu-worker"}}))
    # the GPU machine's flow run starts its own warm stage runner, as on a real one: not the one this test process
    # runs (FLUXFORGE_WARM), which cannot take its stages (Prefect gives a flow run's process its own PYTHONPATH)
    env = {**{k: v for k, v in os.environ.items() if k != "FLUXFORGE_WARM"}, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLUXFORGE_PROGRESS": "0",
           "FLUXFORGE_WARM_VERBOSE": "1"}
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "fluxforge-gpu",
                                   "--type", "process"], cwd=gpu, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        result = refresh(str(cpu), gpu_deployment="fluxforge-gpu-stage/gpu")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine can take longer to shut a worker down; not the subject here
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)

    gpu_stages = {s.name for s in dag.read(cpu) if s.gpu}
    assert gpu_stages == {"pretrain", "continual@slice2022", "continual@cyber", "distill"}
    assert set(result["gpu"]) == gpu_stages, log.read_text()[-3000:]
    # consecutive in DAG order, so handed over together: one flow run, one pull and one push on each side
    order = [s for s in result["stages"] if s in gpu_stages]
    assert all(h["batch"] == order and h["seconds_here"] == result["gpu"][order[0]]["seconds_here"]
               for h in result["gpu"].values()), result["gpu"]
    for stage, handed in result["gpu"].items():  # ran there, in that checkout, with the time each side spent
        assert handed["status"] == "ran on fluxforge-gpu-stage/gpu" and handed["status_there"] == "ran", (stage, handed)
        assert handed["checkout"] == str(gpu.resolve()), (stage, handed)
        assert set(handed["seconds_here"]) == {"push", "flow_run", "pull"} and handed["seconds_there"]["stage"] > 0
    # each checkout's stages logged to its own MLflow store (params: sqlite:///mlflow.db): the training runs are the
    # GPU machine's, the CPU machine has none of them
    import mlflow

    def stages_logged(repo: Path) -> set[str]:
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
        return {r.data.tags.get("fluxforge.stage") for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}

    assert gpu_stages <= stages_logged(gpu)
    # and there each stage started from that machine's warm stage runner (its log line, FLUXFORGE_WARM_VERBOSE=1)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTextSearch

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(text=LogFilterTextSearch(query="start")))
    started = {m.group(1): m.group(2) for log in logs if (m := re.fullmatch(r"(\S+): ran in [\d.]+ s \((.*)\)", log.message))}
    how = {s: h for s, h in started.items() if s in gpu_stages}
    assert set(how) == gpu_stages and all(how[s] == "warm start" for s in order[1:]), started
    # the first may start while the runner still imports (it never waits for one): then cold, and says so
    assert how[order[0]] == "warm start" or how[order[0]].startswith("cold start: no warm server"), started
    assert not gpu_stages & stages_logged(cpu) and "register" in stages_logged(cpu)
    # the weights came back through the remote: in the bucket, then in the CPU machine's cache and workspace
    s3 = s3_server.client()
    for stage, md5 in weights.items():
        s3.head_object(Bucket=s3_server.bucket, Key=f"gpu-handoff/files/md5/{md5[:2]}/{md5[2:]}")
        assert _object(cpu / ".dvc" / "cache", md5).exists(), stage
    # and the refresh's dvc.lock is a single-machine `dvc repro`'s, so the stages downstream restored from its run-cache
    assert cached_out_hashes(yaml.safe_load((cpu / "dvc.lock").read_text())) == plain_hashes
    local = {s: how for s, how in result["stages"].items() if s not in gpu_stages}
    assert {s for s, how in local.items() if how == "ran"} == {"register", "mm_register", "report"}, local
    assert result["model"]["promoted"] is True and result["commit"]


def test_a_stage_name_from_outside_that_starts_with_a_dash_never_reaches_dvc(prefect_api, tmp_path):
    """The GPU flow's `stage` is a deployment parameter: '--help' or '--dry' would be options to `dvc repro`."""
    from fluxforge.orchestrate.dag import DagError
    from fluxforge.orchestrate.flows import gpu_stage

    repo = make_repo(tmp_path / "dash")
    for name in ("--help", "--dry"):
        with pytest.raises(DagError, match=rf"no stage '{name}' in .*dvc.yaml \(stages: world, ingest"):
            gpu_stage(str(repo), ["world", name])  # checked before any of them runs
    assert not (repo / "dvc.lock").exists() and not (repo / ".dvc" / "tmp" / "repro.dat").exists()
