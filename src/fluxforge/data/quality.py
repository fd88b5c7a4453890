"""Score the data stages against the world's planted-defect labels: precision and recall per defect type."""

from __future__ import annotations

import json

import pandas as pd

from fluxforge.world.templates import BOILERPLATE_LINES

DOC_DEFECTS = ("repetition", "symbols", "short", "lorem", "toxic")
DUP_DEFECTS = ("exact_dup", "near_dup")


def _native(df: pd.DataFrame) -> pd.Series:
    return df["meta"].map(lambda m: json.loads(m).get("native_id", ""))


def score_against_labels(curated: pd.DataFrame, rejected: pd.DataFrame, labels: pd.DataFrame) -> dict:
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
    bp = lab.index[lab["defect"] == "boilerplate"]
    cur = curated.assign(native=_native(curated)).set_index("native")
    kept_bp = [i for i in bp if i in cur.index]
    if kept_bp:
        clean = [not any(line in cur.loc[i, "text"] for line in BOILERPLATE_LINES) for i in kept_bp]
        out["recall.boilerplate_lines"] = float(sum(clean) / len(kept_bp))
    filt = rej[rej["stage"] == "filter"]
    if len(filt):
        out["precision.filter"] = float(lab.loc[filt["native"], "defect"].isin(DOC_DEFECTS).mean())
    dd = rej[rej["stage"] == "dedup"]
    if len(dd):
        out["precision.dedup"] = float((lab.loc[dd["native"], "cluster_id"] != "").mean())
    clean_ids = lab.index[lab["defect"].isin(["none", "boilerplate"]) & (lab["cluster_id"] == "")]
    if len(clean_ids):
        out["clean_doc_retention"] = float(sum(i in kept_ids for i in clean_ids) / len(clean_ids))
    return out
