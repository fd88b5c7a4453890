"""Score the data stages against the world's planted-defect labels: recall per defect, precision per filter.

The world knows what it planted (``labels.parquet``, and the boilerplate and PII strings of
:mod:`fluxforge.world.templates`); the data stages' outputs are read as tables (the ``native_id`` the
world reader puts into ``meta``, the rejected rows' ``reason`` and ``stage``), so scoring needs nothing
from :mod:`fluxforge.data`.

Why both directions: recall says a defect is caught, precision says the rule that caught it does not
also eat clean text. A filter's precision is the share of the documents it rejected that carry a planted
defect (any defect: a rule may legitimately catch a document planted for another rule); the confusion
table (filter x planted defect) shows who caught what.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from fluxforge.config import Source
from fluxforge.world.templates import BOILERPLATE_LINES, PII_EMAILS, PII_IPS, PII_PHONES

DOC_DEFECTS = ("repetition", "symbols", "short", "lorem", "toxic", "foreign", "blocked_url")
DUP_DEFECTS = ("exact_dup", "near_dup")
KEEP_DEFECTS = ("none", "boilerplate", "pii")  # documents that must survive (cleaned where needed)
PII_STRINGS = (*PII_EMAILS, *PII_PHONES, *PII_IPS)


def _native(df: pd.DataFrame) -> pd.Series:
    return df["meta"].map(lambda m: json.loads(m).get("native_id", ""))


def _filter_name(reason: str) -> str:
    return reason.split(":", 1)[0]


def planted_labels(world: Path, sources: Sequence[Source]) -> pd.DataFrame | None:
    """The world's labels when a world source is ingested and the world has been generated (else None)."""
    path = Path(world) / "labels.parquet"
    if not path.exists() or not any(s.format == "world" for s in sources):
        return None
    return pd.read_parquet(path)


def score_against_labels(curated: pd.DataFrame, rejected: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Recall per planted defect, precision per filter (and the confusion table) and clean retention of
    the whole chain: ``curated`` is what survived, ``rejected`` every row any data stage rejected."""
    lab = labels.set_index("doc_id")
    kept_ids = set(_native(curated))
    rej = rejected.assign(native=_native(rejected))
    rej = rej[rej["native"].isin(lab.index)]
    out: dict = {}
    for d in DOC_DEFECTS:
        ids = lab.index[lab["defect"] == d]
        if len(ids):
            out[f"recall.{d}"] = float(sum(i not in kept_ids for i in ids) / len(ids))
    # a duplicate cluster is handled when exactly one of its members survives
    clusters = lab[lab["cluster_id"] != ""].groupby("cluster_id")
    for d in DUP_DEFECTS:
        copies = lab[lab["defect"] == d]
        if len(copies):
            ok = [sum(m in kept_ids for m in clusters.get_group(c).index) == 1 for c in copies["cluster_id"]]
            out[f"recall.{d}"] = float(sum(ok) / len(ok))
    cur = curated.assign(native=_native(curated)).set_index("native")
    for defect, needles, key in (("boilerplate", BOILERPLATE_LINES, "recall.boilerplate_lines"),
                                 ("pii", PII_STRINGS, "recall.pii_redacted")):
        kept = [i for i in lab.index[lab["defect"] == defect] if i in cur.index]
        if kept:
            clean = [not any(s in cur.loc[i, "text"] for s in needles) for i in kept]
            out[key] = float(sum(clean) / len(kept))
    filt = rej[rej["stage"] == "filter"]
    if len(filt):
        planted = lab.loc[filt["native"], "defect"].to_numpy()
        confusion = pd.crosstab(filt["reason"].map(_filter_name).to_numpy(), planted)
        out["precision.filter"] = float((~pd.Series(planted).isin(KEEP_DEFECTS)).mean())
        for name, row in confusion.iterrows():
            out[f"precision.filter.{name}"] = float(row.drop(list(KEEP_DEFECTS), errors="ignore").sum() / row.sum())
        out["confusion.filter"] = {str(n): {str(d): int(c) for d, c in row.items() if c} for n, row in confusion.iterrows()}
    dd = rej[rej["stage"] == "dedup"]
    if len(dd):
        out["precision.dedup"] = float((lab.loc[dd["native"], "cluster_id"] != "").mean())
    clean_ids = lab.index[lab["defect"].isin(KEEP_DEFECTS) & (lab["cluster_id"] == "")]
    if len(clean_ids):
        out["clean_doc_retention"] = float(sum(i in kept_ids for i in clean_ids) / len(clean_ids))
    return out


# which planted defect each filter is there to catch (the world plants one kind per rule family)
FILTER_TARGETS = {
    "gopher_quality": ("short", "symbols"),
    "gopher_repetition": ("repetition",),
    "c4": ("lorem",),
    "language": ("foreign",),
    "toxicity": ("toxic",),
    "url_blocklist": ("blocked_url",),
    "fineweb": (),
}


def standalone_filter_scores(raw: pd.DataFrame, labels: pd.DataFrame,
                             each_alone: Callable[[pd.DataFrame], Mapping[str, pd.DataFrame]]) -> dict:
    """Each filter ALONE on the raw world documents: precision and recall on its target defects.

    ``each_alone(docs)`` gives the rows each enabled filter rejects by itself
    (:func:`fluxforge.data.filters.chain.each_filter_alone`). In the chain a document is charged to the
    first rule that fails it (the language filter runs first, so it also takes lorem ipsum and symbol
    spam); alone, each rule shows what it catches by itself.
    """
    lab = labels.set_index("doc_id")
    native = _native(raw)
    rejected_by = each_alone(raw[native.isin(lab.index)].reset_index(drop=True))
    out: dict = {}
    for name in (n for n in FILTER_TARGETS if n in rejected_by):
        rejected = rejected_by[name]
        planted = lab.loc[_native(rejected), "defect"] if len(rejected) else pd.Series(dtype=object)
        row = {"rejected": int(len(rejected))}
        if len(rejected):
            row["precision"] = float((~planted.isin(KEEP_DEFECTS)).mean())
        for d in FILTER_TARGETS[name]:
            ids = lab.index[lab["defect"] == d]
            if len(ids):
                row[f"recall.{d}"] = float(planted.index.isin(ids).sum() / len(ids)) if len(rejected) else 0.0
        out[name] = row
    return out
