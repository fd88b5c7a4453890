"""Curation on real text (../shared/data, never copied into the repo): CTI-Bench's cross-file duplicates are found."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FLUXFORGE_SAMPLES", ROOT.parent / "shared" / "data"))  # next to the checkout

pytestmark = pytest.mark.skipif(not (DATA / "cyber" / "cti-rcm.tsv").exists(), reason=f"real samples not at {DATA}")


def test_cti_rcm_and_vsp_exact_duplicates_are_found_and_every_row_is_accounted_for(tmp_path):
    from fluxforge.data.curate import curate

    ledger = curate(str(DATA / "cyber" / "cti-[rv]*.tsv"), tmp_path, ROOT / "benchmarks" / "real_samples" / "cti.yaml")
    read = lambda n: pd.read_csv(DATA / "cyber" / n, sep="\t", usecols=["URL", "Description"], keep_default_na=False)  # noqa: E731
    rcm, vsp = read("cti-rcm.tsv"), read("cti-vsp.tsv")
    expected = int(pd.concat([rcm, vsp]).duplicated().sum())  # later copies of a (URL, Description) row
    assert expected > 500  # the files describe largely the same CVEs
    rejected = pd.read_parquet(tmp_path / "rejected.parquet")
    dups = rejected[rejected["reason"].isin(["duplicate_record", "exact_duplicate"])]
    assert len(dups) == expected
    curated = pd.read_parquet(tmp_path / "curated.parquet")
    assert not curated.duplicated(["url", "text"]).any()  # one copy at most survives
    origins = dups["meta"].map(lambda m: json.loads(m)["origin"])
    assert origins.str.contains("cti-vsp.tsv:row ").sum() == int(vsp.apply(tuple, axis=1).isin(set(rcm.apply(tuple, axis=1))).sum())
    assert ledger["funnel"]["read"] == len(rcm) + len(vsp)
    for stage in ledger["stages"].values():
        assert stage["ingested"] == stage["kept"] + stage["rejected"]
