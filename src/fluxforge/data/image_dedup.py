"""Near-duplicate images: perceptual-hash candidates (imagehash.phash), confirmed pixel by pixel.

At 32x32 a 64-bit pHash sees only where the bright blob sits, so different small shapes at the same place
collide (distance 0 between a green cross and a cyan star on black, measured on the world). As MinHash
candidates are confirmed by exact Jaccard in the text dedup, a pHash candidate here is a duplicate only when
the two pictures also agree pixel by pixel: mean absolute RGB difference, after removing their mean
brightness difference, at most ``max_pixel_diff`` (0-255 scale). Clean world images of one scene differ by
at least their sensor noise (about 5.6); a re-saved, brightness-shifted, marked copy by well under 1.

Rows are visited train first, then test, then unseen (file order within a split); a row is rejected when it
duplicates a row kept before it: ``near_duplicate`` inside its split, ``near_duplicate_across_splits`` when
the kept row is in another split (a held-out copy of a training image is leakage).
"""

from __future__ import annotations

from dataclasses import dataclass

import imagehash
import numpy as np
import pandas as pd

from fluxforge.data.images import SPLITS, decode

SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class Duplicate:
    row: int  # index label of the rejected row
    of: int  # index label of the kept row it duplicates
    distance: int  # pHash Hamming distance
    pixel_diff: float
    across: bool  # the two rows are in different splits


def phash_words(img, hash_size: int) -> np.ndarray:  # noqa: ANN001 - a PIL image
    """The pHash of ``img`` (grey levels) packed into uint64 words."""
    bits = imagehash.phash(img.convert("RGB"), hash_size=hash_size).hash.flatten()
    return np.packbits(np.concatenate([bits, np.zeros(-len(bits) % 64, dtype=bool)])).view(">u8").astype(np.uint64)


def hamming(words: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Hamming distance of every hash in ``words`` (N, W) to ``row`` (W,)."""
    return np.bitwise_count(words ^ row).sum(axis=1)


def pixel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two same-shaped pixel arrays after removing their mean brightness difference."""
    d = a.astype(np.float32) - b.astype(np.float32)
    return float(np.abs(d - d.mean()).mean())


def near_duplicates(images: pd.DataFrame, hash_size: int, max_distance: int, max_pixel_diff: float) -> list[Duplicate]:
    """Duplicates among decodable ``images`` (columns image, split; one modality, one source), in visiting order."""
    order = images.assign(_rank=images["split"].map(SPLIT_ORDER)).sort_values("_rank", kind="stable").index
    decoded = {i: decode(images.at[i, "image"]) for i in order}
    words = np.stack([phash_words(decoded[i], hash_size) for i in order])
    arrays = [np.asarray(decoded[i].convert("RGB")) for i in order]
    kept = np.zeros(len(order), dtype=bool)
    found = []
    for k, label in enumerate(order):
        dist = hamming(words[:k], words[k])
        match = None
        for j in np.flatnonzero(kept[:k] & (dist <= max_distance)):
            if arrays[j].shape == arrays[k].shape and (diff := pixel_diff(arrays[j], arrays[k])) <= max_pixel_diff:
                match = Duplicate(int(label), int(order[j]), int(dist[j]), diff,
                                  images.at[label, "split"] != images.at[order[j], "split"])
                break
        if match is None:
            kept[k] = True
        else:
            found.append(match)
    return found
