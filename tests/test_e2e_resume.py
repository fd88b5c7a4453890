"""A real `dvc repro` whose training stage is killed with SIGKILL mid-run, then run again, resumes and ends
with the output hashes of an uninterrupted run.

Both runs are copies of the session's tiny repository with pretraining made long enough to kill (more steps,
a checkpoint every few); the kill lands at a random step after the first checkpoint. The rerun must prove it
resumed (the metrics, the training curve and the MLflow run say from which step), because a silent restart
would end with the same weights.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from pipeline_repo import cached_out_hashes, copy_repo, repo_env, run

pytestmark = pytest.mark.slow
STEPS, EVERY = 600, 10


def _long_pretrain(tiny_repo, dest: Path) -> Path:  # noqa: ANN001
    """A copy of the session's tiny repository (its committed params: other tests change the working copy's)."""
    copy_repo(tiny_repo[0], dest)
    run(["git", "checkout", "HEAD", "--", "params.yaml"], dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["pretrain"].update(steps=STEPS, checkpoint_every=EVERY, log_every=EVERY, probe_every=0)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def _repro(repo: Path) -> subprocess.Popen:
    """`dvc repro` of pretraining in the background; its output goes to ``<repo>.log`` (a pipe could fill and block)."""
    with open(f"{repo}.log", "w") as log:
        return subprocess.Popen(["dvc", "repro", "--single-item", "pretrain"], cwd=repo, env={**repo_env(), "FLUXFORGE_THREADS": "1"},
                                stdout=log, stderr=subprocess.STDOUT)


def _log(repo: Path) -> str:
    return Path(f"{repo}.log").read_text()[-3000:]


def _checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in folder.glob("state-*.pt") if (m := re.fullmatch(r"state-(\d+)\.pt", p.name)))


def _stage_process(dvc: subprocess.Popen) -> psutil.Process:
    found = [p for p in psutil.Process(dvc.pid).children(recursive=True) if "stages.pretrain" in p.cmdline()]  # python -m stages.pretrain, not its sh -c
    assert len(found) == 1, f"expected the stage's one python process under dvc, found {found}"
    return found[0]


def test_a_killed_training_stage_resumes_under_dvc_repro_to_the_uninterrupted_hashes(tiny_repo, tmp_path):
    reference, victim_repo = _long_pretrain(tiny_repo, tmp_path / "reference"), _long_pretrain(tiny_repo, tmp_path / "victim")
    ref = _repro(reference)
    victim = _repro(victim_repo)
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    after = rng.randrange(EVERY, STEPS // 3, EVERY)  # kill somewhere after this checkpoint (the first one or later)
    ckpt = victim_repo / "checkpoints" / "pretrain"
    deadline = time.monotonic() + 300
    while not (_checkpoint_steps(ckpt) and _checkpoint_steps(ckpt)[-1] >= after):
        assert victim.poll() is None and time.monotonic() < deadline, f"no checkpoint {after} came:\n{_log(victim_repo)}"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.05))  # a random step between two checkpoints
    _stage_process(victim).send_signal(signal.SIGKILL)
    assert victim.wait(timeout=120) != 0, _log(victim_repo)
    at = _checkpoint_steps(ckpt)[-1]  # the newest complete checkpoint: where the rerun must pick up
    assert 0 < at < STEPS, f"the stage finished before the kill (seed {seed})"

    again = run(["dvc", "repro", "--single-item", "pretrain"], victim_repo)
    assert ref.wait(timeout=600) == 0, _log(reference)
    log = again.stdout + again.stderr
    assert f"resuming pretrain from checkpoint in checkpoints/pretrain at step {at}" in log, log[-3000:]

    # the rerun proves it started at the checkpoint: metrics, curve and MLflow run say so; the reference did not
    metrics = json.loads((victim_repo / "metrics" / "train" / "pretrain.json").read_text())
    assert metrics["resumed_from"] == at, f"seed {seed}: resumed from {metrics['resumed_from']}, checkpoint {at}"
    assert json.loads((reference / "metrics" / "train" / "pretrain.json").read_text())["resumed_from"] == 0
    curve = pd.read_csv(victim_repo / "plots" / "train" / "pretrain.csv")
    assert list(curve["step"]) == list(range(EVERY, STEPS + 1, EVERY))
    assert set(curve.loc[curve["step"] <= at, "resumed_from"]) == {0}  # rows the killed process logged
    assert set(curve.loc[curve["step"] > at, "resumed_from"]) == {at}  # rows the rerun logged: only these steps ran
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{victim_repo / 'mlflow.db'}")
    assert client.get_run(metrics["mlflow_run_id"]).data.metrics["resumed_from"] == at
    assert not ckpt.exists()  # a finished stage removes its checkpoints

    # and the result is the uninterrupted run's, output by output
    ref_lock, lock = (yaml.safe_load((r / "dvc.lock").read_text()) for r in (reference, victim_repo))
    outs = {k: v for k, v in cached_out_hashes(lock).items() if k.startswith("models/pretrain")}
    assert outs and outs == {k: v for k, v in cached_out_hashes(ref_lock).items() if k.startswith("models/pretrain")}
    assert outs["models/pretrain"] != tiny_repo[1]["models/pretrain"], "the long run must differ from the tiny one"
