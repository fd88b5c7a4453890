"""Turn what a user types for a model (a directory or an MLflow ``models:/`` URI) into a local HF directory.

Registered versions are MLflow pyfuncs whose ``artifacts/hf`` is a plain HF checkpoint
(see ``registry.py``); downloading it once per version into a cache keeps repeated
evaluations of ``models:/NAME@champion`` from refetching the weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from fluxforge import paths as P
from fluxforge.errors import FluxForgeError
from fluxforge.io import atomic_dir
from fluxforge.secrets import redact

log = logging.getLogger(__name__)
CACHE = Path(os.environ.get("FLUXFORGE_MODEL_CACHE", Path.home() / ".cache" / "fluxforge" / "models"))


class ModelURIError(FluxForgeError):
    """A model reference that names nothing loadable."""


def parse_models_uri(uri: str) -> tuple[str, str, str]:
    """``models:/NAME@ALIAS`` -> (name, "alias", ALIAS); ``models:/NAME/3`` -> (name, "version", "3")."""
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, "alias", alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, "version", version
    raise ModelURIError(f"'{uri}' is not a registry URI: use models:/NAME@ALIAS or models:/NAME/VERSION")


def version_of(uri: str) -> tuple[str, str]:
    """(name, version number) that a ``models:/`` URI points at now (an alias is read once, here)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, kind, ref = parse_models_uri(uri)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, ref) if kind == "alias" else client.get_model_version(name, ref)
    except MlflowException as err:
        raise ModelURIError(f"{uri}: not found in the registry at {redact(mlflow.get_tracking_uri())} ({err.message})") from err
    return name, str(mv.version)


def local_model_path(spec: str | Path) -> Path:
    """A local HF directory for a path or a ``models:/`` URI (downloaded into the cache, pinned to a version)."""
    spec = str(spec)
    if not spec.startswith("models:/"):
        path = Path(spec)
        if not path.exists():
            raise ModelURIError(f"{path}: no such model directory (or use models:/NAME@ALIAS for a registered model)")
        return path
    import mlflow

    name, version = version_of(spec)
    store = hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:10]  # same name, other server: other model
    dest = CACHE / store / name / version
    hf = dest / "artifacts" / "hf"
    if not (hf / "config.json").exists():
        with atomic_dir(dest) as tmp:  # two evaluations starting at once never see a half-downloaded model
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
    if not (hf / "config.json").exists():
        raise ModelURIError(f"{spec} (version {version}) holds no HF directory at artifacts/hf; it was not logged by FluxForge")
    return hf


def dag_or_registry_dirs(specs: list[str]) -> tuple[list[Path], dict[str, str]]:
    """Local directories of models named by the DAG (``pretrain``, ``continual/<task>``) or the registry.

    Returns the directories and, for each registry URI, the ``NAME/VERSION`` it meant at this moment
    (pinned: a later promotion does not change what this run used).
    """
    registry = [s for s in specs if s.startswith("models:/")]
    if registry:
        log.warning("registry models are not DVC dependencies; `dvc repro` reruns this stage only when something "
                    "else changes (use `dvc repro -f <stage>` after a new champion)")
    versions = {s: "/".join(version_of(s)) for s in registry}
    return [local_model_path(s) if s in versions else P.model_dir(s) for s in specs], versions
