"""``mm_eval``: the image branch scored in one place.

* Linear probes on the held-out digits (sklearn's, 16x16): raw pixels, the MAE architecture at its random
  init (the init every objective started from), and each trained objective, on frozen CLS ⊕ mean features
  with masking off, with 95 % Wilson intervals.
* CLIP zero-shot classification over every world concept (prompt ensembles over the caption variants) on the
  held-out images of the trained slices, on the unseen colour-shape combinations and on the later slices
  (concepts the model has not been trained on yet: what a continual stream starts from); the confusion matrix of
  the held-out set; image->text and text->image R@1 / R@5 on the held-out pairs. Both the pretrained CLIP
  (``models/clip``) and the stream's (``models/mm_stream``, what ``mm_register`` registers) are scored.
* The MAE reconstruction grid (original / visible patches / reconstruction) per objective.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPModel, PreTrainedTokenizerBase, ViTMAEForPreTraining

from fluxforge.config import MMConfig
from fluxforge.data.images import ImageSet, load_image_set
from fluxforge.errors import DataError
from fluxforge.eval.linear_probe import linear_probe
from fluxforge.eval.vision import encoder_features, reconstruct
from fluxforge.eval.zero_shot import class_embeddings, image_embeddings, retrieval, text_embeddings, zero_shot
from fluxforge.io import atomic_dir, write_json
from fluxforge.world.images import DIGITS, caption_variants, concepts

GRID_SEED = 7  # the reconstruction grid's images and noise


def eval_set_digest(*sets: ImageSet) -> str:
    """Identity of the held-out sets: scores on other sets are not comparable (the registry gate checks it)."""
    h = hashlib.sha256()
    for s in sets:
        h.update("\n".join(f"{i}\t{c}" for i, c in zip(s.ids, s.captions)).encode())
    return h.hexdigest()[:32]


def probes(mm: MMConfig, models: Mapping[str, ViTMAEForPreTraining], random_init: ViTMAEForPreTraining,
           digits: Path) -> dict:
    """Probe accuracy with intervals per feature set (``raw_pixels``, ``random_init``, each objective)."""
    size, ev = mm.mae.model.image_size, mm.eval
    train = load_image_set(digits, size, splits=["train"])
    test = load_image_set(digits, size, splits=["test"])
    y_train, y_test = np.array(train.concepts), np.array(test.concepts)
    stored = mm.curate.sources["digits"].image.size  # raw pixels at the size the table stores
    raw = {s: load_image_set(digits, stored, splits=[s], channels=1).pixels.reshape(len(y), -1)
           for s, y in (("train", y_train), ("test", y_test))}
    features = {"raw_pixels": (raw["train"], raw["test"])}
    for name, model in {"random_init": random_init, **models}.items():
        features[name] = (encoder_features(model, train.pixels, ev.batch_size), encoder_features(model, test.pixels, ev.batch_size))
    table = {name: linear_probe(a, y_train, b, y_test, ev.probe_c, ev.probe_max_iter).to_dict() for name, (a, b) in features.items()}
    for name in models:
        table[name]["over_random_init"] = table[name]["accuracy"] - table["random_init"]["accuracy"]
    return table


def grids(mm: MMConfig, models: Mapping[str, ViTMAEForPreTraining], shapes: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per objective: uint8 RGB ``(N, S, S, 3)`` arrays of the originals, the visible patches and the reconstructions."""
    test = load_image_set(shapes, mm.mae.model.image_size, slices=mm.mae.slices, splits=["test"])
    rng = np.random.default_rng(GRID_SEED)
    pick = np.sort(rng.choice(len(test), size=min(mm.eval.grid_images, len(test)), replace=False))
    noise = torch.rand(len(pick), mm.mae.model.num_patches, generator=torch.Generator().manual_seed(GRID_SEED))

    def rgb(x: np.ndarray) -> np.ndarray:
        return np.round((x[:, :3].transpose(0, 2, 3, 1) + 1) * 127.5).clip(0, 255).astype(np.uint8)

    out = {}
    for name, model in models.items():
        r = reconstruct(model, test.pixels[pick], noise)
        out[name] = {"original": rgb(r.original), "masked": rgb(r.masked), "reconstructed": rgb(r.reconstructed)}
    return out


def clip_scores(mm: MMConfig, model: CLIPModel, tok: PreTrainedTokenizerBase, shapes: Path,
                trained: Sequence[int]) -> tuple[dict, dict]:
    """(metrics, confusion of the held-out set) for a CLIP trained on the world slices ``trained``; the label space is
    every world concept. ``heldout``: the test images of the trained slices; ``slice<k>``: each later slice's."""
    size, labels = mm.clip.vision.image_size, concepts()
    classes = class_embeddings(model, tok, labels, caption_variants)
    sets = {"heldout": load_image_set(shapes, size, slices=trained, splits=["test"]),
            "unseen": load_image_set(shapes, size, splits=["unseen"])}
    later = sorted({int(s) for s in load_image_set(shapes, size, splits=["test"]).slices} - set(trained))
    sets.update({f"slice{s}": load_image_set(shapes, size, slices=[s], splits=["test"]) for s in later})
    metrics, confusion = {"slices": list(trained)}, {}
    for name, images in sets.items():
        emb = image_embeddings(model, images.pixels, mm.eval.batch_size)
        zs = zero_shot(emb, classes, images.concepts, labels)
        metrics[f"zero_shot.{name}"] = zs.summary()
        if name == "heldout":
            confusion = zs.confusion(images.concepts, labels)
            metrics["retrieval.heldout"] = retrieval(emb, text_embeddings(model, tok, images.captions), images.captions)
    metrics["eval_set_digest"] = eval_set_digest(*sets.values())
    return metrics, confusion


def evaluate_image_branch(mm: MMConfig, models: Mapping[str, ViTMAEForPreTraining], random_init: ViTMAEForPreTraining,
                          clips: Mapping[str, CLIPModel], tok: PreTrainedTokenizerBase, curated: Path, out: Path) -> dict:
    """Everything above; the arrays (grids, confusions) go to ``out`` (one rename), the numbers are returned.

    ``clips``: ``clip`` (the pretrained model, trained on ``mm.clip.slices``) and, when the stream ran, ``stream``
    (``models/mm_stream``, trained on those and ``mm.stream.slices``), each scored under its own key.
    """
    metrics = {"probes": probes(mm, models, random_init, curated / "digits.parquet")}
    trained = {"clip": mm.clip.slices, "stream": [*mm.clip.slices, *mm.stream.slices]}
    confusions = {}
    for name, clip in clips.items():
        metrics[name], confusions[name] = clip_scores(mm, clip, tok, curated / "shapes.parquet", trained[name])
    with atomic_dir(out) as tmp:
        for name, arrays in grids(mm, models, curated / "shapes.parquet").items():
            np.savez_compressed(tmp / f"recon_{name}.npz", **arrays)
        for name, confusion in confusions.items():
            write_json(tmp / ("confusion.json" if name == "clip" else f"confusion_{name}.json"), confusion)
    return metrics


def table_labels(concepts_in_table: Sequence[str]) -> tuple[list[str], Callable[[str], list[str]]]:
    """The label space and prompts for an image table: every world concept with its caption variants when the table
    holds world pictures, the ten digits when it holds digits; anything else is a DataError naming the concepts."""
    world, digits = concepts(), [f"digit {d}" for d in DIGITS]
    present = set(concepts_in_table)
    for labels in (world, digits):
        if present <= set(labels):
            return labels, caption_variants
    raise DataError(f"concepts {sorted(present - set(world))[:5]} are neither world concepts nor digits: no prompts "
                    "to classify them with")


def score_image_table(model: CLIPModel, tok: PreTrainedTokenizerBase, table: Path, splits: Sequence[str] | None,
                      batch_size: int = 256, limit: int | None = None) -> dict:
    """Zero-shot accuracy (with its chance and per concept) and image<->text retrieval of a CLIP on the rows of a
    curated image table (``fluxforge eval --task <table>.parquet``): the same scores ``mm_eval`` records."""
    images = load_image_set(table, model.config.vision_config.image_size, splits=splits)
    if limit is not None:
        images = images.select(np.arange(len(images)) < limit)
    labels, prompts = table_labels(images.concepts)
    emb = image_embeddings(model, images.pixels, batch_size)
    zs = zero_shot(emb, class_embeddings(model, tok, labels, prompts), images.concepts, labels)
    return {"images": len(images), "labels": len(labels), "zero_shot": zs.summary(),
            "retrieval": retrieval(emb, text_embeddings(model, tok, images.captions), images.captions)}


def headline(metrics: Mapping) -> dict[str, float]:
    """The numbers an MLflow run and ``fluxforge summary`` show."""
    out = {f"probe.{k}": v["accuracy"] for k, v in metrics["probes"].items()}
    for name in ("clip", "stream"):
        if c := metrics.get(name):
            out.update({f"{name}.zero_shot": c["zero_shot.heldout"]["accuracy"],
                        f"{name}.zero_shot_chance": c["zero_shot.heldout"]["chance"],
                        f"{name}.zero_shot_unseen": c["zero_shot.unseen"]["accuracy"],
                        **{f"{name}.{k}": v for k, v in c["retrieval.heldout"].items()}})
    return out
