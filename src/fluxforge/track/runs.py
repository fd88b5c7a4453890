"""One MLflow run per stage: params, metrics, input digests, git commit and DVC stage hash."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fluxforge.config import Params
from fluxforge.io import digest_path
from fluxforge.runtime import is_main_rank
from fluxforge.track.lineage import dvc_stage_hash, git_commit

log = logging.getLogger(__name__)


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri


def use_store(uri: str) -> str:
    """Point MLflow at ``uri``, credentials in it moved to MLflow's own variables; return the URI without them.

    MLflow prints and stores the tracking URI it is given (``View run ... at <uri>``), so a password inside
    it would end up in every stage log. Basic-auth credentials read from the environment work the same.
    """
    import mlflow

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password or "")
        uri = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    mlflow.set_tracking_uri(uri)
    return uri


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class StageRun:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_id = run.info.run_id

    def metrics(self, values: Mapping[str, Any], step: int | None = None) -> None:
        import mlflow

        flat = {k: float(v) for k, v in flatten(values).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if flat:
            mlflow.log_metrics(flat, step=step)

    def tags(self, values: Mapping[str, str]) -> None:
        import mlflow

        mlflow.set_tags(dict(values))

    def history(self, rows: list[dict], keys: tuple[str, ...] = ("loss", "lr", "tokens_per_s")) -> None:
        import mlflow
        from mlflow.entities import Metric

        client = mlflow.MlflowClient()
        ms = [Metric(k, float(r[k]), 0, int(r["step"])) for r in rows for k in keys if k in r]
        for i in range(0, len(ms), 900):
            client.log_batch(self.run_id, metrics=ms[i : i + 900])

    def table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        """A table (column name -> values) as an MLflow table artifact, shown in the run's artifacts and evaluation view."""
        import mlflow

        mlflow.log_table(data=dict(columns), artifact_file=artifact_file)

    def artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path)


@contextmanager
def stage_run(stage: str, params: Params, section: Mapping[str, Any] | None = None,
              inputs: Mapping[str, Path | str | list[Path]] | None = None) -> Iterator[StageRun | None]:
    """Open an MLflow run for a DVC stage with its lineage already logged (rank 0 only; other ranks get None)."""
    if not is_main_rank():  # the other ranks of a DeepSpeed job train their share; rank 0 logs the one run
        yield None
        return
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    use_store(tracking_uri(params))
    mlflow.set_experiment(params.tracking.experiment)
    tags = {"fluxforge.stage": stage, "dvc.stage": stage, "dvc.stage_hash": dvc_stage_hash(stage), **git_commit()}
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        if section:
            flat = {k: str(v)[:6000] for k, v in flatten(section).items()}
            keys = list(flat)
            for i in range(0, len(keys), 100):
                mlflow.log_params({k: flat[k] for k in keys[i : i + 100]})
        for name, spec in (inputs or {}).items():
            paths = [Path(p) for p in (spec if isinstance(spec, list | tuple) else [spec]) if Path(p).exists()]
            if not paths:
                continue
            digest = digest_path(paths[0]) if len(paths) == 1 else hashlib.sha256(
                "".join(digest_path(p) for p in paths).encode()).hexdigest()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "source type inferred" notices
                source = resolve_dataset_source(str(paths[0].resolve() if len(paths) == 1 else paths[0].resolve().parent))
            mlflow.log_input(MetaDataset(source=source, name=name, digest=digest[:32]), context="input")
            mlflow.set_tag(f"input.{name}.sha256", digest)
        yield StageRun(run)
