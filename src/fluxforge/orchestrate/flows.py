"""Prefect 3 flows over the DVC DAG: one refresh of the model, stage by stage.

The graph comes from ``dvc.yaml`` through DVC's own API, never redefined here. Each stage
is one Prefect task running ``dvc repro --single-item <stage>``; DVC decides whether the
stage is up to date (no Prefect result caching on top). DVC calls on one repository are
serialised with a file lock, so two refreshes of the same checkout wait for each other
instead of failing on DVC's own lock. Transient failures are retried with backoff; a
stage that fails with a FluxForge message (bad params, broken contract, bad input) fails
at once, because it would fail the same way again.

A refresh is: pull the data from the DVC remote, apply the params profile and overrides,
reproduce every stage (evaluate, register, gate and promote are DAG stages, so a failed
refresh never moves ``champion``), push, then commit ``params.yaml`` and ``dvc.lock`` with
a message naming the registered model version, and point that version at the commit
(``git_commit``), which makes it rebuildable (``fluxforge rebuild``). GPU stages (pretrain, continual, distill)
run on another deployment (a GPU work pool) when ``gpu_deployment`` is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from fluxforge.config import load_params
from fluxforge.io import file_lock
from fluxforge.orchestrate import dag
from fluxforge.orchestrate.params import apply_params
from fluxforge.orchestrate.retry import retrying
from fluxforge.warm import VERBOSE, warm_stages

STAGE_TRIES, STAGE_BACKOFF = 3, 5.0  # a transient stage failure is retried twice, after 5 and 10 s


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the end of its log."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# A stage that reports a readable FluxForge failure (bad params, broken contract, bad input) fails the
# same way on every try; anything else (a lock held, a storage hiccup, a killed process) is worth a retry.
_DETERMINISTIC = re.compile(r"fluxforge: stage '[^']+' (not started|failed:)")
_RESTORED = re.compile(r"Stage '[^']+' is cached - skipping run")  # DVC's line for a run-cache hit
_START = re.compile(rf"^{re.escape(VERBOSE)}(warm start|cold start: .*)", re.M)  # the warm client's verbose line


def stages_to_run(root: Path | str, force: set[str] = frozenset()) -> set[str]:
    """Stages that are out of date now, plus every stage downstream of one (they will be once it reruns).

    One in-process ``dvc status`` instead of a ``dvc repro`` process per stage: a refresh with
    nothing new costs a second, not a process start-up per stage.
    """
    from dvc.repo import Repo

    with repo_lock(root):
        with Repo(str(root)) as repo:
            # DVC names a stage "path/to/dvc.yaml:name" when called from another directory
            changed = {k.rsplit(":", 1)[-1] for k in repo.status()} | set(force)
            stages = {st.addressing.rsplit(":", 1)[-1] for st in repo.index.stages}
        return dag.downstream(changed & stages, root)  # status also names tracked .dvc files, which are no stages


def repo_lock(root: Path | str) -> contextlib.AbstractContextManager[None]:
    """One DVC command at a time per repository, across processes (DVC itself would fail, not wait)."""
    return file_lock(Path(root) / ".dvc" / "tmp" / "fluxforge-flow.lock")


def _env() -> dict[str, str]:
    # stage commands run on stages/python, which takes FLUXFORGE_PYTHON first: this environment's interpreter
    env = {**os.environ, "FLUXFORGE_PYTHON": sys.executable, "DVC_NO_ANALYTICS": "1"}
    if api := _api_url():  # sharded data stages report to this server instead of starting their own (~40 s)
        env["PREFECT_API_URL"] = api
    return env


def _api_url() -> str | None:
    """The Prefect API this flow talks to (a configured server, or the temporary one it started)."""
    from prefect.context import FlowRunContext
    from prefect.settings import get_current_settings

    if url := get_current_settings().api.url:
        return str(url)
    ctx = FlowRunContext.get()
    client = getattr(ctx, "client", None) if ctx else None
    return str(client.api_url).rstrip("/") if client is not None and getattr(client, "api_url", None) else None


@task(cache_policy=NONE, task_run_name="dvc:{stage}")
def repro_stage(root: str, stage: str, force: bool = False) -> str:
    """Reproduce one stage (``force``: even if DVC sees no change); return 'ran', 'restored' or 'up to date'.

    'restored': DVC found this exact run (same command, dependencies and params) in its run-cache and checked its
    outputs out instead of running the command, so nothing of the stage ran (no MLflow run, no log of its own).

    A transient failure (a lock held, a killed process) is retried with backoff; a stage that fails with a
    FluxForge message fails at once.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    for attempt in retrying(STAGE_TRIES, STAGE_BACKOFF, lambda e: isinstance(e, StageFailed) and e.transient, f"stage {stage}"):
        with attempt:
            with repo_lock(root):
                proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True)
            out = proc.stdout + proc.stderr
            if proc.returncode:
                raise StageFailed(f"stage '{stage}' failed (exit {proc.returncode}):\n{out[-3000:]}",
                                  transient=not _DETERMINISTIC.search(out))
    status = "ran" if re.search(r"Running stage", out) else "restored" if _RESTORED.search(out) else "up to date"
    how = _START.search(out)  # with FLUXFORGE_WARM_VERBOSE=1: whether the stage started warm, or why not
    logger.info("%s: %s in %.1f s%s", stage, status, time.perf_counter() - started,  # retries and lock waits included
                f" ({how.group(1)})" if how else "")
    return status


@task(cache_policy=NONE, task_run_name="dvc:{direction}")
def sync(root: str, direction: str, targets: list[str] | None = None, inputs_of: str | None = None,
         allow_missing: bool = False) -> str:
    """``dvc pull`` / ``dvc push`` against the repository's default remote (with retries inside): everything,
    ``targets`` (stages) only, or (pull) what stage ``inputs_of`` reads; ``allow_missing`` (pull): what the remote
    does not hold is left for the stages to make."""
    from fluxforge.orchestrate import storage

    with repo_lock(root):
        if direction == "pull":
            summary = storage.pull(root, targets=targets or (), inputs_of=inputs_of, allow_missing=allow_missing)
        else:
            summary = storage.push(root, targets=targets or ())
    get_run_logger().info("dvc %s: %s", direction, summary)
    return str(summary)


LOCK_FENCE = "```yaml"  # the GPU machine's dvc.lock travels back as a Prefect artifact of its flow run, in this fence


def _git_head(root: str) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


@flow(name="fluxforge-gpu-stage", log_prints=True)
def gpu_stage(root: str, stages: list[str], lock: str | None = None, params: str | None = None,
              commit: str | None = None) -> dict[str, str]:
    """GPU stages on a GPU machine, in its own checkout ``root``, sharing only the DVC remote and the Prefect API.

    A refresh hands over the state it reached: its git ``commit`` (this checkout must be at it: the code is
    not shipped), its ``params`` (params.yaml) and ``lock`` (dvc.lock), and the GPU stages that come next in
    its DAG order (pretrain, the continual tasks, distill: one hand-off, not one each, since every hand-off pays
    a flow-run start and two transfers). Their inputs are pulled from the remote, the stages run here in order,
    their outputs are pushed, and the resulting dvc.lock goes back to the refresh as an artifact of this flow run,
    so the refresh records exactly what ran here. Returns each stage's status.
    """
    from prefect.artifacts import create_markdown_artifact

    from fluxforge.orchestrate import storage

    logger = get_run_logger()
    if isinstance(stages, str) or not stages:
        raise StageFailed(f"stages must be a non-empty list of stage names, not {stages!r}", transient=False)
    for stage in stages:
        dag.get(stage, root)  # a name from outside: it must be a stage of dvc.yaml, never an option for `dvc`
    if commit is not None and _git_head(root) != commit:
        raise StageFailed(f"GPU checkout {root} is at commit {_git_head(root)[:12] or '(none)'}, the refresh at "
                          f"{commit[:12]}: update this checkout (git pull) so both run the same code", transient=False)
    with repo_lock(root):
        for name, text in (("params.yaml", params), ("dvc.lock", lock)):
            if text is not None:
                (Path(root) / name).write_text(text)
    checkout = str(Path(root).resolve())
    logger.info("GPU stages %s in checkout %s", ", ".join(stages), checkout)
    remote = storage.remote_url(root)
    seconds: dict[str, float] = {}
    status: dict[str, str] = {}
    with warm_stages(root):  # started first: the server imports while the pull waits on the network
        t0 = time.perf_counter()
        if remote:  # what the last stage reads, upstream stages' outputs included: the whole batch's inputs
            sync(root, "pull", inputs_of=stages[-1])
        seconds["pull"] = time.perf_counter() - t0
        for stage in stages:
            t0 = time.perf_counter()
            status[stage] = repro_stage(root, stage)
            seconds[f"stage:{stage}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if remote and (ran := [s for s in stages if status[s] == "ran"]):
        sync(root, "push", targets=ran)
    seconds["push"] = time.perf_counter() - t0
    if lock is not None:
        create_markdown_artifact(markdown=f"{LOCK_FENCE}\n{(Path(root) / 'dvc.lock').read_text()}```\n",
                                 description=json.dumps({"stages": stages, "checkout": checkout, "status": status,
                                                         "seconds": {k: round(v, 2) for k, v in seconds.items()}}))
    return status


def _returned(flow_run_id: object) -> tuple[str, dict]:
    """The dvc.lock a GPU stage's flow run published (the artifact ``gpu_stage`` creates) and its report (where, how long)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    locks = [a for a in found if isinstance(a.data, str) and a.data.startswith(LOCK_FENCE)]
    if len(locks) != 1:
        raise StageFailed(f"the GPU flow run {flow_run_id} published {len(locks)} dvc.lock artifacts, not one", transient=False)
    return locks[0].data.removeprefix(LOCK_FENCE + "\n").removesuffix("```\n"), json.loads(locks[0].description or "{}")


def _run_on_gpu(root: str, stages: list[str], deployment: str) -> dict[str, dict]:
    """Hand ``stages`` (consecutive GPU stages) to the GPU deployment in one flow run: their inputs go up to the
    remote, the GPU machine's dvc.lock and outputs come back.

    Returns, per stage, where it ran and the seconds spent: here (push, wait for the worker's flow run, pull: the
    hand-off's, shared by the ``batch``) and there (the GPU machine's pull and push, shared, and this stage's own
    time), so the cost of the hand-off itself can be read off.
    """
    from prefect.deployments import run_deployment

    from fluxforge.orchestrate import storage

    rootp = Path(root)
    if not storage.remote_url(root):
        raise StageFailed(f"GPU stage '{stages[0]}' needs a DVC remote both machines share: the GPU machine gets its inputs "
                          "and returns its outputs through it (fluxforge.orchestrate.storage.configure_remote)", transient=False)
    t0 = time.perf_counter()
    sync(root, "push")  # everything the stage reads, in the remote before the GPU machine asks for it
    pushed = time.perf_counter()
    lock = (rootp / "dvc.lock").read_text() if (rootp / "dvc.lock").exists() else ""
    # no root: the deployment's own (the GPU machine's checkout) applies; Prefect's default poll of 5 s added 2.5 s
    # on average to every hand-off, one state read a second is nothing to the API
    fr = run_deployment(name=deployment, as_subflow=True, timeout=None, poll_interval=1, parameters={
        "stages": stages, "lock": lock, "params": (rootp / "params.yaml").read_text(), "commit": _git_head(root)})
    if not fr.state or not fr.state.is_completed():
        name = fr.state.name if fr.state else "unknown"
        raise StageFailed(f"GPU stages {', '.join(stages)} on deployment {deployment} ended {name}: "
                          f"{fr.state.message if fr.state else ''}", transient=False)
    waited = time.perf_counter()
    lock, there = _returned(fr.id)
    with repo_lock(root):
        (rootp / "dvc.lock").write_text(lock)
    sync(root, "pull", targets=stages)
    here = {k: round(v, 2) for k, v in {"push": pushed - t0, "flow_run": waited - pushed,
                                        "pull": time.perf_counter() - waited}.items()}
    seconds = there.get("seconds", {})
    return {stage: {"status": f"ran on {deployment}", "checkout": there.get("checkout"), "batch": stages,
                    "status_there": there.get("status", {}).get(stage), "seconds_here": here,
                    "seconds_there": {"pull": seconds.get("pull"), "stage": seconds.get(f"stage:{stage}"),
                                      "push": seconds.get("push")}} for stage in stages}


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _new_documents(root: Path, since: str | None) -> int | None:
    """Raw documents newer than the previous refresh's watermark (None on the first refresh)."""
    if not since:
        return None
    import pandas as pd

    raw_dir = root / dag.get("ingest", root).outs[0]
    raw = [f for f in raw_dir.glob("*.parquet") if f.name != "rejected.parquet"]
    if not raw:
        return 0
    ts = pd.concat([pd.read_parquet(f, columns=["timestamp"]) for f in raw])["timestamp"]
    return int((pd.to_datetime(ts, utc=True) > pd.Timestamp(since)).sum())


@task(cache_policy=NONE)
def commit_lock(root: str, message: str) -> str | None:
    """Commit params.yaml and dvc.lock if they changed; return the new commit id."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    git("add", "--", "params.yaml", "dvc.lock")
    if git("diff", "--cached", "--quiet").returncode == 0:
        return None
    done = git("commit", "-m", message)
    if done.returncode:
        raise RuntimeError(f"git commit failed in {root}: {done.stderr.strip() or done.stdout.strip()}")
    return git("rev-parse", "HEAD").stdout.strip()


@task(cache_policy=NONE)
def record_version_commit(root: str, name: str, version: str) -> dict:
    """Point the version this refresh registered at the commit holding its params and dvc.lock: rebuildable from it.

    The register stage ran before that commit existed, from a tree DVC was still writing; ``record_commit``
    checks that the commit holds exactly what produced the version before the registry says so.
    """
    from fluxforge.orchestrate.experiment import absolute_tracking_uri
    from fluxforge.track.lineage import LineageError, record_commit
    from fluxforge.track.runs import tracking_uri

    uri = absolute_tracking_uri(tracking_uri(load_params(Path(root) / "params.yaml")), Path(root))  # the stages' store
    try:
        commit = record_commit(name, version, root, uri)
    except LineageError as err:
        get_run_logger().warning("%s v%s is not rebuildable: %s", name, version, err)
        return {"rebuildable": False, "why": str(err)}
    get_run_logger().info("%s v%s: code lineage is commit %s (fluxforge rebuild %s/%s)", name, version, commit[:12],
                          name, version)
    return {"rebuildable": True, "commit": commit}


@flow(name="fluxforge-refresh", log_prints=True)
def refresh(root: str = ".", profile: str | None = None, overrides: list[str] | None = None,
            gpu_deployment: str | None = None, push: bool = True, commit: bool = True) -> dict:
    """One model refresh; the first failure stops it with its message and leaves ``champion`` where it was."""
    from fluxforge.orchestrate import storage

    logger = get_run_logger()
    rootp = Path(root).resolve()
    remote = storage.remote_url(rootp)
    if remote:  # what earlier refreshes made; a first refresh (or a remote that lacks some outputs) makes the rest
        sync(str(rootp), "pull", allow_missing=True)
    changed = apply_params(rootp, profile, overrides or [])
    if changed:
        logger.info("params: %s", "; ".join(changed))
    ingest_metrics, register_metrics = dag.metrics_file("ingest", root=rootp), dag.metrics_file("register", root=rootp)
    before = _read(ingest_metrics).get("watermark")
    # DVC cannot see new objects under an S3 prefix (not a dependency it tracks): read remote sources every
    # refresh. If nothing new arrived, ingest writes the same tables and everything downstream stays up to date.
    remote_sources = any(s.path.startswith("s3://") for s in load_params(rootp / "params.yaml").data.sources)
    todo = stages_to_run(rootp, force={"ingest"} if remote_sources else set())
    stages: dict[str, str] = {}
    handed: dict[str, dict] = {}
    batch: list[str] = []  # GPU stages due, consecutive in DAG order: one hand-off for all of them

    def hand_off() -> None:
        if batch:
            handed.update(_run_on_gpu(str(rootp), list(batch), gpu_deployment))
            stages.update({s: handed[s]["status"] for s in batch})
            batch.clear()

    with warm_stages(rootp) if todo else contextlib.nullcontext():
        for stage in dag.read(rootp):
            if stage.name not in todo:
                stages[stage.name] = "up to date"
            elif gpu_deployment and stage.gpu:
                batch.append(stage.name)
                stages[stage.name] = "handed off"  # its place in the DAG order; the status follows the hand-off
            else:
                hand_off()  # a stage here may read what the GPU stages before it make
                stages[stage.name] = repro_stage(str(rootp), stage.name, force=stage.name == "ingest" and remote_sources)
        hand_off()
    after = _read(ingest_metrics).get("watermark")
    reg = _read(register_metrics)
    result = {"stages": stages, "watermark": {"before": before, "after": after, "new_documents": _new_documents(rootp, before)},
              "model": {k: reg.get(k) for k in ("model_name", "version", "promoted", "reasons")}, "gpu": handed}
    if reg and stages.get("register") == "ran":
        verdict = "promoted to champion" if reg["promoted"] else "challenger, not promoted"
        logger.info("registry: %s v%s %s", reg["model_name"], reg["version"], verdict)
        for line in reg.get("reasons", []):
            logger.info("  gate: %s", line)
    if remote and push:
        sync(str(rootp), "push")  # before the commit: a committed dvc.lock always has its data in the remote
    registered = bool(reg) and stages.get("register") == "ran"
    if commit:
        what = (f"{reg['model_name']} v{reg['version']} ({'champion' if reg['promoted'] else 'challenger, not promoted'})"
                if registered else "no new model version")
        result["commit"] = commit_lock(str(rootp), f"refresh: {what}")
        if registered:  # after the commit: the version points at the commit that holds its params and dvc.lock
            result["model"].update(record_version_commit(str(rootp), reg["model_name"], str(reg["version"])))
    elif registered:
        result["model"].update(rebuildable=False, why="the refresh ran without committing params.yaml and dvc.lock")
    return result
