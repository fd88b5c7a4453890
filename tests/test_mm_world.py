"""The generated image world: concepts over slices, captions in the vocabulary, aligned masks, digits, planted defects."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fluxforge.config import MMWorld
from fluxforge.world import images as W

SMALL = MMWorld(train_per_concept=3, test_per_concept=2, unseen_per_concept=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("mmw") / "world"
    summary = W.generate_image_world(SMALL, out)
    return out, summary


def _table(world, name: str) -> pd.DataFrame:  # noqa: ANN001
    return pd.read_parquet(world[0] / f"{name}.parquet")


def test_slices_add_concepts_and_one_concept_changes_its_look(world):
    df = _table(world, "shapes")
    clean = df[~df["id"].isin(_table(world, "labels")["id"]) & (df["modality"] == "image")]
    per_slice = {s: set(g["concept"]) for s, g in clean.groupby("slice")}
    assert per_slice[2].isdisjoint(per_slice[1]) and per_slice[3] - {"blue square"} <= set(W.concepts()) - per_slice[1] - per_slice[2]
    assert "blue square" in per_slice[1] and "blue square" in per_slice[3]  # the changed look, trained again in slice 3
    unseen = {W.concept_name(c, s) for c, s in W.UNSEEN}
    assert set(clean.loc[clean["split"] == "unseen", "concept"]) == unseen
    assert unseen.isdisjoint(clean.loc[clean["split"] != "unseen", "concept"])  # never trained on, never tested as seen
    for concept in unseen:  # composition: the colour and the shape are each seen in training
        colour, shape = concept.split()
        trained = clean.loc[clean["split"] == "train", "concept"]
        assert trained.str.startswith(colour + " ").any() and trained.str.endswith(" " + shape).any()


def test_the_changed_concept_looks_different_in_slice_3(world):
    """Blue squares become outlines: far fewer silhouette pixels than slice 1's filled ones of the same size."""
    df = _table(world, "shapes")
    masks = df[(df["modality"] == "mask") & (df["concept"] == "blue square") & df["id"].str.match(r"s\d-\d+$")]
    fill = {s: np.mean([np.asarray(Image.open(io.BytesIO(b))).mean() for b in g["image"]]) for s, g in masks.groupby("slice")}
    assert fill[3] < 0.75 * fill[1]


def test_each_image_has_an_aligned_silhouette_mask(world):
    df = _table(world, "shapes")
    first = df[df["id"] == "s1-00000"].set_index("modality")
    img = np.asarray(Image.open(io.BytesIO(first.at["image", "image"])), dtype=float)
    mask = np.asarray(Image.open(io.BytesIO(first.at["mask", "image"])))
    assert img.shape == (32, 32, 3) and mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}
    colour = np.array(W.COLOURS[first.at["image", "concept"].split()[0]], dtype=float)
    inside = np.abs(img[mask == 255] - colour).mean()
    outside = np.abs(img[mask == 0] - colour).mean()
    assert inside < 30 < outside  # the mask covers the coloured shape and nothing else


def test_clean_captions_use_only_the_vocabulary_and_name_the_concept(world):
    df = _table(world, "shapes")
    clean = df[~df["id"].isin(_table(world, "labels")["id"])]
    vocab = set(W.vocabulary())
    assert all(set(c.split()) <= vocab for c in clean["caption"])
    assert all(c in cap for c, cap in zip(clean["concept"], clean["caption"]))
    digits = _table(world, "digits")
    assert all(set(c.split()) <= vocab for c in digits["caption"])
    for concept in W.concepts():
        variants = W.caption_variants(concept)
        assert len(variants) == len(set(variants)) and all(concept in v for v in variants)


def test_digits_are_16x16_grey_and_split_per_class(world):
    digits = _table(world, "digits")
    assert len(digits) == 1797 and set(digits["split"]) == {"train", "test"}
    img = Image.open(io.BytesIO(digits.at[0, "image"]))
    assert img.mode == "L" and img.size == (16, 16)
    share = digits.groupby("concept")["split"].apply(lambda s: (s == "test").mean())
    assert share.between(0.30, 0.36).all()


def test_planted_defects_are_labelled_extra_rows(world):
    df, labels = _table(world, "shapes"), _table(world, "labels")
    assert set(labels["defect"]) == set(W.DEFECTS) and labels["id"].is_unique
    images = df[df["modality"] == "image"].set_index("id")
    bad = labels.set_index("id")
    assert images.loc[bad.index[bad["defect"] == "empty_caption"], "caption"].eq("").all()
    long = images.loc[bad.index[bad["defect"] == "long_caption"], "caption"]
    assert long.map(lambda c: len(c.split()) >= W.LONG_CAPTION_WORDS and set(c.split()) <= set(W.vocabulary())).all()
    across = images.loc[bad.index[bad["defect"] == "near_dup_across"]]
    assert (across["split"] == "test").all()
    assert (images.loc[bad.loc[across.index, "copy_of"], "split"] == "train").all()
    assert world[1]["clean_images"] + len(labels) == world[1]["images"]


def test_the_same_config_writes_the_same_bytes(tmp_path, world):
    W.generate_image_world(SMALL, tmp_path / "again")
    for name in ("shapes.parquet", "digits.parquet", "labels.parquet", "vocab.json"):
        assert (tmp_path / "again" / name).read_bytes() == (world[0] / name).read_bytes()
