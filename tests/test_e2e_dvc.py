"""End to end: real `dvc repro` of the whole DAG on the tiny profile inside a temporary git repository."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from pipeline_repo import copy_repo, ran
from pipeline_repo import run as _run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_repo, tmp_path_factory) -> Path:
    """A copy of the session's tiny pipeline repo (see conftest), already reproduced once: these tests edit code and
    params and run experiments, which the other modules sharing the session's repo must not see."""
    copy = tmp_path_factory.mktemp("e2e_dvc") / "repo"
    copy_repo(tiny_repo[0], copy)
    return copy


def test_whole_dag_runs_and_registers_a_champion(repo):
    log = (repo / "first_run.log").read_text()
    expected = {"world", "ingest", "validate", "filter", "dedup", "tokenize", "pretrain", "continual@slice2022",
                "continual@cyber", "distill", "evaluate", "register", "report"}
    assert expected <= set(re.findall(r"Running stage '([^']+)'", log))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    champ = client.get_model_version_by_alias("fluxforge-lm", "champion")
    assert champ.tags["gate"] == "passed" and champ.tags["fluxforge.parent"] == "continual/slice2022"
    runs = client.search_runs([client.get_experiment_by_name("fluxforge").experiment_id])
    stages = {r.data.tags["fluxforge.stage"] for r in runs}
    assert {"world", "pretrain", "continual@cyber", "evaluate", "register"} <= stages
    pre = next(r for r in runs if r.data.tags["fluxforge.stage"] == "pretrain")
    assert len(pre.data.tags["dvc.stage_hash"]) == 64 and len(pre.data.tags["git_commit"]) == 40
    assert pre.data.params["steps"] == "12"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "pretrain" in lock["stages"]
    assert (repo / ".dvc" / "cache" / "runs" / pre.data.tags["dvc.stage_hash"][:2] / pre.data.tags["dvc.stage_hash"]).exists()


def test_metrics_ledger_and_report(repo):
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = json.dumps(shown)
    assert "eval.json" in metrics and "p_final_vs_pretrain" in metrics
    ledgers = {s: json.loads((repo / "metrics" / f"{s}.json").read_text()) for s in ("ingest", "filter", "dedup")}
    for m in ledgers.values():
        assert m["ingested"] == m["kept"] + m["rejected"]
    # what one stage keeps is exactly what the next receives: nothing vanishes between stages
    assert ledgers["filter"]["ingested"] == ledgers["ingest"]["kept"]
    assert ledgers["dedup"]["ingested"] == ledgers["filter"]["kept"]
    world = json.loads((repo / "metrics" / "world.json").read_text())
    assert ledgers["ingest"]["ingested"] == world["documents"]
    ev = json.loads((repo / "metrics" / "eval.json").read_text())
    assert set(ev["models"]) == {"untrained", "pretrain", "continual/slice2022", "continual/cyber", "student"}
    assert ev["models"]["pretrain"]["general"]["ppl"] < ev["models"]["untrained"]["general"]["ppl"]
    # the speed ratio is measured (a timing, so it is only checked to be a real measurement here; the tiny
    # student and teacher are both one layer deep, and a busy CI machine has put the ratio on either side of 1)
    assert ev["distill"]["teacher"] == "continual/cyber" and 0 < ev["distill"]["speedup"] < 100
    assert ev["models"]["student"]["parameters"] < ev["models"]["continual/cyber"]["parameters"]
    probes = (repo / "plots" / "capability" / "continual_cyber.csv").read_text().splitlines()
    assert probes[0].split(",")[:2] == ["step", "cyber_acc"] and [r.split(",")[0] for r in probes[1:]] == ["0", "4", "8"]
    html = (repo / "reports" / "report.html").read_text()
    assert "Registry decision" in html and html.count("<img") >= 4
    assert "Capability during training" in html and "runs" in html and "as fast" in html
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(repo / "models" / "student")
    assert model.config.num_hidden_layers == 1


def test_second_repro_is_a_no_op(repo):
    again = _run(["dvc", "repro"], repo)
    assert ran(again) == set()
    assert "didn't change" in again.stdout
    assert "up to date" in _run(["dvc", "status"], repo).stdout
    # bytecode next to the sources (Python writes it on import under make) is not a code change
    bytecode = repo / "src" / "fluxforge" / "config" / "__pycache__" / "loader.cpython-311.pyc"
    bytecode.parent.mkdir(exist_ok=True)
    bytecode.write_bytes(os.urandom(64))
    assert "up to date" in _run(["dvc", "status"], repo).stdout


def test_editing_code_reruns_only_the_stages_that_run_it(repo):
    report_code = repo / "src" / "fluxforge" / "eval" / "report" / "studies.py"
    report_code.write_text(report_code.read_text() + "\n# edited\n")
    assert ran(_run(["dvc", "repro"], repo)) == {"report"}


def test_lineage_traces_the_champion_back_to_the_raw_data(repo):
    out = _run(["fluxforge", "lineage", "fluxforge-lm@champion"], repo).stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    raw_md5 = next(o["md5"] for o in lock["ingest"]["outs"] if o["path"] == "data/raw")
    chain = [line.split()[1] for line in out.splitlines() if line.strip().startswith("<-")]
    assert chain == ["continual@cyber", "continual@slice2022", "pretrain", "tokenize", "dedup", "filter", "validate", "ingest", "world"]
    assert f"data/raw {raw_md5[:12]}" in out and "gate         passed" in out and "promote" in out


def test_changing_the_student_reruns_only_what_depends_on_it(repo):
    """A committee of two teachers, targets cached, the student cut from the final model's layers."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["distill"].update(teacher=["final", "continual/slice2022"], student_layers=[0], teacher_cache=True, top_k=16)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _run(["dvc", "repro"], repo)
    assert ran(proc) == {"distill", "evaluate", "register", "report"}
    info = json.loads((repo / "models" / "student" / "training_state" / "info.json").read_text())
    assert info["teachers"] == ["continual/cyber", "continual/slice2022"] and info["student_init"].startswith("layers [0]")
    assert "teacher targets 0 from cache, 6 computed" in proc.stdout + proc.stderr


def test_stream_and_studies_ran_and_show_in_the_report(repo):
    stream = json.loads((repo / "metrics" / "stream.json").read_text())
    tasks = stream["tasks"]
    assert tasks == ["general-2022", "cyber"] and stream["columns"] == [*tasks, "base"]
    assert len(stream["matrix"]["acc"]) == 3 and all(len(r) == 3 for r in stream["matrix"]["ppl"])
    for task in tasks:  # replay planned by the CMR law: the fit and the choice are logged
        plan = stream["replay"]["plans"][task]
        assert plan["replay_ratio"] == stream["replay"]["ratios"][task] == pytest.approx(1 - plan["ratio"])
        assert set(plan["fits"]) == {str(1 - r) for r in (0.1, 0.5)} and plan["pilots"]
        kept = stream["replay"]["promise"]["tasks"][task]  # the plan's promise, checked after the task
        assert kept["replay_ratio"] == plan["replay_ratio"] and kept["bound"] == 0.05
        assert kept["held"] == (kept["realised"] <= kept["bound"])
    assert stream["replay"]["promise"]["planned"] == 2
    assert "without_replay" in stream["general_ppl_rise"] and stream["merged_matrix"] is not None
    gap = (repo / "plots" / "stream" / "gap.csv").read_text().splitlines()
    assert gap[0] == "task,step,tokens,general_loss,domain_loss" and len(gap) > 2
    study = json.loads((repo / "metrics" / "study.json").read_text())
    assert set(study["variants"]) == {"baseline", "meco", "curriculum", "growth"}
    assert study["vs_baseline"]["growth"]["compute_ratio"] == pytest.approx(1.0, abs=0.15)  # equal compute, up to rounding
    assert study["variants"]["meco"]["tokens"] == study["variants"]["baseline"]["tokens"]
    html = (repo / "reports" / "report.html").read_text()
    assert "Technique studies" in html and "Continual stream" in html


def test_a_strategy_switch_is_a_dvc_experiment(repo):
    """`dvc exp run -S` reruns the stream (and what reads it) only; `dvc exp show` lists each experiment's numbers."""
    proc = _run(["dvc", "exp", "run", "-n", "fixed-replay", "-S", "stream.replay.ratio=0.25",
                 "-S", "stream.init=models:/fluxforge-lm@champion"], repo)  # a refresh from the registry's champion
    assert ran(proc) == {"stream", "report"}
    info = json.loads((repo / "models" / "stream" / "training_state" / "info.json").read_text())
    assert info["parent"] == "models:/fluxforge-lm@champion" and info["parent_model"] == "fluxforge-lm"
    assert int(info["parent_version"]) >= 1
    shown = _run(["dvc", "exp", "show", "--json"], repo).stdout
    found = []

    def walk(node):  # noqa: ANN001, ANN202
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "metrics/stream.json" and isinstance(v, dict) and "data" in v:
                    found.append(v["data"]["replay"])
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(shown))
    assert "fixed-replay" in shown  # the experiment, by name, with its metrics
    assert any(r.get("mode") == "fixed" and r.get("ratios") == {"general-2022": 0.25, "cyber": 0.25} for r in found)


def test_a_gate_with_a_reference_holds_the_gain_to_it_and_reruns_when_the_reference_changes(repo):
    """Issue 21: `register.gate.reference` names the multi-seed reference; the register stage reads it (a DVC dependency,
    so a new reference re-gates) and a cyber gain below one run's range fails the gate, whatever the fixed threshold."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["register"]["gate"]["reference"] is None  # the tiny profile's
    params["register"]["gate"]["reference"] = "benchmarks/evidence.json"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    evidence = repo / "benchmarks" / "evidence.json"
    record = json.loads(evidence.read_text())
    record["effects"]["cyber_gain"].update(pi95=[0.9, 1.0], n=3, profile="none")  # out of reach of the tiny model
    evidence.write_text(json.dumps(record))
    assert ran(_run(["dvc", "repro"], repo)) == {"register", "report"}
    decision = json.loads((repo / "metrics" / "register.json").read_text())
    assert decision["promoted"] is False
    assert any(r.startswith("FAIL cyber accuracy gain") and "vs the reference interval [+0.900, +1.000]" in r
               for r in decision["reasons"]), decision["reasons"]
    record["effects"]["cyber_gain"].update(pi95=[-1.0, 1.0])
    evidence.write_text(json.dumps(record))
    assert ran(_run(["dvc", "repro"], repo)) == {"register", "report"}  # the reference changed: the gate ran again
    decision = json.loads((repo / "metrics" / "register.json").read_text())
    assert any(r.startswith("PASS cyber accuracy gain") and "[-1.000, +1.000]" in r for r in decision["reasons"])


def test_bad_params_fail_with_key_and_file(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["steps"] = -3
    params["pretrain"]["learning_rate"] = 0.1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "params.yaml: invalid params" in out and "pretrain.steps" in out and "pretrain.learning_rate" in out
    assert "Traceback" not in out
    check = _run(["fluxforge", "check-params"], repo, check=False)
    assert check.returncode == 2 and "pretrain.learning_rate: unknown key" in check.stderr
