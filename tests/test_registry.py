import copy
from html import escape as html_escape

import mlflow
import pytest

from fluxforge import paths as P
from fluxforge.config import GateConfig
from fluxforge.track.registry import gate, register_and_gate


def _ev(final_cyber=0.9, final_ppl=110.0, p=1e-6):
    def m(gacc, cacc, gppl):
        return {"general": {"acc": gacc, "acc_norm": gacc, "ppl": gppl}, "cyber": {"acc": cacc, "acc_norm": cacc, "ppl": 300.0},
                "slices": {}}

    return {"final": "continual/cyber", "eval_set_digest": "abc",
            "models": {"pretrain": m(0.6, 0.25, 100.0), "continual/cyber": m(0.7, final_cyber, final_ppl), "student": m(0.3, 0.3, 150.0)},
            "tests": {"cyber": {"p_final_vs_pretrain": p, "n": 100, "acc_pretrain": 0.25, "acc_final": final_cyber,
                                "gained": 10, "lost": 1, "p_final_vs_chance": p}}}


def test_gate_rules_each_can_fail():
    ok, reasons = gate(_ev(), GateConfig(), None)
    assert ok and all(r.startswith("PASS") for r in reasons)
    ok, reasons = gate(_ev(final_cyber=0.27), GateConfig(), None)
    assert not ok and any(r.startswith("FAIL cyber accuracy gain") for r in reasons)
    ok, reasons = gate(_ev(final_ppl=200.0), GateConfig(), None)
    assert not ok and any(r.startswith("FAIL general held-out perplexity") for r in reasons)
    weak = {**_ev(), "distill": {"general_acc_fraction": 0.9, "cyber_acc_fraction": 0.4}}
    ok, reasons = gate(weak, GateConfig(min_student_acc_fraction=0.5), None)
    assert not ok and any(r.startswith("FAIL student keeps 40% of the teacher's above-chance accuracy") for r in reasons)
    assert gate(weak, GateConfig(min_student_acc_fraction=0.4), None)[0]
    ok, reasons = gate(_ev(p=0.2), GateConfig(), None)
    assert not ok and any("p = 2.00e-01" in r for r in reasons)
    same = {"version": "2", "general_acc": 0.7, "cyber_acc": 0.9 + 1e-12, "eval_set": "abc"}
    assert gate(_ev(), GateConfig(), same)[0], "the same model registered again ties with itself"
    champ = {"version": "3", "general_acc": 0.9, "cyber_acc": 0.95, "eval_set": "abc"}
    ok, reasons = gate(_ev(), GateConfig(), champ)
    assert not ok and any("champion v3" in r for r in reasons)
    ok, reasons = gate(_ev(), GateConfig(), {**champ, "eval_set": "other"})
    assert ok and any("another evaluation set; not compared" in r for r in reasons)


@pytest.fixture
def tiny_model_dir(in_tmp, monkeypatch):
    from fluxforge.config import ModelConfig
    from fluxforge.data.tokenize import train_tokenizer
    from fluxforge.train.model import build_model, save_model

    tok = train_tokenizer(["Zorvex Gateway is affected by SQL injection."] * 20, 300)
    m = build_model(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=32),
                    len(tok), tok.eos_token_id, tok.pad_token_id)
    save_model(m, tok, P.model_dir("continual/cyber"), {"cumulative_tokens": 1234, "parent": "pretrain"})
    # an absolute URI: MLflow caches stores by URI, so a relative one would reach another test's database
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'mlflow.db'}")
    return P.model_dir("continual/cyber")


def test_register_promote_then_refuse_a_worse_challenger(tiny_params, tiny_model_dir, monkeypatch):
    first = register_and_gate(tiny_params, _ev())
    assert first["promoted"] and first["version"] == "1"
    client = mlflow.MlflowClient()
    name = tiny_params.registry.model_name
    champ = client.get_model_version_by_alias(name, "champion")
    assert str(champ.version) == "1"
    assert champ.tags["fluxforge.cumulative_tokens"] == "1234" and champ.tags["gate"] == "passed"

    worse = copy.deepcopy(_ev())
    worse["models"]["continual/cyber"]["general"]["acc"] = 0.1
    strict = tiny_params.model_copy(update={"registry": tiny_params.registry.model_copy(update={"gate": GateConfig()})})
    second = register_and_gate(strict, worse)
    assert not second["promoted"] and second["previous_champion"] == "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert "FAIL mean accuracy" in client.get_model_version(name, "2").tags["gate.reasons"]

    # both MLflow users and transformers users can load the champion
    out = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(["Zorvex Gateway is"])
    assert isinstance(out, list) and len(out) == 1
    from transformers import AutoModelForCausalLM

    local = mlflow.artifacts.download_artifacts(f"models:/{name}@champion")
    model = AutoModelForCausalLM.from_pretrained(f"{local}/artifacts/hf")
    assert model.config.hidden_size == 16

    # and a registered version serves as a distillation teacher, pinned to the version the alias names now
    import fluxforge.track.resolve as resolve
    from fluxforge.track.resolve import dag_or_registry_dirs
    from fluxforge.train.model import load_model

    monkeypatch.setattr(resolve, "CACHE", tiny_model_dir.parents[2] / "model-cache")
    (path,), versions = dag_or_registry_dirs([f"models:/{name}@champion"])
    assert versions == {f"models:/{name}@champion": f"{name}/1"}
    assert path.parts[-4:] == (name, "1", "artifacts", "hf")
    assert load_model(path)[0].config.hidden_size == 16


def test_report_says_why_a_challenger_was_not_promoted(tiny_params, tiny_model_dir):
    from fluxforge.eval.report import build_report
    from fluxforge.io import write_json

    register_and_gate(tiny_params, _ev())
    worse = copy.deepcopy(_ev())
    worse["models"]["continual/cyber"]["cyber"]["acc"] = 0.26  # barely above the pretrained model
    decision = register_and_gate(tiny_params, worse)
    assert not decision["promoted"]
    write_json(P.METRICS / "register.json", decision)
    write_json(P.METRICS / "eval.json", worse)
    html = build_report(tiny_params, P.REPORTS / "report.html").read_text()
    assert f"version {decision['version']} is <b>challenger</b>, <b>not promoted</b>; champion unchanged" in html
    fails = [r for r in decision["reasons"] if r.startswith("FAIL")]
    assert fails and all(html_escape(r) in html for r in fails)
