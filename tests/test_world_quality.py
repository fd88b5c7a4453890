"""README's data-quality claim, held on the DAG's own output: on the world, every filter and the dedup reach
precision and recall 1.0 on their planted defects (the session's tiny-profile `dvc repro`, its metrics files)."""

from __future__ import annotations

import json

import pytest

from fluxforge.world.scoring import FILTER_TARGETS

pytestmark = pytest.mark.slow  # reads the session's reproduced tiny repository


def test_every_filter_alone_has_precision_and_recall_one_on_its_planted_defects(tiny_repo):
    alone = json.loads((tiny_repo[0] / "metrics" / "filter_quality.json").read_text())
    assert set(alone) == set(FILTER_TARGETS), "every filter is scored, none skipped"
    for name, row in alone.items():
        recalls = {k: v for k, v in row.items() if k.startswith("recall.")}
        assert row["rejected"] > 0 and row["precision"] == 1.0, (name, row)
        assert len(recalls) == len(FILTER_TARGETS[name]) and set(recalls.values()) <= {1.0}, (name, row)


def test_the_chain_and_dedup_have_precision_and_recall_one_and_keep_every_clean_document(tiny_repo):
    quality = json.loads((tiny_repo[0] / "metrics" / "data_quality.json").read_text())
    scores = {k: v for k, v in quality.items() if k.startswith(("precision", "recall")) or k == "clean_doc_retention"}
    assert {"recall.exact_dup", "recall.near_dup", "precision.dedup", "precision.filter", "clean_doc_retention"} <= set(scores)
    assert {k: v for k, v in scores.items() if v != 1.0} == {}
