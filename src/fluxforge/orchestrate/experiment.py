"""Run the DAG on a profile (and ``-S`` overrides) as a DVC experiment in a throwaway copy; params.yaml is never touched.

``dvc exp run --temp`` reproduces the pipeline in a temporary copy of the workspace and keeps the result as an
experiment (``dvc exp show``, ``dvc exp apply``), leaving the workspace and its params.yaml as they were. What
the copy runs on is the profile merged over params.yaml, exactly as ``fluxforge check-params --profile`` validates
it (:func:`fluxforge.config.read_params`).

Why not ``dvc exp run -S key=value`` for each key of the overlay: DVC merges ``-S`` values into params.yaml key by
key, so a mapping that a profile replaces keeps the old keys first and gets the new ones last (continual tasks
run in key order: the tiny profile's tasks would come out reversed), and ``-S`` values follow Hydra's grammar,
not YAML. DVC's Hydra composition writes the experiment's *whole* params.yaml from a config directory instead:
we hand it the merged, validated params, and nothing else changes.

A temporary copy has its own working directory, so relative paths there point into the copy: the MLflow store
(``sqlite:///mlflow.db``) is given to the stages as an absolute ``MLFLOW_TRACKING_URI`` (which they honour before
params), the MLflow experiment is created from the repository root (that fixes where its artifacts go), and
source paths outside the repository (the CTI samples in ``../shared``) are made absolute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxforge.config import Params, dump_params, read_params, validate
from fluxforge.config.loader import params_source
from fluxforge.warm import warm_stages

REPORT = "reports/report.html"  # the report stage's output (dvc.yaml)


@dataclass(frozen=True)
class Experiment:
    """A finished experiment: its name and commit, the MLflow store its runs went to, and where its report was put."""

    name: str
    rev: str
    tracking_uri: str
    report: Path | None


def run_experiment(root: Path | str, profile: str | None = None, overrides: Sequence[str] = (),
                   name: str | None = None) -> Experiment:
    """Validate ``params.yaml`` + ``profile`` + ``overrides``, run them as a temporary DVC experiment, fetch the report.

    Bad params raise :class:`~fluxforge.config.ParamsError` before anything runs.
    """
    root = Path(root).resolve()
    raw = read_params(root / "params.yaml", profile, overrides)
    params = validate(Params, raw, params_source(root / "params.yaml", profile, overrides))
    uri = os.environ.get("MLFLOW_TRACKING_URI") or absolute_tracking_uri(params.tracking.tracking_uri, root)
    with contextlib.chdir(root), _env("MLFLOW_TRACKING_URI", uri), tempfile.TemporaryDirectory() as conf:
        create_mlflow_experiment(uri, params.tracking.experiment)
        (Path(conf) / "params.yaml").write_text(dump_params(_for_hydra(sources_pinned(raw, root))))
        from dvc.repo import Repo

        repo = Repo(str(root), config={"hydra": {"enabled": True, "config_dir": conf, "config_name": "params"}})
        name = name or free_name(repo, f"profile-{Path(profile).stem}" if profile else "params")
        with warm_stages(root):
            rev = next(iter(repo.experiments.run(tmp_dir=True, name=name)))
    return Experiment(name, rev, uri, fetch_report(root, rev, root / "reports" / "experiments" / name))


def absolute_tracking_uri(uri: str, root: Path) -> str:
    """``uri`` with a relative SQLite file or store folder made absolute against ``root`` (servers unchanged)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri and not Path(uri).is_absolute():
        return str((root / uri).resolve())
    return uri


def create_mlflow_experiment(uri: str, experiment: str) -> None:
    """Create the MLflow experiment from here (the repository root) if it is new, so its artifacts live here too."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment)


def sources_pinned(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    """``raw`` with each source path that leaves the repository made absolute (a temporary copy is elsewhere)."""
    sources = []
    for src in raw["data"]["sources"]:
        path = src.get("path")
        if isinstance(path, str) and "://" not in path and not Path(path).is_absolute():
            if not (root / path).resolve().is_relative_to(root):
                src = {**src, "path": str((root / path).resolve())}
        sources.append(src)
    return {**raw, "data": {**raw["data"], "sources": sources}}


def free_name(repo: Any, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first name no experiment of the current commit has."""
    from dvc.repo.experiments.refs import ExpRefInfo

    baseline = repo.scm.get_rev()
    name, i = base, 1
    while repo.scm.get_ref(str(ExpRefInfo(baseline_sha=baseline, name=name))):
        i += 1
        name = f"{base}-{i}"
    return name


def fetch_report(root: Path, rev: str, out_dir: Path) -> Path | None:
    """Copy the experiment's report (from the DVC cache, at the experiment's commit) to ``out_dir``."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        html = dvc.api.read(REPORT, repo=str(root), rev=rev, mode="rb")
    except (FileNotFoundError, DvcException):
        return None  # a pipeline without the report stage
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.html").write_bytes(html)
    return out_dir / "report.html"


def _for_hydra(value: Any) -> Any:
    """Hydra reads the params as OmegaConf: dates become ISO text (as the params models take them), ``${`` stays text."""
    if isinstance(value, dict):
        return {k: _for_hydra(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_hydra(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return value.replace("${", "\\${")
    return value


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
