"""Refresh inputs: params profiles and `-S key=value` overrides, validated before any stage runs."""

from __future__ import annotations

import shutil

import pytest
import yaml

from fluxforge.config import ParamsError
from fluxforge.orchestrate.params import apply_params, set_dotted
from pipeline_repo import ROOT


@pytest.fixture
def repo(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    shutil.copy(ROOT / "profiles" / "tiny.yaml", tmp_path / "profiles" / "tiny.yaml")
    return tmp_path


def test_overrides_are_typed_and_keep_the_file_documented(repo):
    changed = apply_params(repo, None, ["pretrain.steps=120", "distill.teacher=[final, pretrain]", "register.gate.must_beat_champion=false"])
    assert changed == ["pretrain.steps: 400 -> 120", "distill.teacher: 'final' -> ['final', 'pretrain']",
                       "register.gate.must_beat_champion: True -> False"]
    text = (repo / "params.yaml").read_text()
    p = yaml.safe_load(text)
    assert p["pretrain"]["steps"] == 120 and p["distill"]["teacher"] == ["final", "pretrain"]
    assert "# Llama-style causal LM" in text  # comments survive (DVC's round-trip writer)


def test_a_bad_override_names_the_key_and_leaves_params_untouched(repo):
    before = (repo / "params.yaml").read_text()
    with pytest.raises(ParamsError, match=r"pretrain\.stepz: unknown key"):
        apply_params(repo, None, ["pretrain.stepz=10"])
    with pytest.raises(ParamsError, match="warmup_steps \\(30\\) must be below steps \\(10\\)"):
        apply_params(repo, None, ["pretrain.steps=10"])
    with pytest.raises(ParamsError, match="'nope' is not a section"):
        apply_params(repo, None, ["nope.steps=1"])
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        set_dotted({}, "pretrain.steps")
    assert (repo / "params.yaml").read_text() == before


def test_a_profile_replaces_params_then_overrides_apply(repo):
    changed = apply_params(repo, "profiles/tiny.yaml", ["pretrain.steps=9"])
    assert changed[0] == "profile profiles/tiny.yaml"
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert p["pretrain"]["steps"] == 9 and p["model"]["hidden_size"] == 32
    with pytest.raises(ParamsError, match="does not exist"):
        apply_params(repo, "profiles/huge.yaml", [])
