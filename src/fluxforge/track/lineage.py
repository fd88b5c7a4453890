"""What ties a registered model to code and data: git commit, DVC stage hash, dataset digests.

The DVC stage hash is DVC's own run-cache key for the stage (computed with DVC's
stage API over cmd + dependency hashes + params), so an MLflow run can be matched
to ``.dvc/cache/runs/<hash>`` and to the ``dvc.lock`` entry that DVC writes after it.

A version is rebuildable when a commit holds everything that produced it: its code, params.yaml
and the dvc.lock with its chain's hashes. A stage registers while DVC is still writing dvc.lock,
so the tree is dirty then; a refresh commits afterwards and :func:`record_commit` points the
version at that commit, after checking that it really holds the version's hashes. A version
registered from a tree nobody committed keeps ``git_dirty`` and a digest of the difference, and
:func:`not_rebuildable` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from fluxforge.errors import FluxForgeError

log = logging.getLogger(__name__)


class LineageError(FluxForgeError):
    """A version whose recorded lineage cannot back the claim made for it; the message says what is missing."""


def _git(cwd: Path | str, *args: str) -> bytes:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return b""


def git_commit(cwd: Path | str = ".") -> dict[str, str]:
    """The commit the tree is at, whether it differs from it, and a digest of the difference when it does.

    Dirty is anything a commit would pick up: changed tracked files and untracked files git does not
    ignore (a new module, a dvc.lock not yet added). DVC's outputs are git-ignored and do not count.
    """
    commit = _git(cwd, "rev-parse", "HEAD").decode().strip()
    status = _git(cwd, "status", "--porcelain")
    tags = {"git_commit": commit or "unknown", "git_dirty": str(bool(status.strip())).lower()}
    if status.strip():
        h = hashlib.sha256(_git(cwd, "diff", "HEAD", "--binary"))
        for name in sorted(_git(cwd, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
            if name and (path := Path(cwd) / name.decode()).is_file():
                h.update(name + b"\0" + path.read_bytes())
        tags["git_diff_sha256"] = h.hexdigest()
    return tags


def dvc_stage_hash(stage: str, root: Path | str = ".") -> str:
    """DVC's run-cache key for ``stage`` as it is about to run (empty if DVC cannot compute it)."""
    try:
        from dvc.repo import Repo
        from dvc.stage.cache import _get_stage_hash  # DVC's own key; no public API exposes it

        with Repo(str(root)) as repo:
            st = repo.stage.collect(stage)[0]
            st.save_deps()
            return _get_stage_hash(st) or ""
    except Exception as err:  # noqa: BLE001 - lineage must never break a stage
        log.info("no DVC stage hash for %s (%s%s); DVC keeps none for stages with persistent outputs",
                 stage, type(err).__name__, f": {err}" if str(err) else "")
        return ""


def lock_hashes(lock_path: Path | str = "dvc.lock") -> dict[str, str]:
    """{stage: md5 of its outputs} from dvc.lock, the data-side identity of each stage on the chain."""
    path = Path(lock_path)
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, entry in (lock.get("stages") or {}).items():
        md5s = [o.get("md5", "") for o in entry.get("outs", []) if o.get("md5")]
        if md5s:
            out[name] = hashlib.md5("".join(md5s).encode()).hexdigest()
    return out


def stage_chain(output: Path | str, root: Path | str = ".", lock_path: Path | str = "dvc.lock") -> list[dict]:
    """The stages that ``output`` descends from, from its own stage back to the raw data.

    Read through DVC's graph (edges point from a stage to the stages it depends on), with
    each stage's output hashes as ``dvc.lock`` recorded them, so the chain names the exact
    data and model versions. Empty when DVC cannot read the repository.
    """
    try:
        import networkx as nx
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            graph = repo.index.graph
            target = Path(output).resolve()
            owner = next((s for s in graph.nodes for o in s.outs
                          if target == Path(o.fs_path).resolve() or Path(o.fs_path).resolve() in target.parents), None)
            if owner is None:
                return []
            stages = [owner, *nx.descendants(graph, owner)]
            order = {s: i for i, s in enumerate(nx.topological_sort(graph))}
            stages.sort(key=order.__getitem__)
    except Exception as err:  # noqa: BLE001 - lineage must never break registration
        log.info("no DVC chain for %s (%s: %s)", output, type(err).__name__, err)
        return []
    lock = (yaml.safe_load(Path(lock_path).read_text()) or {}).get("stages", {}) if Path(lock_path).exists() else {}
    chain = []
    for st in stages:
        outs = {o.get("path"): o.get("md5", "") for o in (lock.get(st.name) or {}).get("outs", [])
                if not str(o.get("path", "")).startswith(("metrics/", "plots/"))}  # keep the tag short
        chain.append({"stage": st.name, "outs": outs})
    return chain


@dataclass(frozen=True)
class Provenance:
    """What a rebuild starts from: the commit that holds the version's code, params and dvc.lock, and its chain."""

    commit: str
    chain: list[dict]  # [{"stage": name, "outs": {path: md5}}], the model's own stage first, as registered


def recorded_chain(tags: Mapping[str, str]) -> list[dict]:
    try:
        chain = json.loads(tags.get("fluxforge.lineage") or "[]")
    except json.JSONDecodeError as err:
        raise LineageError(f"its lineage tag does not parse ({err})") from err
    if not chain:
        raise LineageError("it records no DVC chain (registered outside a DVC workspace)")
    return chain


def not_rebuildable(tags: Mapping[str, str]) -> str | None:
    """Why a version with these tags cannot be rebuilt from its lineage; None when it can."""
    commit = tags.get("git_commit", "unknown")
    if commit in ("", "unknown"):
        return "it was registered outside a git repository"
    if tags.get("git_dirty") == "true":
        digest = tags.get("git_diff_sha256", "")
        return (f"it was registered from a working tree with uncommitted changes on {commit[:12]}"
                + (f" (diff sha256 {digest[:12]})" if digest else "") + "; no commit holds what produced it")
    try:
        recorded_chain(tags)
    except LineageError as err:
        return str(err)
    return None


def provenance(name: str, version: str, tags: Mapping[str, str]) -> Provenance:
    if why := not_rebuildable(tags):
        raise LineageError(f"{name} v{version} is not rebuildable: {why}")
    return Provenance(tags["git_commit"], recorded_chain(tags))


def locked_outs(lock: Mapping, stage: str) -> dict[str, str]:
    """{path: md5} of a stage's outputs in a parsed dvc.lock."""
    return {o["path"]: o.get("md5", "") for o in ((lock.get("stages") or {}).get(stage) or {}).get("outs", [])}


def record_commit(name: str, version: str, root: Path | str = ".", tracking_uri: str | None = None) -> str:
    """Point a registered version at the commit now checked out in ``root``; return the commit.

    Refused unless the commit is exactly what produced the version: the tree is clean, DVC sees every
    stage of the chain up to date at it, and its dvc.lock holds the output hashes the version recorded.
    """
    import mlflow
    from dvc.repo import Repo

    state = git_commit(root)
    commit = state["git_commit"]
    if commit == "unknown":
        raise LineageError(f"{root} is not a git repository with a commit")
    if state["git_dirty"] == "true":
        changed = _git(root, "status", "--porcelain").decode().splitlines()
        raise LineageError(f"{name} v{version}: {root} has uncommitted changes ({'; '.join(changed[:5])}); "
                           "commit them, then record the commit")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    tags = client.get_model_version(name, version).tags or {}
    try:
        chain = recorded_chain(tags)
    except LineageError as err:
        raise LineageError(f"{name} v{version}: {err}") from err
    lock = yaml.safe_load(_git(root, "show", f"{commit}:dvc.lock")) or {}
    wrong = [f"{link['stage']}:{path}" for link in chain for path, md5 in link["outs"].items()
             if locked_outs(lock, link["stage"]).get(path) != md5]
    if wrong:
        raise LineageError(f"{name} v{version}: commit {commit[:12]}'s dvc.lock does not hold the outputs the version "
                           f"was registered with ({', '.join(wrong)})")
    with Repo(str(root)) as repo:  # DVC resolves stage targets against the cwd: ask for all, keep the chain's
        stale = {k.rsplit(":", 1)[-1] for k in repo.status()} & {link["stage"] for link in chain}
    if stale:
        raise LineageError(f"{name} v{version}: at commit {commit[:12]} DVC does not see the chain up to date "
                           f"({', '.join(sorted(stale))}); the commit would not reproduce it")
    before = f"{tags.get('git_commit', 'unknown')}" + (f" dirty, diff sha256 {tags['git_diff_sha256']}"
                                                      if tags.get("git_diff_sha256") else "")
    for key, value in {"git_commit": commit, "git_dirty": "false", "git_commit.at_registration": before}.items():
        client.set_model_version_tag(name, version, key, value)
    if "git_diff_sha256" in tags:
        client.delete_model_version_tag(name, version, "git_diff_sha256")
    return commit
