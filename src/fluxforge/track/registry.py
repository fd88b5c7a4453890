"""MLflow model registry: register with lineage, then gate and promote as one critical section.

Versions carry their lineage as tags (git commit, ``dvc.lock`` hashes of the chain, dataset
digests, parent, cumulative tokens, evaluation numbers and per-question results). ``challenger``
always points at the newest version; ``champion`` moves only when every gate rule holds. Logging
the model (slow: it uploads the weights) happens first and outside the promotion lock; reading the
champion, gating against it and moving the alias happen inside it (``promotion.champion_section``),
so no gate decides against a champion that another promoter has replaced meanwhile.
The logged model is an MLflow pyfunc whose ``artifacts/hf`` directory is a plain HF checkpoint, so
both MLflow and transformers users load it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from fluxforge import paths as P
from fluxforge.config import GateConfig, Params
from fluxforge.errors import FluxForgeError
from fluxforge.io import digest_path
from fluxforge.secrets import redact
from fluxforge.track.gate import Champion, CyberReference, PairedTest, Scores, evaluation_tags, gate, headline, scores_from_tags
from fluxforge.track.lineage import git_commit, lock_hashes, stage_chain
from fluxforge.track.promotion import champion_section
from fluxforge.track.runs import stage_run

log = logging.getLogger(__name__)
PYFUNC = Path(__file__).with_name("hf_pyfunc.py")
MAX_TAG = 100_000  # MLflow's limit for a model-version tag value


class RegistryError(FluxForgeError):
    """A version that cannot be registered as it is; the message names the tag or the model."""


def _compute(model_name: str) -> dict[str, float]:
    """Training seconds and approximate FLOPs (6 x parameters x tokens) summed along the parent chain."""
    seconds, flops, name = 0.0, 0.0, model_name
    while name:
        info, metrics = P.model_info(P.model_dir(name)), P.train_metrics(name)
        seconds += float(metrics.get("train_seconds", 0.0))
        flops += 6.0 * info.get("parameters", 0) * info.get("tokens", 0)
        name = info.get("parent", "") if info.get("stage") != "distill" else ""  # a teacher's compute is not the student's
    return {"seconds": seconds, "flops": flops}


def params_dump(params: Params) -> str:
    """The full params as JSON with every secret masked: environment secrets that reached a value, URL passwords."""
    return redact(json.dumps(params.model_dump(by_alias=True), default=str), os.environ)


def lineage_tags(params: Params, model_name: str) -> dict[str, str]:
    info = P.model_info(P.model_dir(model_name))
    compute = _compute(model_name)
    tags = {
        **git_commit(),
        "fluxforge.model_path": str(P.model_dir(model_name)),
        "fluxforge.parent": info.get("parent", ""),
        "fluxforge.train_run_id": P.train_metrics(model_name).get("mlflow_run_id", ""),
        "fluxforge.cumulative_tokens": str(info.get("cumulative_tokens", "")),
        "fluxforge.parameters": str(info.get("parameters", "")),
        "fluxforge.teacher": info.get("teacher", ""),
        "fluxforge.train_seconds": f"{compute['seconds']:.1f}",
        "fluxforge.train_flops": f"{compute['flops']:.3e}",
        "fluxforge.lineage": json.dumps(stage_chain(P.model_dir(model_name)), separators=(",", ":")),
        # a stream model: the update method that made it and the budget it had (continual.methods, continual.budget)
        **({"fluxforge.method": json.dumps(info["method"], separators=(",", ":"))} if "method" in info else {}),
        **({"fluxforge.budget": json.dumps(info["budget"], separators=(",", ":"))} if "budget" in info else {}),
        "data.curated.sha256": digest_path(P.CURATED / "curated.parquet") if (P.CURATED / "curated.parquet").exists() else "",
        "data.tokens.sha256": digest_path(P.TOKENS) if P.TOKENS.exists() else "",
        "params": params_dump(params),
    }
    for stage, h in lock_hashes().items():
        tags[f"dvc.lock.{stage.replace('@', '/')}"] = h  # MLflow tag keys may not contain '@'
    return tags


def set_version_tags(client, name: str, version: str, tags: Mapping[str, str]) -> None:  # noqa: ANN001
    """Set tags on a version; a value MLflow would refuse is a clear error, never a silently cut one."""
    for key, value in tags.items():
        if len(value) > MAX_TAG:
            raise RegistryError(f"{name} v{version}: tag {key} holds {len(value)} characters, more than MLflow's {MAX_TAG}")
        client.set_model_version_tag(name, version, key, value)


def read_champion(client, name: str) -> Champion:  # noqa: ANN001
    """The champion's scores from its tags (an ``Unreadable`` when they cannot be trusted); None: no champion."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return scores_from_tags(str(mv.version), mv.tags or {})


def gate_and_promote(name: str, version: str, ev: Mapping, cfg: GateConfig, paired_test: PairedTest,
                     tracking_uri: str | None = None, reference: CyberReference = None) -> dict:
    """Gate ``version`` (registered with its evaluation tags) against the champion and promote it if it passes.

    One critical section: the champion read here is the champion when the alias moves, and the verdict is
    on the version before the lock is released. The reasons and the champion it was compared with follow
    right after, outside the lock: other promoters need not wait for the explanation.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    me = scores_from_tags(version, client.get_model_version(name, version).tags or {})
    if not isinstance(me, Scores):
        raise RegistryError(f"{name} v{version} cannot be gated: {me.why}")
    with champion_section(name, tracking_uri) as section:
        champion = read_champion(section.client, name)
        passed, reasons = gate(ev, cfg, me, champion, paired_test, reference)
        section.client.set_model_version_tag(name, version, "gate", "passed" if passed else "failed")
        if passed:
            section.move(version, "promote", "gate passed")
    set_version_tags(client, name, version, {"gate.reasons": "\n".join(reasons),
                                             "gate.champion": champion.version if champion else ""})
    return {"promoted": passed, "previous_champion": champion.version if champion else None, "reasons": reasons}


def register_challenger(name: str, model_dir: Path, tags: Mapping[str, str], pyfunc: Path,
                        pip_requirements: Sequence[str]) -> str:
    """Log ``model_dir`` as an MLflow pyfunc (``artifacts/hf``), register it under ``name`` born with ``tags``, and
    point ``challenger`` at it; the new version. Inside an active run (the stage's)."""
    import mlflow

    if long := [k for k, v in tags.items() if len(v) > MAX_TAG]:
        raise RegistryError(f"{name}: tags {long} hold more than MLflow's {MAX_TAG} characters")
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"  # MLflow names the artifact after the directory: keep it stable
        shutil.copytree(model_dir, hf)
        info = mlflow.pyfunc.log_model(name="model", python_model=str(pyfunc), artifacts={"hf": str(hf)},
                                       pip_requirements=list(pip_requirements))
    version = str(mlflow.register_model(info.model_uri, name, tags=dict(tags)).version)
    mlflow.MlflowClient().set_registered_model_alias(name, "challenger", version)
    return version


def register_and_gate(params: Params, ev: Mapping, correct: Sequence[bool], paired_test: PairedTest,
                      reference: CyberReference = None) -> dict:
    """Register the final model as challenger with its lineage and evaluation, then gate and maybe promote it.

    ``correct`` is the final model's per-question correctness (``gate.question_results``), kept on the
    version so a later challenger can be tested against it question by question. The version is created
    with all its tags at once: nobody ever sees it without its lineage.
    """
    import mlflow

    name = params.registry.model_name
    final = ev["final"]
    with stage_run("register", params, params.registry.model_dump(), inputs={"model": P.model_dir(final)}) as run:
        tags = {**lineage_tags(params, final), **evaluation_tags(ev, correct)}
        version = register_challenger(name, P.model_dir(final), tags, PYFUNC, ["torch", "transformers", "safetensors"])
        decision = gate_and_promote(name, version, ev, params.registry.gate, paired_test, mlflow.get_tracking_uri(),
                                    reference)
        nums = headline(ev, final)
        run.metrics({"promoted": int(decision["promoted"]), **nums})
        mlflow.set_tags({"registered_model": name, "registered_version": version})
    return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", **decision, "headline": nums}
