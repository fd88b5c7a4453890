"""Image tables: the schema, reading and decoding PNG rows, and the arrays models train on.

A table is Parquet with ``id, image (PNG bytes), caption, concept, slice, split, modality``; an image and its
silhouette mask share ``id`` and differ in ``modality``. The curated tables (``data/mm/curated/<source>.parquet``)
hold only rows that decode to the mode and size their source promises, so the readers here can assume both.
Pixels reach models as float32 in [-1, 1], channels first, resized (bilinear) to the model's image size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fluxforge.errors import DataError

COLUMNS = ["id", "image", "caption", "concept", "slice", "split", "modality"]
MODALITIES = ("image", "mask")
SPLITS = ("train", "test", "unseen")


def read_image_table(path: Path | str) -> pd.DataFrame:
    """A table with every schema column (extra columns are kept); else a DataError naming the file and what is missing."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable Parquet image table ({type(err).__name__}: {err})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (an image table has {COLUMNS})")
    return df.reset_index(drop=True)


def decode(data: object) -> Image.Image | None:
    """The decoded picture, or None when the bytes are not a complete image."""
    if not isinstance(data, bytes | bytearray) or not data:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return img


def pixels(images: Sequence[bytes], size: int, channels: int = 3) -> np.ndarray:
    """``(N, channels, size, size)`` float32 in [-1, 1]: decoded, converted (RGB; L for one channel), resized bilinearly."""
    mode = "RGB" if channels == 3 else "L"
    out = np.empty((len(images), channels, size, size), dtype=np.float32)
    for i, data in enumerate(images):
        img = decode(data)
        if img is None:
            raise DataError(f"image {i} of {len(images)} does not decode: curated tables hold only decodable images")
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32).reshape(size, size, channels)
        out[i] = arr.transpose(2, 0, 1) / 127.5 - 1.0
    return out


@dataclass(frozen=True)
class ImageSet:
    """Rows of one curated source, decoded: what training and evaluation read."""

    ids: list[str]
    pixels: np.ndarray  # (N, C, S, S) float32 in [-1, 1]
    captions: list[str]
    concepts: list[str]
    slices: np.ndarray
    splits: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: np.ndarray) -> ImageSet:
        idx = np.flatnonzero(keep)
        return ImageSet([self.ids[i] for i in idx], self.pixels[idx], [self.captions[i] for i in idx],
                        [self.concepts[i] for i in idx], self.slices[idx], [self.splits[i] for i in idx])


def select_rows(df: pd.DataFrame, slices: Sequence[int] | None = None, splits: Sequence[str] | None = None,
                concepts: Sequence[str] | None = None, modality: str = "image") -> pd.DataFrame:
    keep = df["modality"] == modality
    if slices is not None:
        keep &= df["slice"].isin(list(slices))
    if splits is not None:
        keep &= df["split"].isin(list(splits))
    if concepts is not None:
        keep &= df["concept"].isin(list(concepts))
    return df[keep].reset_index(drop=True)


def load_image_set(table: Path | str | pd.DataFrame, size: int, slices: Sequence[int] | None = None,
                   splits: Sequence[str] | None = None, concepts: Sequence[str] | None = None,
                   modality: str = "image", channels: int = 3) -> ImageSet:
    """The rows of a curated table (a path or a frame) that match, decoded at ``size``; empty is a DataError."""
    df = read_image_table(table) if not isinstance(table, pd.DataFrame) else table
    rows = select_rows(df, slices, splits, concepts, modality)
    if rows.empty:
        raise DataError(f"no {modality} rows for slices={slices} splits={splits} concepts={concepts} in "
                        f"{table if not isinstance(table, pd.DataFrame) else 'the table'}")
    return ImageSet(rows["id"].tolist(), pixels(rows["image"].tolist(), size, channels), rows["caption"].tolist(),
                    rows["concept"].tolist(), rows["slice"].to_numpy(), rows["split"].tolist())


def masks_for(table: Path | str | pd.DataFrame, ids: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The silhouette masks of ``ids`` as ``(N, 1, S, S)`` in [-1, 1] and whether each id has one (zeros where not)."""
    df = read_image_table(table) if not isinstance(table, pd.DataFrame) else table
    masks = df[df["modality"] == "mask"].drop_duplicates("id").set_index("id")["image"]
    have = np.array([i in masks.index for i in ids], dtype=bool)
    out = np.zeros((len(ids), 1, size, size), dtype=np.float32)
    if have.any():
        out[have] = pixels([masks[i] for i, h in zip(ids, have) if h], size, channels=1)
    return out, have
