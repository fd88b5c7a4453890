import hashlib
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fluxforge.config import WorldConfig
from fluxforge.io import read_jsonl
from fluxforge.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    generate_world(WorldConfig(), out)
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix != ".parquet":  # parquet embeds writer metadata; compare via pandas below
            h.update(f.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(world, tmp_path):
    again = tmp_path / "again"
    generate_world(WorldConfig(), again)
    assert _digest(world) == _digest(again)
    pd.testing.assert_frame_equal(pd.read_parquet(world / "labels.parquet"), pd.read_parquet(again / "labels.parquet"))
    other = tmp_path / "other"
    generate_world(WorldConfig(seed=7), other)
    assert _digest(other) != _digest(world)


def test_documents_have_url_timestamp_and_slices(world):
    docs = [r for f in (world / "sources").glob("*.jsonl") for r in read_jsonl(f)]
    assert {d["domain"] for d in docs} == {"general", "cyber"}
    hosts = {d["url"].split("/")[2] for d in docs}
    from fluxforge.world import HOSTS
    from fluxforge.world.templates import BLOCKED_HOSTS

    assert hosts == set(HOSTS.values()) | set(BLOCKED_HOSTS)  # the planted blocked_url mirrors add their hosts
    years = {d["timestamp"][:4] for d in docs}
    assert years == {"2021", "2022", "2023", "2024"}


def test_questions_are_balanced_and_answers_are_facts(world):
    qs = read_jsonl(world / "eval" / "mcq.jsonl")
    facts = pd.read_parquet(world / "facts.parquet")
    positions = Counter(q["answer"] for q in qs)
    assert max(positions.values()) - min(positions.values()) <= 1 + len(qs) // 50
    known = set(zip(facts["subject"], facts["relation"], facts["object"]))
    for q in qs:
        assert len(set(q["options"])) == 4
        assert (q["subject"], q["relation"], q["options"][q["answer"]]) in known
    assert {q["domain"] for q in qs} == {"general", "cyber"}
    assert any(q["changed"] for q in qs), "some facts change between slices"


def test_evaluated_entities_never_appear_in_question_form_in_training(world):
    qs = read_jsonl(world / "eval" / "mcq.jsonl")
    text = "\n".join(r["text"] for f in (world / "sources").glob("*.jsonl") for r in read_jsonl(f))
    for q in qs:
        stem = q["question"].removesuffix("\nAnswer:")
        assert stem not in text, f"question form of an evaluated fact leaked into training: {stem}"
        assert q["subject"] in text, "the fact itself must be in training documents"


def test_defect_labels_live_beside_the_text(world):
    labels = pd.read_parquet(world / "labels.parquet")
    counts = labels["defect"].value_counts()
    for defect in ("boilerplate", "repetition", "symbols", "short", "lorem", "toxic", "exact_dup", "near_dup"):
        assert counts.get(defect, 0) > 0, defect
    docs = {r["doc_id"]: r["text"] for f in (world / "sources").glob("*.jsonl") for r in read_jsonl(f)}
    assert set(docs) == set(labels["doc_id"])
    assert not any("defect" in t or "near_dup" in t for t in docs.values())
    exact = labels[labels.defect == "exact_dup"].iloc[0]
    assert docs[exact.doc_id] == docs[exact.cluster_id]
    summary = json.loads((world / "summary.json").read_text())
    assert summary["documents"] == len(docs)


def test_years_need_not_be_consecutive(tmp_path):
    summary = generate_world(WorldConfig(years=[2019, 2022, 2024]), tmp_path / "w")
    assert set(summary["docs_per_slice"]) == {f"{d}-{y}" for d in ("general", "cyber") for y in (2019, 2022, 2024)}
    facts = pd.read_parquet(tmp_path / "w" / "facts.parquet")
    changed = facts[facts["previous"] != ""]
    assert len(changed) and set(changed["year_from"]) <= {2022, 2024}


def test_every_changed_fact_question_offers_the_old_value(world):
    facts = pd.read_parquet(world / "facts.parquet")
    changed = [q for q in read_jsonl(world / "eval" / "mcq.jsonl") if q["changed"]]
    assert changed
    for q in changed:
        prev = facts[(facts.subject == q["subject"]) & (facts.relation == q["relation"]) & (facts.year_to < int(q["slice"][-4:]))]
        assert set(prev["object"]) & set(q["options"]), q["id"]


def test_new_planted_defects_are_labelled_and_shaped_for_their_filter(world):
    from fluxforge.world.templates import BLOCKED_HOSTS, PII_EMAILS, PII_IPS, PII_PHONES

    docs = {r["doc_id"]: r for f in (world / "sources").glob("*.jsonl") for r in read_jsonl(f)}
    labels = pd.read_parquet(world / "labels.parquet").set_index("doc_id")
    for kind in ("foreign", "blocked_url", "pii"):
        assert (labels["defect"] == kind).sum() > 0, kind
    for i in labels.index[labels["defect"] == "blocked_url"]:
        assert docs[i]["url"].split("/")[2] in BLOCKED_HOSTS
    for i in labels.index[labels["defect"] == "pii"]:
        assert any(s in docs[i]["text"] for s in (*PII_EMAILS, *PII_PHONES, *PII_IPS))
    for i in labels.index[labels["defect"] == "foreign"]:
        assert len(docs[i]["text"].split()) >= 50 and " the " not in docs[i]["text"]  # long enough; not English
    clean = [docs[i]["text"] for i in labels.index[labels["defect"] == "none"]]
    assert not any(s in t for t in clean for s in (*PII_EMAILS, *PII_IPS))
