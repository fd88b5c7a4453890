"""Build a throwaway git + DVC repository holding the pipeline, for end-to-end tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def repo_env() -> dict[str, str]:
    """This environment with its executables first on PATH (stage commands call `python`), no progress bars,
    and no tracking URI (a repository's stages log to its own params' store)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLUXFORGE_PROGRESS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in :func:`repo_env`; a failure shows the end of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=repo_env(), capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    """Stages that `dvc repro` actually executed."""
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


def make_repo(root: Path, profile: str | None = "tiny") -> Path:
    """The pipeline, its profiles and params.yaml: ``profile`` merged over this repository's (None: as it is)."""
    from fluxforge.config import dump_params, read_params

    root.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("stages", "src", "flows", "profiles"):
        shutil.copytree(ROOT / folder, root / folder, ignore=ignore)
    for name in ("dvc.yaml", ".gitignore", "params.yaml", "benchmarks/evidence.json", "benchmarks/evidence-full.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    if profile is not None:
        merged = read_params(ROOT / "params.yaml", profile=profile)
        (root / "params.yaml").write_text(dump_params(merged, header=f"params.yaml with profiles/{profile}.yaml merged over it"))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.invalid"], root)
    run(["git", "config", "user.name", "ci"], root)
    run(["dvc", "init", "-q"], root)
    shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")  # ours over the one `dvc init` writes
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    return root


def cached_out_hashes(lock: dict) -> dict[str, str]:
    """{path: md5} of every cached output in a dvc.lock (data and models; not metrics, which carry timings)."""
    out = {}
    for entry in lock["stages"].values():
        for o in entry.get("outs", []):
            if "md5" in o and not o["path"].startswith(("metrics", "plots", "reports")):
                out[o["path"]] = o["md5"]
    return out


def copy_repo(src: Path, dest: Path) -> Path:
    """A private copy of a reproduced repository (git, DVC cache, outputs) for a test that changes it.

    The session's ``tiny_repo`` is shared by every test and, under pytest-xdist, by every worker: it is read,
    never written."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def seed_run_cache(src: Path, dest: Path, run: frozenset[str] = frozenset(), objects: bool = True) -> list[str]:
    """Give ``dest`` the DVC cache of the reproduced repo ``src`` (its objects and its run-cache) except the runs of
    the stage modules in ``run`` (``{"world", "pretrain"}``): `dvc repro` in ``dest`` then restores every other stage
    whose command, dependencies and params match a run of ``src`` instead of running it, and runs those in ``run``
    (and whatever their changed outputs reach) for real. Returns the commands whose runs were left out.

    ``objects=False`` also leaves out the cache objects that only the outputs of those runs use (a model's weights),
    so ``dest`` can only get them by running the stage or from a remote.

    A whole-DAG test that needs the DAG's *outputs* but not every stage's work (the flow, a profile experiment)
    costs seconds instead of minutes this way; what the stages compute is the session's tiny repo's to show."""
    import json

    import yaml

    src_cache, cache = src / ".dvc" / "cache", dest / ".dvc" / "cache"

    def used(entry: dict) -> set[str]:  # the cache objects (paths under files/md5) a run's outputs use
        names = set()
        for out in entry.get("outs", []):
            md5 = out.get("md5", "")
            names.add(f"{md5[:2]}/{md5[2:]}")
            if md5.endswith(".dir"):
                names |= {f"{f['md5'][:2]}/{f['md5'][2:]}" for f in json.loads((src_cache / "files" / "md5" / md5[:2] / md5[2:]).read_text())}
        return names

    left, kept_objects, left_objects = [], set(), set()
    for path in sorted((src_cache / "runs").glob("*/*/*")):
        entry = yaml.safe_load(path.read_text())
        if re.search(r"-m stages\.(\w+)", entry["cmd"]).group(1) in run:
            left.append(entry["cmd"])
            left_objects |= used(entry)
            continue
        kept_objects |= used(entry)
        target = cache / path.relative_to(src_cache)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    skip = set() if objects else left_objects - kept_objects
    for path in (src_cache / "files" / "md5").glob("*/*"):
        if f"{path.parent.name}/{path.name}" not in skip:
            target = cache / "files" / "md5" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return left


def reproduce(dest: Path) -> dict[str, str]:
    """Make the tiny repo at ``dest`` and reproduce it with `dvc repro` (warm when the caller runs a warm stage runner); its cached output hashes."""
    import yaml

    root = make_repo(dest)
    first = run(["dvc", "repro"], root)
    (root / "first_run.log").write_text(first.stdout + first.stderr)
    return cached_out_hashes(yaml.safe_load((root / "dvc.lock").read_text()))


if __name__ == "__main__":  # python tests/pipeline_repo.py DEST RESULT: conftest's background build of tiny_repo
    import json
    import traceback

    dest, result = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        outcome = {"hashes": reproduce(dest)}
    except BaseException:  # noqa: BLE001 - the waiting tests show why the build failed
        outcome = {"error": traceback.format_exc()}
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome))
    tmp.replace(result)
