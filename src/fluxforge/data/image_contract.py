"""The image-table contract (great-expectations): row rules that reject with a reason, and a table suite that must hold.

Each row is decoded once and described by plain columns (does it decode, its mode and size for its modality,
the caption's word count, unknown words and positions). Row rules are GX expectations on those columns, each
carrying the rejection reason in its ``meta``; GX's COMPLETE result names the failing rows, which are rejected
with the first failing rule's reason and their ``file:row``. What survives must then pass the table suite
(schema, unique ``(id, modality)``, row count), written like the text contracts to ``reports/contracts/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fluxforge.data.captions import caption_tokens, out_of_vocabulary, words
from fluxforge.data.contracts import run_suite, validate
from fluxforge.data.images import COLUMNS, MODALITIES, SPLITS, decode

REJECTED_COLUMNS = [*COLUMNS, "source", "reason", "detail", "file", "row"]


@dataclass(frozen=True)
class ImageRules:
    """What one source promises: the PIL mode and the side in pixels of each modality it holds."""

    source: str
    formats: dict[str, tuple[str, int]]  # modality -> (mode, side)


def describe(df: pd.DataFrame, vocab: Sequence[str]) -> pd.DataFrame:
    """The columns the row rules read: decodes, ``<modality>:<mode>``, ``<modality>:<w>x<h>``, caption word counts."""
    known = set(vocab)
    decoded = [decode(b) for b in df["image"]]
    caption = df["caption"].fillna("").astype(str)
    return pd.DataFrame({
        "decodes": [img is not None for img in decoded],
        "mode_as": [f"{m}:{img.mode}" if img is not None else None for m, img in zip(df["modality"], decoded)],
        "size_as": [f"{m}:{img.size[0]}x{img.size[1]}" if img is not None else None for m, img in zip(df["modality"], decoded)],
        "caption_words": [len(words(c)) for c in caption],
        "caption_oov": [len(out_of_vocabulary(c, known)) for c in caption],
        "caption_tokens": [caption_tokens(c) for c in caption],
    }, index=df.index)


def row_rules(rules: ImageRules, max_tokens: int) -> list:
    """GX expectations over :func:`describe`'s columns and the schema's; ``meta.reason`` is the rejection reason."""
    import great_expectations.expectations as gxe

    def why(reason: str) -> dict:
        return {"reason": reason}

    found = [gxe.ExpectColumnValuesToNotBeNull(column=c, meta=why(f"missing_{c}")) for c in COLUMNS if c != "caption"]
    found += [
        gxe.ExpectColumnValuesToBeInSet(column="modality", value_set=list(MODALITIES), meta=why("unknown_modality")),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), meta=why("unknown_split")),
        gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True], meta=why("undecodable")),
        gxe.ExpectColumnValuesToBeInSet(column="mode_as", value_set=[f"{m}:{mode}" for m, (mode, _) in rules.formats.items()],
                                        meta=why("wrong_mode")),
        gxe.ExpectColumnValuesToBeInSet(column="size_as", value_set=[f"{m}:{s}x{s}" for m, (_, s) in rules.formats.items()],
                                        meta=why("wrong_size")),
        gxe.ExpectColumnValuesToBeBetween(column="caption_words", min_value=1, meta=why("empty_caption")),
        gxe.ExpectColumnValuesToBeBetween(column="caption_oov", max_value=0, meta=why("oov_caption")),
        gxe.ExpectColumnValuesToBeBetween(column="caption_tokens", max_value=max_tokens, meta=why("long_caption")),
    ]
    return found


def table_suite(rules: ImageRules, min_rows: int) -> list:
    """What the curated table of a source must satisfy as a whole (a failure stops the stage)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["id", "modality"]),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in COLUMNS],
        gxe.ExpectColumnValuesToBeInSet(column="modality", value_set=list(rules.formats)),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]


def rejected_rows(df: pd.DataFrame, reasons: pd.Series, details: pd.Series, source: str, file: Path | str) -> pd.DataFrame:
    """Rows of ``df`` (its index = the row number in ``file``) with their reason, detail and ``file:row``."""
    out = df.loc[reasons.index, COLUMNS].copy()
    out["source"], out["reason"], out["detail"] = source, reasons.values, details.values
    out["file"], out["row"] = str(file), reasons.index.astype(int)
    return out[REJECTED_COLUMNS]


def check_rows(df: pd.DataFrame, rules: ImageRules, vocab: Sequence[str], max_tokens: int,
               file: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a raw source table into (kept, rejected); every row lands in exactly one, rejected rows with a reason.

    A mask whose image row is rejected or missing is rejected too (``mask_without_image``): the pair is the unit.
    """
    desc = describe(df, vocab)
    frame = pd.concat([df.drop(columns=["image"]), desc], axis=1)
    frame["slice"] = frame["slice"].astype("Int64")
    result = run_suite(frame, row_rules(rules, max_tokens), f"rows_{rules.source}", {"result_format": "COMPLETE"})
    reason = pd.Series(pd.NA, index=df.index, dtype="object")
    for r in result.results:  # in suite order: a row keeps its first failing rule's reason
        for i in (r.result or {}).get("unexpected_index_list") or []:
            if pd.isna(reason.at[i]):
                reason.at[i] = r.expectation_config.meta["reason"]
    detail = pd.Series("", index=df.index, dtype="object")
    oov = reason == "oov_caption"
    detail[oov] = [f"unknown words: {' '.join(out_of_vocabulary(c, set(vocab)))}" for c in df.loc[oov, "caption"]]
    for kind, col in (("wrong_mode", "mode_as"), ("wrong_size", "size_as"), ("long_caption", "caption_tokens")):
        detail[reason == kind] = [f"got {v}" for v in desc.loc[reason == kind, col]]
    images_kept = set(df.loc[reason.isna() & (df["modality"] == "image"), "id"])
    orphan = reason.isna() & (df["modality"] == "mask") & ~df["id"].isin(images_kept)
    reason[orphan], detail[orphan] = "mask_without_image", "its image row was rejected or is missing"
    bad = reason.notna()
    return df[~bad], rejected_rows(df, reason[bad], detail[bad], rules.source, file)


def check_table(df: pd.DataFrame, rules: ImageRules, min_rows: int, report: Path) -> dict:
    """The table suite on a curated source; raises ContractError (naming each failed expectation) when it fails."""
    return validate(df[COLUMNS], table_suite(rules, min_rows), f"mm_{rules.source}", report)
