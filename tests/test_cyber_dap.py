"""The cybersecurity DAP profile (profiles/cyber-dap.yaml): valid params, and its CTI-Bench sources read as a cyber corpus.

The sample files live in ../shared/data (never copied into the repo); FLUXFORGE_SAMPLES points elsewhere.
Counts come from the files themselves: whatever rows they hold must all be accounted for.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest

from fluxforge.config import C4Config, GopherQualityConfig, Params, Source, load_params, read_params
from fluxforge.data.documents import RAW_SCHEMA, slice_of
from fluxforge.data.sources import read_source

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "cyber-dap.yaml"
DATA = Path(os.environ.get("FLUXFORGE_SAMPLES", ROOT.parent / "shared" / "data"))  # as tests/test_real_samples.py
SAMPLE_PREFIX = PurePosixPath("../shared/data")  # how the profile names the samples (relative to the repo root)
CTI_FILES = {"cti-rcm.tsv", "cti-vsp.tsv", "cti-ate.tsv", "cti-taa.tsv"}

needs_samples = pytest.mark.skipif(not (DATA / "cyber").is_dir(),
                                   reason=f"CTI-Bench samples not at {DATA}/cyber (set FLUXFORGE_SAMPLES to their folder)")


def _profile() -> Params:
    return load_params(ROOT / "params.yaml", profile="cyber-dap")  # what `fluxforge check-params --profile cyber-dap` runs


def _tsv_sources() -> list[Source]:
    return [s for s in _profile().data.sources if s.format == "tsv"]


def _local(src: Source) -> Source:
    """The source with its sample path moved under DATA (FLUXFORGE_SAMPLES may put the samples elsewhere)."""
    return src.model_copy(update={"path": str(DATA / PurePosixPath(src.path).relative_to(SAMPLE_PREFIX))})


def _rows(src: Source) -> list[dict[str, str]]:
    """The file's data rows, read with the csv module (independently of the pyarrow reader under test)."""
    with open(src.path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _row_number(meta: str) -> int:
    return int(json.loads(meta)["origin"].rsplit(":row ", 1)[1])


# ----------------------------------------------------------------------------- params
def test_profile_passes_check_params_and_is_a_dap_recipe():
    p = _profile()
    (name, task), = p.continual.tasks.items()  # a single adaptation task
    assert (name, task.init, task.kind) == ("cyber", "pretrain", "domain")
    assert p.expand(task.slices) == [s for s in p.world.slices() if s.startswith("cyber-")]
    assert task.replay.ratio == 0.5
    assert p.expand(task.replay.slices) == [s for s in p.world.slices() if s.startswith("general-")]
    assert all(s.startswith("general-") for s in p.expand(p.pretrain.slices))  # the base never sees cyber text
    assert p.model.from_pretrained is None  # trained here by default; the from_pretrained line is a comment
    assert "#   model: !replace {from_pretrained:" in PROFILE.read_text()


def test_profile_keeps_every_param_section_the_dag_tracks():
    """dvc.yaml's stages list params sections; DVC stops a stage whose section is missing from params.yaml."""
    import yaml

    raw = read_params(ROOT / "params.yaml", profile="cyber-dap")  # what the profile's experiment runs on
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracked = {p.split(".")[0] for st in stages.values() for p in (st.get("do", st).get("params") or [])}
    assert tracked and tracked <= set(raw), f"missing sections: {sorted(tracked - set(raw))}"


def test_tsv_sources_are_the_four_cti_samples_as_cyber_text():
    tsv = _tsv_sources()
    assert {PurePosixPath(s.path).name for s in tsv} == CTI_FILES
    for s in tsv:
        assert PurePosixPath(s.path).parent == SAMPLE_PREFIX / "cyber", s.path  # the documented sample location
        assert (s.domain, s.url_field, s.timestamp_field) == ("cyber", "URL", None)
        assert s.text_field == ("Text" if s.path.endswith("cti-taa.tsv") else "Description")
        assert s.licence == "CC BY-NC-SA 4.0 (CTI-Bench)" and s.default_timestamp


# ----------------------------------------------------------------------------- the real connector on the samples
@needs_samples
@pytest.mark.parametrize("name", [s.name for s in _tsv_sources()])
def test_cti_source_reads_every_row_into_cyber_documents(name):
    p = _profile()
    src = _local(next(s for s in p.data.sources if s.name == name))
    rows = _rows(src)
    kept, rejected, n_read = read_source(src)

    assert n_read == len(rows) > 0
    assert len(kept) == len(rows) - len(rejected)  # every row is a document or a rejected row
    assert rejected["reason"].notna().all() and (rejected["reason"].str.len() > 0).all()
    assert list(kept.columns) == RAW_SCHEMA.names
    assert (kept["domain"] == "cyber").all() and (kept["source"] == name).all()
    assert kept["id"].is_unique

    # each document is its row: the URL and text of the record its origin names, unchanged
    nums = kept["meta"].map(_row_number)
    assert list(kept["url"]) == [rows[i - 1]["URL"] for i in nums]
    assert list(kept["text"]) == [rows[i - 1][src.text_field] for i in nums]
    assert kept["url"].str.match(r"^https?://").all()
    assert {json.loads(m)["licence"] for m in kept["meta"]} == {src.licence}

    # no dates in the files: the default timestamp puts every row in a slice the cyber task trains on
    assert (kept["timestamp"] == pd.Timestamp(src.default_timestamp, tz="UTC")).all()
    slices = set(slice_of(kept))
    assert slices <= set(p.expand(p.continual.tasks["cyber"].slices)), slices
    assert not slices & set(p.expand(p.pretrain.slices))


# ----------------------------------------------------------------------------- the relaxed filters
@needs_samples
def test_relaxed_length_rules_keep_advisories_and_change_nothing_on_the_world(tmp_path):
    """The profile relaxes two web-page rules for one-paragraph advisories; the world's filtering must not move."""
    from fluxforge.data.filters import apply_filters
    from fluxforge.world import generate_world

    p = _profile()
    profile_cfg = p.data.filters
    published = profile_cfg.model_copy(update={
        "gopher_quality": profile_cfg.gopher_quality.model_copy(update={"min_doc_words": GopherQualityConfig().min_doc_words}),
        "c4": profile_cfg.c4.model_copy(update={"min_num_sentences": C4Config().min_num_sentences}),
    })
    assert published != profile_cfg  # the profile really differs from the published values

    cti = pd.concat([read_source(_local(s))[0] for s in _tsv_sources()], ignore_index=True)
    kept_profile = len(apply_filters(cti, profile_cfg)[0])
    kept_published = len(apply_filters(cti, published)[0])
    assert kept_profile > kept_published
    assert kept_profile > len(cti) / 2, f"the profile's filters keep only {kept_profile} of {len(cti)} CTI documents"

    generate_world(p.world, tmp_path / "world")
    world_src = next(s for s in p.data.sources if s.format == "world")
    world = read_source(world_src.model_copy(update={"path": str(tmp_path / "world")}))[0]
    rejected_profile = apply_filters(world, profile_cfg)[1]
    rejected_published = apply_filters(world, published)[1]
    assert len(rejected_profile) > 0
    assert set(rejected_profile["id"]) == set(rejected_published["id"])
    labels = pd.read_parquet(tmp_path / "world" / "labels.parquet").set_index("doc_id")["defect"]
    native = world["meta"].map(lambda m: json.loads(m).get("native_id", ""))
    targeted = set(world["id"][native.map(labels).isin(["short", "lorem"]).to_numpy()])
    assert targeted and targeted <= set(rejected_profile["id"])  # what the two rules are for is still dropped
