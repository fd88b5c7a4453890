"""``fluxforge rebuild``: take a registered version back to the commit that produced it and rebuild it.

The registry says which commit holds a version's code, params.yaml and dvc.lock, and which output
hash every stage of its chain had (``track.lineage``). A rebuild checks that commit out in a temporary
git worktree that shares the repository's DVC cache, brings the inputs from that cache (or the DVC
remote), reruns the chain from a stage (the first training stage unless told), then the evaluation,
and compares:

- every output on the chain that it took from the cache, and every one it rebuilt, with the hash the
  lineage recorded (hashed afresh from the files, never from DVC's records of them);
- a model that differs, weight by weight with its recorded original (max |Δweight|);
- the evaluation numbers with the version's tags, and the rebuilt model with the copy in the registry.

Identical everywhere proves the version is what its lineage says; training is deterministic on one
machine type, so on the same type every check is identical, and on another the differences are shown.
Nothing is written to the repository: the worktree is removed afterwards, stages run with
``--no-commit`` (no cache writes) and log to a scratch MLflow store, never the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from fluxforge import paths as P
from fluxforge.errors import FluxForgeError
from fluxforge.orchestrate import dag, storage
from fluxforge.track.gate import EVAL_KEYS, headline
from fluxforge.track.lineage import locked_outs, provenance
from fluxforge.track.resolve import local_model_path, parse_models_uri, version_of
from fluxforge.warm import warm_stages


class RebuildError(FluxForgeError):
    """A rebuild that could not be carried out (as opposed to one that found differences)."""


@dataclass(frozen=True)
class Check:
    """One comparison of the rebuild: what, of which stage, and whether it matched the record."""

    kind: str  # "cache copy" | "rebuilt" | "evaluation" | "registry"
    stage: str
    subject: str  # a path, or what was compared
    identical: bool
    detail: str = ""

    def line(self) -> str:
        return (f"  {self.kind:<11} {self.stage:<20} {self.subject:<30} {'identical' if self.identical else 'differs'}"
                + (f"  {self.detail}" if self.detail else ""))


def content_hash(path: Path) -> str:
    """DVC's md5 of a file or directory, computed from the bytes now on disk ('' if absent).

    DVC's own record of a checked-out file trusts the cache it came from; hashing afresh is what notices
    a cache object that was altered after DVC stored it.
    """
    if not path.exists():
        return ""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    with tempfile.TemporaryDirectory() as scratch:  # an object store with no state database: every byte is read
        _, _, obj = build(HashFileDB(LocalFileSystem(), scratch), str(path), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


def max_weight_delta(a: Path, b: Path) -> str:
    """The largest absolute difference between two checkpoints' tensors, as text (or what keeps them apart)."""
    from safetensors import safe_open

    from fluxforge.train.model import weight_files

    def tensors(path: Path) -> dict:
        out = {}
        for file in weight_files(path):
            with safe_open(str(file), framework="pt") as fh:
                out.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118 - safe_open has no __iter__
        return out

    try:
        ta, tb = tensors(a), tensors(b)
    except FluxForgeError as err:
        return f"weights not comparable ({err})"
    if ta.keys() != tb.keys():
        return f"different tensors ({len(ta.keys() ^ tb.keys())} names differ)"
    if any(ta[k].shape != tb[k].shape for k in ta):
        return "different tensor shapes"
    delta = max(((ta[k].double() - tb[k].double()).abs().max().item() for k in ta if ta[k].numel()), default=0.0)
    return f"max |Δweight| {delta:.3g}"


@contextlib.contextmanager
def worktree(root: Path, commit: str, keep: bool) -> Iterator[Path]:
    """A detached git worktree of ``commit`` using ``root``'s DVC cache (and its local DVC config: remote credentials)."""
    from dvc.repo import Repo

    where = Path(tempfile.mkdtemp(prefix="fluxforge-rebuild-")) / "repo"
    done = subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise RebuildError(f"cannot check out commit {commit[:12]} in {root}: {done.stderr.strip()} "
                           "(run the rebuild in a clone that has this commit)")
    try:
        with Repo(str(root)) as repo:
            cache = repo.cache.local_cache_dir
        if (root / ".dvc" / "config.local").exists():
            shutil.copy(root / ".dvc" / "config.local", where / ".dvc" / "config.local")
        _dvc(where, "config", "--local", "cache.dir", str(cache))
        yield where
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=root, capture_output=True)
            shutil.rmtree(where.parent, ignore_errors=True)


def _env(where: Path) -> dict[str, str]:
    """Stages run the commit's code (its src/ first on the path), this environment's tools, a scratch MLflow store.

    A stage command is `stages/python -m ...` (which takes FLUXFORGE_PYTHON), or `python -m ...` in older commits.
    """
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "FLUXFORGE_PYTHON": sys.executable, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": os.pathsep.join([str(where / "src"), str(where)]), "FLUXFORGE_PROGRESS": "0",
            "MLFLOW_TRACKING_URI": f"sqlite:///{where.parent / 'rebuild-mlflow.db'}"}


def _dvc(where: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=where, env=_env(where), capture_output=True, text=True)
    if proc.returncode:
        raise RebuildError(f"`dvc {' '.join(args)}` failed in the rebuild worktree:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def _repro(where: Path, stage: str) -> str | None:
    """Rerun one stage in the worktree, writing nothing to the cache; None, or why it failed (its last words)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", "--force", "--no-run-cache", "--no-commit",
                           stage], cwd=where, env=_env(where), capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("fluxforge: stage")]
    return (said or [line for line in lines if not line.startswith("ERROR")] or ["no output"])[-1]


def _first_training_stage(order: list[dag.Stage], chain: Mapping[str, dict]) -> str:
    for st in order:
        if st.name in chain and any(Path(o).is_relative_to(P.MODELS) for o in st.outs):
            return st.name
    raise RebuildError(f"no stage of the chain ({', '.join(chain)}) writes a model under {P.MODELS}/; name one with --from")


def _compare_out(kind: str, stage: str, path: str, expected: str, where: Path, reference: Path | None) -> Check:
    found = content_hash(where / path)
    if found == expected:
        return Check(kind, stage, path, True)
    detail = "missing (not in the local cache nor on the DVC remote)" if not found else f"md5 {found[:12]}, recorded {expected[:12]}"
    if found and reference is not None and Path(path).is_relative_to(P.MODELS):
        detail += f"; {max_weight_delta(where / path, reference)}"
    return Check(kind, stage, path, False, detail)


def _evaluation(where: Path, tags: Mapping[str, str]) -> Check:
    ev = json.loads(dag.metrics_file("evaluate", "eval.json", where).read_text())
    now = headline(ev, ev["final"])
    deltas = {k: now[k] - float(tags[f"eval.{k}"]) for k in EVAL_KEYS if f"eval.{k}" in tags}
    text = ", ".join(f"{k.replace('_', ' ')} {d:+.3g}" for k, d in deltas.items())  # 3 digits, but never "+0.00" for a change
    return Check("evaluation", "evaluate", tags.get("fluxforge.model_path", ev["final"]), bool(deltas) and not any(deltas.values()),
                 f"Δ {text}" if deltas else "the version records no evaluation numbers")


def _fetch_inputs(where: Path) -> None:
    """Every output the commit's dvc.lock names, from the DVC remote when there is one, else from the local cache."""
    if storage.remote_url(where):
        storage.pull(where)
    else:
        _dvc(where, "checkout", "--allow-missing")  # what is missing shows as such in the checks


def _reruns(order: list[dag.Stage], chain: Mapping[str, dict], start: str, where: Path) -> list[dag.Stage]:
    """The chain's stages from ``start`` on (``start`` and what depends on it), in DAG order."""
    dag.get(start, where)  # a name from outside: a stage of dvc.yaml, never an option for `dvc`
    if start not in chain:
        raise RebuildError(f"{start} is not on the chain of the version ({', '.join(chain)})")
    after = dag.downstream({start}, where)
    return [st for st in order if st.name in chain and st.name in after]


def _evaluation_inputs(order: list[dag.Stage], chain: Mapping[str, dict], where: Path) -> list[dag.Stage]:
    """Stages off the chain whose outputs the evaluation reads (the student): their cache copies count too."""
    deps = [Path(d) for d in dag.get("evaluate", where).deps]
    return [st for st in order if st.name not in chain
            and any(Path(o).is_relative_to(d) or d.is_relative_to(o) for d in deps for o in st.outs)]


def rebuild(ref: str, root: Path | str = ".", from_stage: str | None = None, keep: bool = False,
            echo: Callable[[str], None] = print) -> list[Check]:
    """Rebuild ``ref`` (``NAME@ALIAS``, ``NAME/VERSION`` or a ``models:/`` URI) and compare; return every check."""
    import mlflow

    uri = ref if ref.startswith("models:/") else f"models:/{ref}"
    parse_models_uri(uri)
    name, version = version_of(uri)
    tags = mlflow.MlflowClient().get_model_version(name, version).tags or {}
    prov = provenance(name, version, tags)
    chain = {link["stage"]: link["outs"] for link in prov.chain}
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        echo(check.line())

    with worktree(Path(root).resolve(), prov.commit, keep) as where:
        order = dag.read(where)
        rerun = _reruns(order, chain, from_stage or _first_training_stage(order, chain), where)
        echo(f"{name} v{version}: rebuilding {', '.join(st.name for st in rerun)} at commit {prov.commit[:12]}"
             + (f" in {where}" if keep else ""))
        lock = yaml.safe_load((where / "dvc.lock").read_text()) or {}
        _fetch_inputs(where)
        originals = where.parent / "original"
        for st in [*(st for st in order if st.name in chain), *_evaluation_inputs(order, chain, where)]:
            expected = chain.get(st.name) or locked_outs(lock, st.name)
            for path in st.outs:
                record(_compare_out("cache copy", st.name, path, expected.get(path, ""), where, None))
                if st in rerun and (where / path).exists():  # the recorded original, to measure a rebuilt model against
                    (originals / path).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(where / path, originals / path)
        trusted = {c.subject for c in checks if c.identical}
        failed = None
        with warm_stages(where, env=_env(where)):  # the commit's code still runs: each stage forgets the server's
            for st in rerun:  # after a failure, the stages that would read its output are not run
                failed = failed or (f"{st.name} failed: {why}" if (why := _repro(where, st.name)) else None)
                for path in st.outs:
                    record(Check("rebuilt", st.name, path, False, failed) if failed else _compare_out(
                        "rebuilt", st.name, path, chain[st.name].get(path, ""), where, originals / path if path in trusted else None))
            failed = failed or (f"evaluate failed: {why}" if (why := _repro(where, "evaluate")) else None)
        record(Check("evaluation", "evaluate", tags.get("fluxforge.model_path", "-"), False, failed) if failed
               else _evaluation(where, tags))
        registered = tags.get("fluxforge.model_path", "")
        if registered and (where / registered).exists():
            copy = local_model_path(f"models:/{name}/{version}")
            record(Check("registry", f"{name} v{version}", registered, content_hash(copy) == content_hash(where / registered),
                         max_weight_delta(where / registered, copy)))
    return checks
