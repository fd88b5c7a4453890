"""What ties a stage run to code and data: git commit, DVC stage hash, dataset digests.

The DVC stage hash is DVC's own run-cache key for the stage (computed with DVC's
stage API over cmd + dependency hashes + params), so an MLflow run can be matched
to ``.dvc/cache/runs/<hash>`` and to the ``dvc.lock`` entry that DVC writes after it.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


def git_commit(cwd: Path | str = ".") -> dict[str, str]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = run("rev-parse", "HEAD")
    dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


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
