"""`fluxforge rebuild` on the tiny pipeline: a committed version rebuilds bit for bit; a tampered cache is caught.

Works on a copy of the session's reproduced tiny repo (``tiny_repo``), never on the repo itself.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_repo import BIN, copy_repo, run

pytestmark = pytest.mark.slow
NAME = "fluxforge-lm"


def _fluxforge(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLUXFORGE_MODEL_CACHE": str(repo.parent / "model-cache"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the repo's own store (params: sqlite:///mlflow.db)
    return subprocess.run(["fluxforge", *args], cwd=repo, env=env, capture_output=True, text=True)


def _lines(out: str, kind: str) -> dict[str, str]:
    """{stage or path: the rest of the line} for one kind of check in the rebuild's output."""
    return {m.group(1): m.group(2) for m in re.finditer(rf"^  {kind}\s+(\S+)\s+(.*)$", out, re.M)}


@pytest.fixture(scope="module")
def repo(tiny_repo, tmp_path_factory) -> Path:
    """A copy of the tiny repo whose champion was registered by a plain `dvc repro` from an uncommitted tree."""
    copy = tmp_path_factory.mktemp("rebuild") / "repo"
    copy_repo(tiny_repo[0], copy)
    return copy


def test_a_version_registered_from_an_uncommitted_tree_is_not_rebuildable(repo):
    lineage = _fluxforge(repo, "lineage", f"{NAME}@champion")
    assert lineage.returncode == 0, lineage.stderr
    assert "not rebuildable: it was registered from a working tree with uncommitted changes" in lineage.stdout
    assert re.search(r"\(diff sha256 [0-9a-f]{12}\)", lineage.stdout)
    refused = _fluxforge(repo, "rebuild", f"{NAME}@champion")
    assert refused.returncode == 2 and "is not rebuildable" in refused.stderr


def test_once_committed_the_champion_rebuilds_identically(repo):
    """What a refresh does after its commit (flows.record_version_commit), then the rebuild from the first training stage."""
    import mlflow

    from fluxforge.track.lineage import LineageError, record_commit

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    version = str(mlflow.MlflowClient(tracking_uri=uri).get_model_version_by_alias(NAME, "champion").version)
    with pytest.raises(LineageError, match="uncommitted changes"):
        record_commit(NAME, version, repo, uri)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the tiny run"], repo)
    commit = record_commit(NAME, version, repo, uri)
    tags = mlflow.MlflowClient(tracking_uri=uri).get_model_version(NAME, version).tags
    assert tags["git_commit"] == commit and tags["git_dirty"] == "false" and "git_diff_sha256" not in tags
    lock = yaml.safe_load(run(["git", "show", f"{commit}:dvc.lock"], repo).stdout)
    model = next(o["md5"] for o in lock["stages"]["continual@cyber"]["outs"] if o["path"] == "models/continual/cyber")
    assert json.loads(tags["fluxforge.lineage"])[0]["outs"]["models/continual/cyber"] == model
    lineage = _fluxforge(repo, "lineage", f"{NAME}@champion").stdout
    assert f"code         git {commit[:12]}\n  rebuild      fluxforge rebuild {NAME}/{version}\n" in lineage

    done = _fluxforge(repo, "rebuild", f"{NAME}@champion")
    assert done.returncode == 0, done.stdout + done.stderr
    rebuilt = _lines(done.stdout, "rebuilt")
    assert list(rebuilt) == ["pretrain", "continual@slice2022", "continual@cyber"]  # the chain from the first training stage
    assert all(line.split()[1] == "identical" for line in rebuilt.values()), done.stdout
    cached = _lines(done.stdout, "cache copy")
    assert {"world", "tokenize", "pretrain", "distill"} <= set(cached) and all("identical" in v for v in cached.values())
    assert "identical" in _lines(done.stdout, "evaluation")["evaluate"] and "Δ general acc +0, cyber acc +0, general ppl +0, cyber ppl +0" in done.stdout
    assert "identical" in _lines(done.stdout, "registry")[NAME] and "max |Δweight| 0" in done.stdout
    assert "all" in done.stdout and "checks identical" in done.stdout
    assert run(["git", "worktree", "list"], repo).stdout.count("\n") == 1  # the temporary worktree is gone
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # and the repository untouched


def test_a_tampered_model_in_the_cache_makes_the_rebuild_differ(repo):
    """Nudge weights of continual/slice2022's cached copy: the rebuild of continual@cyber, which starts from it, differs."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    tree = next(o["md5"] for o in lock["stages"]["continual@slice2022"]["outs"] if o["path"] == "models/continual/slice2022")
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    manifest = json.loads((cache / tree[:2] / tree[2:]).read_text())
    weights = next(e["md5"] for e in manifest if e["relpath"] == "model.safetensors")
    obj = cache / weights[:2] / weights[2:]
    obj.chmod(obj.stat().st_mode | stat.S_IWUSR)
    data = bytearray(obj.read_bytes())
    for i in range(1, 17):  # the lowest mantissa bit of the last 16 float32 weights: the header stays valid
        data[-4 * i] ^= 0x01
    obj.write_bytes(bytes(data))

    done = _fluxforge(repo, "rebuild", f"{NAME}@champion", "--from", "continual@cyber")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "differs" in _lines(done.stdout, "cache copy")["continual@slice2022"]
    cyber = _lines(done.stdout, "rebuilt")["continual@cyber"]
    assert "differs" in cyber and (delta := re.search(r"max \|Δweight\| (\S+)", cyber)) and float(delta.group(1)) > 0
    assert "differs" in _lines(done.stdout, "registry")[NAME]
    assert "pretrain" not in _lines(done.stdout, "rebuilt")  # only the chain from --from reran
    assert re.search(r"rebuild: \d+ of \d+ checks differ \(.*continual@cyber", done.stdout)
