"""The image-text model in the registry: ``fluxforge-clip`` with the language model's lineage tags and its own gate.

A version is registered as challenger (born with its lineage and evaluation tags) every time ``mm_register``
runs. ``champion`` moves only inside the registry's critical section (:func:`fluxforge.track.promotion
.champion_section`, the lock and history the language model uses) and only when every rule holds: held-out
zero-shot accuracy and image->text R@5 at least ``min_*_over_chance`` times chance, and (``must_beat_champion``)
zero-shot accuracy at least ``champion_margin`` above the champion's on the same held-out set. As for the
language model, a tie keeps the champion, and a champion whose tags cannot be read or that was scored on
another held-out set stays champion: no comparison was made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fluxforge import paths as P
from fluxforge.config import MMGate, Params
from fluxforge.io import digest_path
from fluxforge.track.gate import Unreadable
from fluxforge.track.promotion import champion_section
from fluxforge.track.registry import lineage_tags, register_challenger, set_version_tags
from fluxforge.track.runs import stage_run

PYFUNC = Path(__file__).with_name("clip_pyfunc.py")
MODEL = "mm_stream"  # the DAG model registered: the stream's final CLIP (models/mm_stream)
SCORES = "stream"  # its scores in mm_eval's metrics


@dataclass(frozen=True)
class ClipScores:
    version: str
    eval_set: str
    zero_shot: float


ClipChampion = ClipScores | Unreadable | None


def clip_headline(c: Mapping) -> dict[str, float]:
    """The numbers a version records and the gate reads (one model's block of ``mm_eval``'s metrics)."""
    zs, r = c["zero_shot.heldout"], c["retrieval.heldout"]
    return {"zero_shot": zs["accuracy"], "zero_shot_chance": zs["chance"], "zero_shot_unseen": c["zero_shot.unseen"]["accuracy"],
            "recall5": r["image_to_text.R5"], "recall5_chance": r["image_to_text.R5_chance"]}


def clip_tags(c: Mapping) -> dict[str, str]:
    """Evaluation tags at full precision, with the digest of the held-out sets they were measured on."""
    return {**{f"eval.{k}": repr(float(v)) for k, v in clip_headline(c).items()}, "eval.set_digest": c["eval_set_digest"]}


def clip_scores(version: str, tags: Mapping[str, str]) -> ClipScores | Unreadable:
    """A version's zero-shot accuracy from its tags, or why it cannot be trusted."""
    try:
        zs = float(tags["eval.zero_shot"])
    except KeyError:
        return Unreadable(version, "its evaluation tag eval.zero_shot is missing")
    except ValueError as err:
        return Unreadable(version, f"its evaluation tag eval.zero_shot does not parse ({err})")
    if not (math.isfinite(zs) and 0 <= zs <= 1):
        return Unreadable(version, f"its zero-shot accuracy {zs} is not an accuracy")
    if not tags.get("eval.set_digest"):
        return Unreadable(version, "it records no held-out set digest")
    return ClipScores(version, tags["eval.set_digest"], zs)


def champion_rule(zero_shot: float, digest: str, champion: ClipChampion, margin: float) -> tuple[bool, str]:
    if champion is None:
        return True, "no champion yet"
    if isinstance(champion, Unreadable):
        return False, f"champion v{champion.version} cannot be compared: {champion.why}; it stays champion"
    if champion.eval_set != digest:
        return False, (f"champion v{champion.version} was scored on another held-out set ({champion.eval_set[:12]}, this "
                       f"one {digest[:12]}): no comparison was made, so it stays champion")
    gain = zero_shot - champion.zero_shot
    return gain >= margin - 1e-9, (f"zero-shot {zero_shot:.3f} vs champion v{champion.version} {champion.zero_shot:.3f} "
                                   f"({gain:+.3f}, need >= +{margin:.3f}; a tie keeps the champion)")


def clip_gate(c: Mapping, cfg: MMGate, champion: ClipChampion) -> tuple[bool, list[str]]:
    """(passed, one PASS/FAIL line per rule) for one model's block of ``mm_eval``'s metrics."""
    h = clip_headline(c)
    rules = [
        (h["zero_shot"] >= cfg.min_zero_shot_over_chance * h["zero_shot_chance"],
         f"held-out zero-shot accuracy {h['zero_shot']:.3f} = {h['zero_shot'] / h['zero_shot_chance']:.1f}x chance "
         f"(need >= {cfg.min_zero_shot_over_chance:g}x)"),
        (h["recall5"] >= cfg.min_recall5_over_chance * h["recall5_chance"],
         f"held-out image->text R@5 {h['recall5']:.3f} = {h['recall5'] / h['recall5_chance']:.1f}x chance "
         f"(need >= {cfg.min_recall5_over_chance:g}x)"),
    ]
    if cfg.must_beat_champion:
        rules.append(champion_rule(h["zero_shot"], c["eval_set_digest"], champion, cfg.champion_margin))
    return all(ok for ok, _ in rules), [("PASS " if ok else "FAIL ") + text for ok, text in rules]


def read_clip_champion(client, name: str) -> ClipChampion:  # noqa: ANN001 - an MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return clip_scores(str(mv.version), mv.tags or {})


def register_clip(params: Params, ev: Mapping, model: str = MODEL, scores: str = SCORES) -> dict:
    """Register ``models/<model>`` as a new ``fluxforge-clip`` version (challenger); promote it if the gate passes on
    its scores (``ev[scores]``, mm_eval's block for that model)."""
    import mlflow

    c = ev[scores]
    name = params.mm.registry.model_name
    with stage_run("mm_register", params, params.mm.registry.model_dump(), inputs={"model": P.model_dir(model)}) as run:
        tags = {**lineage_tags(params, model), **clip_tags(c),
                "data.mm_curated.sha256": digest_path(P.MM_CURATED) if P.MM_CURATED.exists() else ""}
        version = register_challenger(name, P.model_dir(model), tags, PYFUNC,
                                      ["torch", "transformers", "safetensors", "pillow"])
        with champion_section(name, mlflow.get_tracking_uri()) as section:
            champion = read_clip_champion(section.client, name)
            passed, reasons = clip_gate(c, params.mm.registry.gate, champion)
            section.client.set_model_version_tag(name, version, "gate", "passed" if passed else "failed")
            if passed:
                section.move(version, "promote", "gate passed")
        set_version_tags(mlflow.MlflowClient(), name, version,
                         {"gate.reasons": "\n".join(reasons), "gate.champion": champion.version if champion else ""})
        nums = clip_headline(c)
        run.metrics({"promoted": int(passed), **nums})
        mlflow.set_tags({"registered_model": name, "registered_version": version})
    return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "promoted": passed,
            "previous_champion": champion.version if champion else None, "reasons": reasons, "headline": nums}
