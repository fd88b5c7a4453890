"""Update methods as DVC experiments on the tiny pipeline: `dvc exp run -S stream.method=...`, lined up by `dvc exp show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_repo import copy_repo, ran
from pipeline_repo import run as _run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_repo, tmp_path_factory) -> Path:
    """A copy of the session's reproduced tiny repo (the session's own is left as it is)."""
    copy = tmp_path_factory.mktemp("methods") / "repo"
    copy_repo(tiny_repo[0], copy)
    return copy


def _stream_metrics(shown: list) -> dict[str, dict]:
    """{experiment name: metrics/stream.json} from `dvc exp show --json`."""
    out: dict[str, dict] = {}

    def walk(node, name=None):  # noqa: ANN001, ANN202
        if isinstance(node, dict):
            name = node.get("name", name)
            for k, v in node.items():
                if k == "metrics/stream.json" and isinstance(v, dict) and "data" in v and name:
                    out[name] = v["data"]
                walk(v, name)
        elif isinstance(node, list):
            for v in node:
                walk(v, name)

    walk(shown)
    return out


def test_update_methods_are_experiments_that_dvc_exp_show_lines_up(repo, monkeypatch):
    for method in ("lora", "galore"):
        proc = _run(["dvc", "exp", "run", "-n", method, "-S", f"stream.method={method}", "-S", "stream.budget.kind=maf"], repo)
        assert ran(proc) == {"stream", "report"}
    runs = _stream_metrics(json.loads(_run(["dvc", "exp", "show", "--json"], repo).stdout))
    assert {"lora", "galore"} <= set(runs)
    for method in ("lora", "galore"):
        budget = runs[method]["budget"]
        assert runs[method]["method"]["method"] == method and budget["kind"] == "maf" and budget["method"] == method
        assert list(budget["methods"]) == ["finetune", method]
    ft, lora = (runs["lora"]["budget"]["methods"][m] for m in ("finetune", "lora"))
    assert lora["memory_multiplier"] < 1 and all(lora["steps"][t] > ft["steps"][t] for t in ft["steps"])
    html = (repo / "reports" / "report.html").read_text()
    assert "Update method: <b>galore" in html and "memory multiplier" in html

    # the deployable model of a PEFT method is a plain HF checkpoint with the method and budget in its lineage
    _run(["dvc", "exp", "apply", "lora"], repo)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(repo / "models" / "stream")
    assert not any("lora" in n for n, _ in model.named_parameters())
    monkeypatch.chdir(repo)
    from fluxforge.config import load_params
    from fluxforge.track.registry import lineage_tags

    tags = lineage_tags(load_params(), "stream")
    assert json.loads(tags["fluxforge.method"])["method"] == "lora"
    assert json.loads(tags["fluxforge.budget"])["steps"] == lora["steps"]


def test_a_budget_that_leaves_a_method_no_steps_fails_at_the_stage_start(repo):
    """EWC's Fisher pass (32 samples = 8 batches of the tiny profile's 4) charged to every step leaves none of 12."""
    proc = _run(["dvc", "exp", "run", "-S", "stream.method=ewc", "-S", "stream.budget.kind=maf"], repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "stream.budget.kind maf: method ewc costs" in out and "leaves it 0 steps" in out
    assert "stream.ewc.fisher_samples" in out
