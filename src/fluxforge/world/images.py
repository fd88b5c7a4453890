"""The generated image world: 32x32 RGB pictures of colour x shape concepts with captions, over three time slices.

Every image has ground truth (concept, slice, split, size, position, background) and an aligned silhouette mask,
the second modality. Slice 1 holds the base concepts; slices 2 and 3 add concepts (a new shape, a new colour)
and in slice 3 one base concept changes its look (the blue square becomes an outline), which is what a
continual stream must absorb. Four colour-shape combinations are never trained on: their colour and their
shape are seen apart, so zero-shot accuracy on them measures composition. scikit-learn's bundled digits,
upsampled to 16x16 (bilinear), are the real images the linear probes are scored on.

Planted defects (undecodable PNG, wrong mode or size, empty / out-of-vocabulary / over-long caption, near
duplicates within and across splits) are extra rows copied from clean ones, listed in ``labels.parquet``, so
curation must give back exactly the designed set and can be scored against the labels.

Tables (Parquet, PNG bytes): ``id, image, caption, concept, slice, split, modality``; an image and its mask
share the ``id`` and differ in ``modality`` (``image`` | ``mask``).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fluxforge.config import MMWorld
from fluxforge.io import atomic_dir, write_json

SIZE = 32  # pixels per side of a world image
DIGIT_SIZE = 16  # the digits, upsampled from 8x8
SCALE = 4  # drawn at 4x and box-filtered down: anti-aliased edges
MAX_TILT = math.radians(15)  # shapes turn a little; a square turned 45 degrees would be another shape (a diamond)
COLUMNS = ["id", "image", "caption", "concept", "slice", "split", "modality"]
SOURCES = ("shapes", "digits")  # one table each under data/mm/world/

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 75, 225), "yellow": (235, 210, 35),
           "magenta": (205, 45, 195), "orange": (245, 135, 25), "cyan": (35, 205, 215)}
SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
BACKGROUNDS = {"black": (18, 18, 18), "grey": (120, 120, 120), "white": (238, 238, 238), "brown": (105, 72, 42)}
SIZES = {"small": (7.0, 8.5), "large": (10.5, 12.5)}  # radius range in pixels
POSITIONS = {"left": (10, 16), "right": (22, 16), "top": (16, 10), "bottom": (16, 22), "centre": (16, 16)}
TEMPLATES = (  # captions vary in detail, as real ones do: identical short captions are the multi-positive pairs
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a {background} background",
    "a {colour} {shape} at the {position}",
    "a {size} {colour} {shape} at the {position} on a {background} background",
    "a {background} background with a {size} {colour} {shape} at the {position}",
    "the {position} of a {background} picture shows a {size} {colour} {shape}",
)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a handwritten digit {digit}", "a picture of the digit {digit}")
LONG_CAPTION_WORDS = 64  # the over-long defect: at least this many words
OOV_WORDS = ("vermilion", "hexagon", "checkered", "tiny")  # never in the vocabulary: the out-of-vocabulary defect

# the concepts each slice adds; slice 1's combinations minus UNSEEN are the base concepts
SLICE_CONCEPTS = {
    1: [(c, s) for c in ("red", "green", "blue", "yellow", "magenta") for s in ("circle", "square", "triangle", "cross")],
    2: [("red", "star"), ("green", "star"), ("blue", "star"), ("orange", "circle"), ("orange", "square"),
        ("orange", "triangle")],
    3: [("yellow", "ring"), ("magenta", "ring"), ("orange", "ring"), ("cyan", "cross"), ("cyan", "star"),
        ("cyan", "circle")],
}
UNSEEN = [("red", "cross"), ("green", "triangle"), ("blue", "circle"), ("yellow", "square")]  # slice 1, held out
CHANGED = ("blue", "square", 3)  # this concept is drawn as an outline from slice 3 on
DEFECTS = ("undecodable", "wrong_mode", "wrong_size", "empty_caption", "oov_caption", "long_caption",
           "near_dup_within", "near_dup_across")


def concept_name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def digit_concept(label: int) -> str:
    return f"digit {DIGITS[label]}"


def concepts() -> list[str]:
    """Every world concept in world order (slice 1, its unseen combinations, then the later slices): the zero-shot
    label space."""
    return [concept_name(c, s) for sl in sorted(SLICE_CONCEPTS) for c, s in SLICE_CONCEPTS[sl]]


def concept_table() -> pd.DataFrame:
    """One row per concept: colour, shape, the slice that adds it, held out (never trained on), look changes in."""
    rows = [{"concept": concept_name(c, s), "colour": c, "shape": s, "slice": sl, "held_out": (c, s) in UNSEEN,
             "changes_in": CHANGED[2] if (c, s) == CHANGED[:2] else 0}
            for sl in sorted(SLICE_CONCEPTS) for c, s in SLICE_CONCEPTS[sl]]
    return pd.DataFrame(rows)


def caption_variants(concept: str) -> list[str]:
    """Every caption the world can write for ``concept`` (each template with every size, position and background
    it names): zero-shot classification ensembles its prompts over these."""
    if concept.startswith("digit "):
        return [t.format(digit=concept.removeprefix("digit ")) for t in DIGIT_TEMPLATES]
    colour, shape = concept.split(" ", 1)
    slots = {"size": list(SIZES), "position": list(POSITIONS), "background": list(BACKGROUNDS)}
    out = []
    for t in TEMPLATES:
        named = [k for k in slots if "{" + k + "}" in t]
        for values in itertools.product(*(slots[k] for k in named)):
            out.append(t.format(colour=colour, shape=shape, **dict(zip(named, values))))
    return out


def vocabulary() -> list[str]:
    """Every word a clean caption can hold, sorted: the CLIP tokenizer's vocabulary and the contract's."""
    words: set[str] = set()
    for t in TEMPLATES + DIGIT_TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for group in (COLOURS, SHAPES, BACKGROUNDS, SIZES, DIGITS):
        for item in group:
            words.update(item.split())
    words.update(w for p in POSITIONS for w in p.split())
    return sorted(words)


# ----------------------------------------------------------------------------- drawing
def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        pts = [(x * math.sqrt(2) * 0.8, y * math.sqrt(2) * 0.8) for x, y in pts]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(a), (1.0 if k % 2 == 0 else 0.45) * math.sin(a))
               for k, a in enumerate(-math.pi / 2 + k * math.pi / 5 for k in range(10))]
    elif shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [((cx + r * (x * ca - y * sa)) * SCALE, (cy + r * (x * sa + y * ca)) * SCALE) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill: object,
                outline: bool) -> None:
    box = [(cx - r) * SCALE, (cy - r) * SCALE, (cx + r) * SCALE, (cy + r) * SCALE]
    width = max(2, round(0.3 * r * SCALE))
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif outline:
        draw.polygon(_polygon(shape, cx, cy, r, angle), outline=fill, width=width)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


@dataclass(frozen=True)
class Scene:
    """What one picture shows: its ground truth."""

    colour: str
    shape: str
    size: str
    position: str
    background: str
    outline: bool = False  # the changed look

    @property
    def concept(self) -> str:
        return concept_name(self.colour, self.shape)


def draw(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """The RGB picture and its aligned silhouette mask (mode L, 0 or 255), with jittered geometry, colour and noise."""
    lo, hi = SIZES[scene.size]
    r = rng.uniform(lo, hi)
    px, py = POSITIONS[scene.position]
    cx, cy = px + rng.uniform(-2, 2), py + rng.uniform(-2, 2)
    angle = rng.uniform(-MAX_TILT, MAX_TILT)
    bg = tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255)) for v in BACKGROUNDS[scene.background])
    fg = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[scene.colour])
    big = Image.new("RGB", (SIZE * SCALE, SIZE * SCALE), bg)
    silhouette = Image.new("L", big.size, 0)
    _draw_shape(ImageDraw.Draw(big), scene.shape, cx, cy, r, angle, fg, scene.outline)
    _draw_shape(ImageDraw.Draw(silhouette), scene.shape, cx, cy, r, angle, 255, scene.outline)
    img = np.asarray(big.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float64)
    img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    mask = np.asarray(silhouette.resize((SIZE, SIZE), Image.Resampling.BOX)) >= 128
    return Image.fromarray(img, "RGB"), Image.fromarray((mask * 255).astype(np.uint8), "L")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def caption(scene: Scene, rng: np.random.Generator) -> str:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(size=scene.size, colour=scene.colour, shape=scene.shape, position=scene.position,
                           background=scene.background)


# ----------------------------------------------------------------------------- the tables
def _scenes(colour: str, shape: str, n: int, outline: bool, rng: np.random.Generator) -> Iterator[Scene]:
    for _ in range(n):
        yield Scene(colour, shape, str(rng.choice(list(SIZES))), str(rng.choice(list(POSITIONS))),
                    str(rng.choice(list(BACKGROUNDS))), outline)


def _rows(rid: str, scene: Scene, sl: int, split: str, rng: np.random.Generator) -> list[dict]:
    img, mask = draw(scene, rng)
    text = caption(scene, rng)
    base = {"id": rid, "caption": text, "concept": scene.concept, "slice": sl, "split": split}
    return [{**base, "image": png(img), "modality": "image"}, {**base, "image": png(mask), "modality": "mask"}]


def clean_shapes(cfg: MMWorld, rng: np.random.Generator) -> pd.DataFrame:
    """The designed set: per slice, each new concept's train and test images (and the unseen combinations)."""
    rows: list[dict] = []
    for sl in sorted(SLICE_CONCEPTS):
        plan = [(c, s, False) for c, s in SLICE_CONCEPTS[sl]]
        if sl == CHANGED[2]:
            plan.append((CHANGED[0], CHANGED[1], True))
        for c, s, outline in plan:
            splits = [("unseen", cfg.unseen_per_concept)] if (c, s) in UNSEEN else \
                [("train", cfg.train_per_concept), ("test", cfg.test_per_concept)]
            for split, n in splits:
                for scene in _scenes(c, s, n, outline, rng):
                    rows += _rows(f"s{sl}-{len(rows) // 2:05d}", scene, sl, split, rng)
    return pd.DataFrame(rows, columns=COLUMNS)


def _perturbed(data: bytes, rng: np.random.Generator) -> bytes:
    """A near duplicate: the brightness shifted a little and a few pixels overwritten (a re-saved, marked copy)."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16) + int(rng.integers(-4, 5))
    ys, xs = rng.integers(0, arr.shape[0], 6), rng.integers(0, arr.shape[1], 6)
    arr[ys, xs] += rng.integers(-20, 21, (6, 3))
    return png(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))


def _defective(kind: str, row: pd.Series, rng: np.random.Generator) -> dict:
    """A copy of a clean image row with one planted defect."""
    out = row.to_dict()
    img = Image.open(io.BytesIO(row["image"]))
    if kind == "undecodable":
        out["image"] = row["image"][: len(row["image"]) // 3]
    elif kind == "wrong_mode":
        out["image"] = png(img.convert("RGBA" if rng.random() < 0.5 else "L"))
    elif kind == "wrong_size":
        out["image"] = png(img.resize((28, 28), Image.Resampling.BILINEAR))
    elif kind == "empty_caption":
        out["caption"] = ""
    elif kind == "oov_caption":
        words = row["caption"].split()
        words.insert(int(rng.integers(len(words))), str(rng.choice(OOV_WORDS)))
        out["caption"] = " ".join(words)
    elif kind == "long_caption":
        repeats = -(-LONG_CAPTION_WORDS // len(row["caption"].split()))
        out["caption"] = " ".join([row["caption"]] * repeats)  # every word known: only its length is wrong
    elif kind in ("near_dup_within", "near_dup_across"):
        out["image"] = _perturbed(row["image"], rng)
        out["split"] = "train" if kind == "near_dup_within" else "test"
    return out


def plant_defects(clean: pd.DataFrame, cfg: MMWorld, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Defective copies of clean rows (image and mask, a new id each) and their labels (id, defect)."""
    images = clean[clean["modality"] == "image"]
    trained = images[images["split"] == "train"]
    rows, labels = [], []
    for kind in DEFECTS:
        pool = trained if kind.startswith("near_dup") else images
        n = round(getattr(cfg.defects, kind) * len(images))
        for k, i in enumerate(rng.choice(len(pool), size=min(n, len(pool)), replace=False)):
            src = pool.iloc[int(i)]
            bad = _defective(kind, src, rng)
            bad["id"] = f"s{src['slice']}-{kind}-{k:03d}"
            mask = clean[(clean["id"] == src["id"]) & (clean["modality"] == "mask")].iloc[0].to_dict()
            rows += [bad, {**mask, "id": bad["id"], "caption": bad["caption"], "split": bad["split"]}]
            labels.append({"id": bad["id"], "defect": kind, "copy_of": src["id"]})
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(labels, columns=["id", "defect", "copy_of"])


def digits_table(cfg: MMWorld, rng: np.random.Generator) -> pd.DataFrame:
    """scikit-learn's bundled 8x8 digits, upsampled to 16x16 (bilinear), split train/test per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    test = np.zeros(len(digits.target), dtype=bool)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        test[rng.choice(idx, size=round(cfg.digits_test_fraction * len(idx)), replace=False)] = True
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        small = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), "L")
        img = small.resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BILINEAR)
        concept = digit_concept(int(label))
        text = DIGIT_TEMPLATES[i % len(DIGIT_TEMPLATES)].format(digit=DIGITS[int(label)])
        rows.append({"id": f"digit-{i:04d}", "image": png(img), "caption": text, "concept": concept, "slice": 0,
                     "split": "test" if test[i] else "train", "modality": "image"})
    return pd.DataFrame(rows, columns=COLUMNS)


def generate_image_world(cfg: MMWorld, out: Path | str) -> dict:
    """Write the image world into ``out`` in one rename: shapes.parquet, digits.parquet, labels.parquet,
    concepts.parquet, vocab.json and summary.json. The same config always writes the same bytes."""
    rng = np.random.default_rng(cfg.seed)
    clean = clean_shapes(cfg, rng)
    bad, labels = plant_defects(clean, cfg, rng)
    shapes = pd.concat([clean, bad], ignore_index=True)
    digits = digits_table(cfg, rng)
    summary = {
        "images": int((shapes["modality"] == "image").sum()), "masks": int((shapes["modality"] == "mask").sum()),
        "clean_images": int((clean["modality"] == "image").sum()), "digits": len(digits),
        "concepts": len(concepts()), "vocabulary": len(vocabulary()),
        "planted": labels["defect"].value_counts().sort_index().to_dict(),
        "images_per_slice_split": {f"{sl}/{sp}": int(n) for (sl, sp), n in
                                   clean[clean["modality"] == "image"].groupby(["slice", "split"]).size().items()},
    }
    with atomic_dir(Path(out)) as tmp:
        shapes.to_parquet(tmp / "shapes.parquet", index=False)
        digits.to_parquet(tmp / "digits.parquet", index=False)
        labels.to_parquet(tmp / "labels.parquet", index=False)
        concept_table().to_parquet(tmp / "concepts.parquet", index=False)
        write_json(tmp / "vocab.json", vocabulary())
        write_json(tmp / "summary.json", summary)
    return summary
