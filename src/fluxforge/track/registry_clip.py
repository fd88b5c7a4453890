"""The image-text model in the registry: ``fluxforge-clip`` with the language model's lineage tags and its own gate.

A version is registered as challenger every time ``mm_register`` runs; ``champion`` moves (through
fluxforge.track.promotion, under the same lock and history) only when every rule holds: held-out zero-shot
accuracy and image->text R@5 at least ``min_*_over_chance`` times chance, and (``must_beat_champion``) zero-shot
accuracy at least the champion's when both were scored on the same held-out set.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from fluxforge import paths as P
from fluxforge.config import MMGate, Params
from fluxforge.io import digest_path
from fluxforge.track.promotion import promote
from fluxforge.track.registry import lineage_tags
from fluxforge.track.runs import stage_run

PYFUNC = Path(__file__).with_name("clip_pyfunc.py")
MODEL = "clip"  # the DAG model registered (models/clip)


def clip_headline(ev: dict) -> dict[str, float]:
    c = ev["clip"]
    zs, r = c["zero_shot.heldout"], c["retrieval.heldout"]
    return {"zero_shot": zs["accuracy"], "zero_shot_chance": zs["chance"], "zero_shot_unseen": c["zero_shot.unseen"]["accuracy"],
            "recall5": r["image_to_text.R@5"], "recall5_chance": r["image_to_text.R@5_chance"]}


def clip_gate(ev: dict, cfg: MMGate, champion: dict | None) -> tuple[bool, list[str]]:
    """(passed, one PASS/FAIL line per rule)."""
    h = clip_headline(ev)
    rules = [
        (h["zero_shot"] >= cfg.min_zero_shot_over_chance * h["zero_shot_chance"],
         f"held-out zero-shot accuracy {h['zero_shot']:.3f} = {h['zero_shot'] / h['zero_shot_chance']:.1f}x chance "
         f"(need >= {cfg.min_zero_shot_over_chance:g}x)"),
        (h["recall5"] >= cfg.min_recall5_over_chance * h["recall5_chance"],
         f"held-out image->text R@5 {h['recall5']:.3f} = {h['recall5'] / h['recall5_chance']:.1f}x chance "
         f"(need >= {cfg.min_recall5_over_chance:g}x)"),
    ]
    digest = ev["clip"]["eval_set_digest"]
    if cfg.must_beat_champion and champion and champion["eval_set"] != digest:
        rules.append((True, f"champion v{champion['version']} was scored on another held-out set; not compared"))
    elif cfg.must_beat_champion and champion:
        rules.append((h["zero_shot"] >= champion["zero_shot"] - 1e-9,
                      f"zero-shot {h['zero_shot']:.3f} vs champion v{champion['version']} {champion['zero_shot']:.3f} (need >=)"))
    elif cfg.must_beat_champion:
        rules.append((True, "no champion yet"))
    return all(ok for ok, _ in rules), [("PASS " if ok else "FAIL ") + text for ok, text in rules]


def clip_champion(client, name: str) -> dict | None:  # noqa: ANN001 - an MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    tags = mv.tags or {}
    try:
        score = float(tags["eval.zero_shot"])
    except (KeyError, ValueError):
        score = 0.0
    return {"version": str(mv.version), "eval_set": tags.get("eval.set_digest", ""), "zero_shot": score}


def register_clip(params: Params, ev: dict, model: str = MODEL) -> dict:
    """Register ``models/<model>`` as a new ``fluxforge-clip`` version (challenger); promote it if the gate passes."""
    import mlflow

    name = params.mm.registry.model_name
    with stage_run("mm_register", params, params.mm.registry.model_dump(), inputs={"model": P.model_dir(model)}) as run:
        client = mlflow.MlflowClient()
        champion = clip_champion(client, name)
        with tempfile.TemporaryDirectory() as tmp:
            hf = Path(tmp) / "hf"
            shutil.copytree(P.model_dir(model), hf)
            info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC), artifacts={"hf": str(hf)},
                                           registered_model_name=name,
                                           pip_requirements=["torch", "transformers", "safetensors", "pillow"])
        version = str(info.registered_model_version)
        nums = clip_headline(ev)
        curated = P.MM_CURATED
        tags = {**lineage_tags(params, model), **{f"eval.{k}": repr(float(v)) for k, v in nums.items()},
                "eval.set_digest": ev["clip"]["eval_set_digest"],
                "data.mm_curated.sha256": digest_path(curated) if curated.exists() else "",
                "params.mm": json.dumps(params.mm.model_dump(by_alias=True), default=str)[:5000]}
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_registered_model_alias(name, "challenger", version)
        passed, reasons = clip_gate(ev, params.mm.registry.gate, champion)
        client.set_model_version_tag(name, version, "gate", "passed" if passed else "failed")
        client.set_model_version_tag(name, version, "gate.reasons", "\n".join(reasons)[:5000])
        if passed:
            promote(name, version, reason="gate passed")
        if run:
            run.metrics({"promoted": int(passed), **nums})
            run.tags({"registered_model": name, "registered_version": version})
    return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "promoted": passed,
            "previous_champion": champion["version"] if champion else None, "reasons": reasons, "headline": nums}
