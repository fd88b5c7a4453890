"""The models the evaluate stage scores (after the untrained baseline) come from dvc.yaml (its models/ deps),
not from a list kept in Python."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from dvc.repo import Repo

from fluxforge.orchestrate import dag

ROOT = Path(__file__).resolve().parents[1]


def model_names(repo: Path) -> list[str]:
    return [m.relative_to("models").as_posix() for m in dag.inputs_under("evaluate", "models", repo)]


def _pipeline(root: Path, params: dict, evaluate_deps: list[str] | None = None) -> Path:
    """This repository's dvc.yaml (its evaluate deps replaced when given) and ``params`` in a fresh DVC repo."""
    root.mkdir()
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if evaluate_deps is not None:
        dvc["stages"]["evaluate"]["deps"] = evaluate_deps
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Repo.init(str(root), no_scm=True)
    return root


def test_models_are_the_deps_of_evaluate_in_dvc_yaml(tmp_path, tiny_raw):
    tasks = list(tiny_raw["continual"]["tasks"])
    repo = _pipeline(tmp_path / "repo", tiny_raw)
    assert model_names(repo) == ["pretrain", *[f"continual/{t}" for t in tasks], "student"]
    shutil.rmtree(repo)
    repo = _pipeline(tmp_path / "repo", tiny_raw, evaluate_deps=["data/tokens", "models/continual", "models/pretrain"])
    assert model_names(repo) == [*[f"continual/{t}" for t in tasks], "pretrain"]


def test_continual_tasks_are_in_training_order_even_when_independent(tmp_path, tiny_raw):
    """Tasks that do not build on each other could come in any dependency order: params order is the one used."""
    task = next(iter(tiny_raw["continual"]["tasks"].values()))
    tiny_raw["continual"]["tasks"] = {"zeta": {**task, "init": "pretrain"}, "alpha": {**task, "init": "pretrain"},
                                      "mid": {**task, "init": "continual/zeta"}, "beta": {**task, "init": "pretrain"}}
    repo = _pipeline(tmp_path / "repo", tiny_raw)
    assert model_names(repo) == ["pretrain", "continual/zeta", "continual/alpha", "continual/mid",
                                 "continual/beta", "student"]
