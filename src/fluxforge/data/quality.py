"""Score the data stages against the world's planted-defect labels: recall per defect, precision per filter.

Why both directions: recall says a defect is caught, precision says the rule that caught it does not
also eat clean text. A filter's precision is the share of the documents it rejected that carry a planted
defect (any defect: a rule may legitimately catch a document planted for another rule); the confusion
table (filter x planted defect) shows who caught what.
"""

from __future__ import annotations

import json

import pandas as pd

from fluxforge.config import FilterConfig
from fluxforge.world.templates import BOILERPLATE_LINES, PII_EMAILS, PII_IPS, PII_PHONES

DOC_DEFECTS = ("repetition", "symbols", "short", "lorem", "toxic", "foreign", "blocked_url")
DUP_DEFECTS = ("exact_dup", "near_dup")
KEEP_DEFECTS = ("none", "boilerplate", "pii")  # documents that must survive (cleaned where needed)
PII_STRINGS = (*PII_EMAILS, *PII_PHONES, *PII_IPS)


def _native(df: pd.DataFrame) -> pd.Series:
    return df["meta"].map(lambda m: json.loads(m).get("native_id", ""))


def _filter_name(reason: str) -> str:
    return reason.split(":", 1)[0]


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


def quality_table(quality: dict) -> pd.DataFrame:
    """Rows of (what, measure, value) for the report and the README: recall per defect, precision per filter."""
    rows = [(k.split(".", 1)[1], k.split(".", 1)[0], v) for k, v in quality.items()
            if isinstance(v, float) and k.startswith(("recall.", "precision."))]
    return pd.DataFrame(rows, columns=["what", "measure", "value"])


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


def standalone_filter_scores(raw: pd.DataFrame, labels: pd.DataFrame, cfg: FilterConfig) -> dict:
    """Each enabled filter ALONE on the raw world documents: precision and recall on its target defects.

    In the chain a document is charged to the first rule that fails it (the language filter runs first,
    so it also takes lorem ipsum and symbol spam); alone, each rule shows what it catches by itself.
    """
    from fluxforge.data.filters import apply_filters

    lab = labels.set_index("doc_id")
    native = _native(raw)
    raw = raw[native.isin(lab.index)].reset_index(drop=True)
    sections = [name for name in FILTER_TARGETS if getattr(cfg, name).enabled]
    off = {name: getattr(cfg, name).model_copy(update={"enabled": False}) for name in (*sections, "pii", "age")}
    out: dict = {}
    for name in sections:
        alone = cfg.model_copy(update={**off, name: getattr(cfg, name)})
        _, rejected, _ = apply_filters(raw, alone)
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
