"""``mm_curate``: each image source through the row contract, then pHash dedup; every row kept or rejected with a reason.

Books are kept like the text stages' (:class:`fluxforge.data.ledger.Ledger`): one ledger per step (``contract``,
``dedup``) with ``ingested = kept + rejected`` per source, and the funnel of rows left after each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fluxforge.config import MMCurate
from fluxforge.data.image_contract import ImageRules, check_rows, check_table, rejected_rows
from fluxforge.data.image_dedup import near_duplicates
from fluxforge.data.images import COLUMNS, read_image_table
from fluxforge.data.ledger import Ledger, funnel
from fluxforge.io import atomic_dir

REJECTED_FILE = "rejected.parquet"


def rules_for(cfg: MMCurate) -> dict[str, ImageRules]:
    return {name: ImageRules(name, {m: (f.mode, f.size) for m, f in formats.formats().items()}) for name, formats in cfg.sources.items()}


def dedup_rows(df: pd.DataFrame, cfg: MMCurate, source: str, file: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, rejected) after pHash dedup of the image rows; the masks of rejected images go with them."""
    images = df[df["modality"] == "image"]
    dups = near_duplicates(images, cfg.hash_size, cfg.max_distance, cfg.max_pixel_diff)
    reason = pd.Series({d.row: "near_duplicate_across_splits" if d.across else "near_duplicate" for d in dups}, dtype="object")
    detail = pd.Series({d.row: f"of {df.at[d.of, 'id']} ({df.at[d.of, 'split']}): pHash distance {d.distance}, "
                               f"pixel difference {d.pixel_diff:.2f}" for d in dups}, dtype="object")
    gone = set(df.loc[list(reason.index), "id"])
    masks = df.index[(df["modality"] == "mask") & df["id"].isin(gone)]
    reason = pd.concat([reason, pd.Series("mask_without_image", index=masks, dtype="object")])
    detail = pd.concat([detail, pd.Series("its image is a near duplicate", index=masks, dtype="object")])
    return df.drop(index=reason.index), rejected_rows(df, reason, detail, source, file)


def score_planted(rejected: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Recall per planted defect (a planted image row rejected for any reason) and the precision of all rejections
    of image rows (rejected image rows that were planted)."""
    images = rejected[rejected["modality"] == "image"]
    caught = set(images["id"])
    recall = {f"recall.{kind}": float(g["id"].isin(caught).mean()) for kind, g in labels.groupby("defect")}
    precision = float(images["id"].isin(set(labels["id"])).mean()) if len(images) else 1.0
    return {**recall, "precision": precision, "planted": len(labels), "rejected_images": len(images)}


def curate_images(world: Path, out: Path, cfg: MMCurate, vocab: Sequence[str], max_tokens: int,
                  reports: Path) -> dict:
    """Curate every source of ``cfg.sources`` from ``world/<source>.parquet`` into ``out`` (one rename); the metrics."""
    rules = rules_for(cfg)
    ledgers = {"contract": Ledger("contract"), "dedup": Ledger("dedup")}
    curated, rejected, tables = {}, [], {}
    for name, rule in rules.items():
        file = world / f"{name}.parquet"
        raw = read_image_table(file)[COLUMNS]
        passed, bad = check_rows(raw, rule, vocab, max_tokens, file)
        ledgers["contract"].add(passed.assign(source=name), bad, len(raw))
        kept, dup = dedup_rows(passed, cfg, name, file)
        ledgers["dedup"].add(kept.assign(source=name), dup, len(passed))
        tables[name] = check_table(kept, rule, cfg.min_rows, reports / f"{name}.json")
        curated[name] = kept.reset_index(drop=True)
        rejected += [bad, dup]
    for ledger in ledgers.values():
        ledger.check()
    books = {step: ledger.to_dict() for step, ledger in ledgers.items()}
    all_rejected = pd.concat(rejected, ignore_index=True)
    with atomic_dir(out) as tmp:
        for name, df in curated.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        all_rejected.to_parquet(tmp / REJECTED_FILE, index=False)
    metrics = {**books, "funnel": funnel(books), "contracts": tables,
               "rows": {name: len(df) for name, df in curated.items()}}
    labels = world / "labels.parquet"
    if labels.exists():
        metrics["planted"] = score_planted(all_rejected, pd.read_parquet(labels))
    return metrics
