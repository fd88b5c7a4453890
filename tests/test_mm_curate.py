"""Image curation: every bad row rejected with its reason and file:row, near duplicates found, the books balanced."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fluxforge.config import MMCurate
from fluxforge.data.contracts import ContractError
from fluxforge.data.image_contract import ImageRules, check_rows, check_table
from fluxforge.data.image_curate import curate_images
from fluxforge.data.image_dedup import near_duplicates, pixel_diff
from fluxforge.data.images import COLUMNS, read_image_table
from fluxforge.errors import DataError

VOCAB = ["a", "red", "blue", "circle", "square", "small", "large"]
RULES = ImageRules("shapes", {"image": ("RGB", 8), "mask": ("L", 8)})


def png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def picture(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3))


def row(rid: str, image: bytes, caption: str = "a red circle", split: str = "train", modality: str = "image") -> dict:
    return {"id": rid, "image": image, "caption": caption, "concept": "red circle", "slice": 1, "split": split,
            "modality": modality}


def mask_row(rid: str) -> dict:
    return row(rid, png(np.zeros((8, 8)), "L"), modality="mask")


@pytest.fixture
def table() -> pd.DataFrame:
    rows = [row("ok", png(picture(0), "RGB")), mask_row("ok"),
            row("trunc", png(picture(1), "RGB")[:20]), mask_row("trunc"),
            row("rgba", png(np.dstack([picture(2), np.full((8, 8), 255)]), "RGBA")),
            row("big", png(picture(3, 9), "RGB")),
            row("empty", png(picture(4), "RGB"), caption="  "),
            row("oov", png(picture(5), "RGB"), caption="a vermilion circle"),
            row("long", png(picture(6), "RGB"), caption=" ".join(["a red circle"] * 3)),
            row("nosplit", png(picture(7), "RGB"), split="valid"),
            row("nomask", png(picture(8), "RGB")), mask_row("orphan")]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_each_bad_row_is_rejected_with_its_reason_and_place(table, tmp_path):
    kept, rejected = check_rows(table, RULES, VOCAB, max_tokens=8, file=tmp_path / "shapes.parquet")
    reasons = dict(zip(rejected["id"] + "/" + rejected["modality"], rejected["reason"]))
    assert reasons == {"trunc/image": "undecodable", "trunc/mask": "mask_without_image", "rgba/image": "wrong_mode",
                       "big/image": "wrong_size", "empty/image": "empty_caption", "oov/image": "oov_caption",
                       "long/image": "long_caption", "nosplit/image": "unknown_split", "orphan/mask": "mask_without_image"}
    assert sorted(kept["id"]) == ["nomask", "ok", "ok"]  # an image without a mask stays (the mask is optional)
    oov = rejected.set_index("id").loc["oov"]
    assert oov["detail"] == "unknown words: vermilion" and oov["file"].endswith("shapes.parquet") and oov["row"] == 7
    assert rejected.set_index("id").loc["long", "detail"] == "got 11"  # 9 words + BOS + EOS > 8
    assert len(kept) + len(rejected) == len(table)


def _copy(data: bytes, shift: int) -> bytes:
    arr = np.asarray(Image.open(io.BytesIO(data)), dtype=int) + shift
    return png(np.clip(arr, 0, 255), "RGB")


def test_near_duplicates_are_found_within_and_across_splits():
    """A brightness-shifted copy is a duplicate; another picture of the same kind is not; train copies win."""
    base = [png(picture(i, 32), "RGB") for i in range(3)]
    df = pd.DataFrame([row("t0", base[0]), row("t1", base[1]), row("copy_in_test", _copy(base[0], 3), split="test"),
                       row("copy_in_train", _copy(base[1], -2)), row("other", base[2], split="test"),
                       row("first_test", _copy(base[2], 1), split="unseen")], columns=COLUMNS)
    found = {df.at[d.row, "id"]: (df.at[d.of, "id"], d.across) for d in near_duplicates(df, 8, 4, 2.0)}
    assert found == {"copy_in_test": ("t0", True), "copy_in_train": ("t1", False), "first_test": ("other", True)}


def test_the_pixel_check_keeps_different_pictures_whose_phash_collides():
    """Two different noisy pictures of one flat scene share a pHash; their pixels differ by the noise."""
    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 3), 120)
    a, b = (png(np.clip(flat + rng.normal(0, 5, flat.shape), 0, 255), "RGB") for _ in range(2))
    df = pd.DataFrame([row("a", a), row("b", b)], columns=COLUMNS)
    assert near_duplicates(df, 8, 64, 2.0) == []  # every pair is a pHash candidate here
    arrays = [np.asarray(Image.open(io.BytesIO(x))) for x in (a, b)]
    assert pixel_diff(arrays[0], arrays[1]) > 4 and pixel_diff(arrays[0], arrays[0] + 3) == 0


def test_curation_balances_the_books_per_source_and_scores_planted_defects(table, tmp_path):
    world, out = tmp_path / "world", tmp_path / "curated"
    world.mkdir()
    dup = row("dup", _copy(table.at[0, "image"], 2), split="test")
    pd.concat([table, pd.DataFrame([dup, mask_row("dup")])], ignore_index=True).to_parquet(world / "shapes.parquet")
    digits = pd.DataFrame([row(f"d{i}", png(picture(10 + i, 4)[..., 0], "L"), caption="a small circle") for i in range(3)])
    digits.to_parquet(world / "digits.parquet")
    pd.DataFrame({"id": ["trunc", "dup"], "defect": ["undecodable", "near_dup_across"], "copy_of": ["", "ok"]}).to_parquet(
        world / "labels.parquet")
    cfg = MMCurate.model_validate({"sources": {"shapes": {"image": {"mode": "RGB", "size": 8}, "mask": {"mode": "L", "size": 8}},
                                               "digits": {"image": {"mode": "L", "size": 4}}}})
    m = curate_images(world, out, cfg, VOCAB, 8, tmp_path / "reports")
    for step in ("contract", "dedup"):
        for source, books in m[step]["by_source"].items():
            assert books["ingested"] == books["kept"] + sum(books["rejected"].values()), (step, source)
    assert m["funnel"] == {"ingested": 17, "after_contract": 8, "after_dedup": 6}
    assert m["dedup"]["rejected_by_reason"] == {"near_duplicate_across_splits": 1, "mask_without_image": 1}
    assert m["planted"]["recall.undecodable"] == 1.0 and m["planted"]["recall.near_dup_across"] == 1.0
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert len(rejected) == 11 and rejected["reason"].notna().all() and (rejected["file"] != "").all()
    assert len(read_image_table(out / "shapes.parquet")) == 3 and len(read_image_table(out / "digits.parquet")) == 3
    assert (tmp_path / "reports" / "shapes.json").exists()


def test_a_curated_table_that_breaks_the_table_suite_stops(tmp_path):
    rows = [row("same", png(picture(0), "RGB")), row("same", png(picture(1), "RGB"))]
    with pytest.raises(ContractError, match="expect_compound_columns_to_be_unique"):
        check_table(pd.DataFrame(rows, columns=COLUMNS), RULES, 1, tmp_path / "r.json")


def test_a_table_without_the_schema_is_an_error_naming_file_and_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"id": ["a"], "image": [b"x"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"t\.parquet: missing columns \['caption', 'concept', 'slice', 'split', 'modality'\]"):
        read_image_table(path)
