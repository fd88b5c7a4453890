"""Profiles are overlays merged over params.yaml, and running one never touches params.yaml."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluxforge.config import ParamsError, load_params, merge_overlay, read_params, read_yaml
from fluxforge.config.loader import PROFILE_FILE, Replace
from fluxforge.orchestrate.experiment import absolute_tracking_uri, sources_pinned

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))


def _leaves(overlay: dict, base: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, overlay value, params.yaml value) for each value the overlay sets (a !replace mapping is one value)."""
    out = []
    for key, value in overlay.items():
        here, there = f"{path}.{key}" if path else str(key), base.get(key, "<absent>") if isinstance(base, dict) else "<absent>"
        if isinstance(value, dict) and not isinstance(value, Replace):
            out += _leaves(value, there, here)
        else:
            out.append((here, value, there))
    return out


@pytest.mark.parametrize("name", PROFILES)
def test_a_profile_holds_only_what_it_changes(name):
    base = read_params(ROOT / "params.yaml")
    same = [key for key, value, there in _leaves(read_yaml(ROOT / "profiles" / f"{name}.yaml", PROFILE_FILE), base)
            if value == there]
    assert not same, f"profiles/{name}.yaml restates params.yaml's value of {same}"
    load_params(ROOT / "params.yaml", profile=name)  # and the merge is valid params


def test_mappings_merge_lists_and_scalars_replace_and_replace_tags_replace(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("a: {y: [3]}\nt: !replace {r: 3, p: 4}\ns: null\n")
    base = {"a": {"x": 1, "y": [1, 2]}, "t": {"p": 1, "q": 2}, "s": {"k": 1}}
    merged = merge_overlay(base, read_yaml(overlay, PROFILE_FILE))
    assert merged == {"a": {"x": 1, "y": [3]}, "t": {"r": 3, "p": 4}, "s": None}
    assert list(merged["t"]) == ["r", "p"]  # a replaced mapping keeps the overlay's order (tasks run in it)
    assert base == {"a": {"x": 1, "y": [1, 2]}, "t": {"p": 1, "q": 2}, "s": {"k": 1}}  # the base is not changed
    overlay.write_text("t: !replace [1, 2]\n")
    with pytest.raises(ParamsError, match="!replace tags a mapping"):
        read_yaml(overlay, PROFILE_FILE)


def test_the_profiles_replace_the_default_tasks():
    tiny = load_params(ROOT / "params.yaml", profile="tiny")
    assert list(tiny.continual.tasks) == ["slice2022", "cyber"] and tiny.continual.tasks["cyber"].init == "continual/slice2022"
    dap = load_params(ROOT / "params.yaml", profile="cyber-dap")
    assert list(dap.continual.tasks) == ["cyber"] and dap.stream is None
    assert dap.pretrain.steps == load_params(ROOT / "params.yaml").pretrain.steps  # what it does not change: params.yaml's


def test_a_mistake_in_a_profile_names_both_files_and_the_key(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "typo.yaml").write_text("pretrain:\n  stepz: 10\n")
    with pytest.raises(ParamsError, match=r"params.yaml \+ .*profiles/typo.yaml: invalid params .*\n  - pretrain.stepz: unknown key"):
        load_params(tmp_path / "params.yaml", profile="typo")
    (tmp_path / "profiles" / "typo.yaml").write_text("pretrain:\n  steps: 10\n  steps: 20\n")
    with pytest.raises(ParamsError, match=r"typo.yaml: line 3: key 'steps' is written twice"):
        load_params(tmp_path / "params.yaml", profile="typo")
    with pytest.raises(ParamsError, match=r"profiles/huge.yaml does not exist \(profiles in .*: typo\)"):
        load_params(tmp_path / "params.yaml", profile="huge")


def test_a_temporary_copy_gets_absolute_paths_to_the_mlflow_store_and_outside_inputs(tmp_path):
    assert absolute_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////srv/m.db", tmp_path) == "sqlite:////srv/m.db"
    assert absolute_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    raw = read_params(ROOT / "params.yaml", profile="cyber-dap")
    paths = [s["path"] for s in sources_pinned(raw, ROOT)["data"]["sources"]]
    assert paths[0] == "data/world"  # made in the copy by the world stage
    assert paths[1] == str((ROOT.parent / "shared" / "data" / "cyber" / "cti-rcm.tsv").resolve())
    assert raw["data"]["sources"][1]["path"] == "../shared/data/cyber/cti-rcm.tsv"  # the params themselves unchanged


@pytest.mark.slow
def test_fluxforge_run_profile_is_an_experiment_and_leaves_params_yaml_alone(tmp_path, tiny_repo):
    from pipeline_repo import cached_out_hashes, make_repo, run, seed_run_cache

    root = make_repo(tmp_path / "repo", profile=None)  # the real params.yaml and profiles/, committed
    # the session's tiny repo (plain `dvc repro` of the same merged params) lends its run-cache: the experiment restores
    # the stages whose runs match instead of redoing the DAG; register and mm_register (persist outputs) run for real
    plain_repo, plain_hashes = tiny_repo
    seed_run_cache(plain_repo, root)
    before = (root / "params.yaml").read_bytes()
    fluxforge = [sys.executable, "-c", "import sys; from fluxforge.cli import main; main(sys.argv[1:])"]
    printed = run([*fluxforge, "run", "--profile", "tiny"], root).stdout

    assert run(["git", "status", "--porcelain", "params.yaml"], root).stdout == ""
    assert (root / "params.yaml").read_bytes() == before
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    exps = {e["name"]: e["revs"][0] for row in shown for e in row.get("experiments") or []}
    params = exps["profile-tiny"]["data"]["params"]["params.yaml"]["data"]
    assert params["pretrain"]["steps"] == 12 and list(params["continual"]["tasks"]) == ["slice2022", "cyber"]
    assert (root / "reports" / "experiments" / "profile-tiny" / "report.html").stat().st_size > 0
    # it ends with the experiment's headline numbers, read at its commit: the workspace has no results of its own
    cyber = exps["profile-tiny"]["data"]["metrics"]["metrics/eval.json"]["data"]["tests"]["cyber"]
    headline = f"cyber accuracy {cyber['acc_pretrain']:.3f} -> {cyber['acc_final']:.3f} over {cyber['n']} questions"
    assert headline in printed, printed
    assert "No results" in run([*fluxforge, "summary"], root, check=False).stdout
    assert headline in run([*fluxforge, "summary", "--rev", "profile-tiny"], root).stdout
    # the experiment is the tiny profile's DAG: its outputs are the plain repro's, stage for stage (a run-cache hit
    # needs the same command, dependencies and params, so the profile merged in the copy is the tiny repo's params)
    lock = yaml.safe_load(run(["git", "show", f"{exps['profile-tiny']['rev']}:dvc.lock"], root).stdout)
    assert cached_out_hashes(lock) == plain_hashes

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")  # the user's store, not one in the temporary copy
    exp = client.get_experiment_by_name("fluxforge")
    runs = client.search_runs([exp.experiment_id])
    logged = {r.data.tags["fluxforge.stage"] for r in runs}
    assert {"register", "mm_register"} <= logged and "pretrain" not in logged  # the rest restored, not rerun
    assert client.get_registered_model("fluxforge-lm").latest_versions  # registered from the copy into the user's store
    assert exp.artifact_location.startswith(str(root / "mlruns"))
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
