import copy
import json
from html import escape as html_escape

import mlflow
import pytest

from fluxforge import paths as P
from fluxforge.config import GateConfig
from fluxforge.eval.stats import mcnemar_one_sided
from fluxforge.track.gate import Scores, Unreadable, decode_results, encode_results, evaluation_tags, gate, scores_from_tags
from fluxforge.track.registry import register_and_gate


def _ev(final_cyber=0.9, final_ppl=110.0, p=1e-6):
    def m(gacc, cacc, gppl):
        return {"general": {"acc": gacc, "acc_norm": gacc, "ppl": gppl}, "cyber": {"acc": cacc, "acc_norm": cacc, "ppl": 300.0},
                "slices": {}}

    return {"final": "continual/cyber", "eval_set_digest": "abc",
            "models": {"pretrain": m(0.6, 0.25, 100.0), "continual/cyber": m(0.7, final_cyber, final_ppl), "student": m(0.3, 0.3, 150.0)},
            "tests": {"cyber": {"p_final_vs_pretrain": p, "n": 100, "acc_pretrain": 0.25, "acc_final": final_cyber,
                                "gained": 10, "lost": 1, "p_final_vs_chance": p}}}


CFG = GateConfig()
N = 100  # questions per domain in _ev


def _scores(version="9", general=0.7, cyber=0.9, eval_set="abc", correct=None):
    return Scores(version, eval_set, general, cyber, correct)


def _answers(right: int, n: int = 2 * N, offset: int = 0) -> tuple[bool, ...]:
    """``right`` correct answers out of ``n``, starting at question ``offset`` (wrapping)."""
    return tuple((i - offset) % n < right for i in range(n))


def test_gate_rules_each_can_fail():
    me = _scores()
    ok, reasons = gate(_ev(), CFG, me, None, mcnemar_one_sided)
    assert ok and all(r.startswith("PASS") for r in reasons) and reasons[-1] == "PASS no champion yet"
    ok, reasons = gate(_ev(final_cyber=0.27), CFG, me, None, mcnemar_one_sided)
    assert not ok and any(r.startswith("FAIL cyber accuracy gain") for r in reasons)
    ok, reasons = gate(_ev(final_ppl=200.0), CFG, me, None, mcnemar_one_sided)
    assert not ok and any(r.startswith("FAIL general held-out perplexity") for r in reasons)
    weak = {**_ev(), "distill": {"general_acc_fraction": 0.9, "cyber_acc_fraction": 0.4}}
    ok, reasons = gate(weak, GateConfig(min_student_acc_fraction=0.5), me, None, mcnemar_one_sided)
    assert not ok and any(r.startswith("FAIL student keeps 40% of the teacher's above-chance accuracy") for r in reasons)
    assert gate(weak, GateConfig(min_student_acc_fraction=0.4), me, None, mcnemar_one_sided)[0]
    ok, reasons = gate(_ev(p=0.2), CFG, me, None, mcnemar_one_sided)
    assert not ok and any("p = 2.00e-01" in r for r in reasons)
    champ = _scores("3", 0.9, 0.95)
    ok, reasons = gate(_ev(), CFG, me, champ, mcnemar_one_sided)
    assert not ok and reasons[-1].startswith("FAIL mean accuracy 0.800 vs champion v3 0.925")


def test_a_challenger_that_only_equals_the_champion_keeps_it():
    """Equal accuracy and the same answers: no margin, no significance, so the champion stays and the reason says so."""
    same = _answers(160)
    ok, reasons = gate(_ev(), CFG, _scores(correct=same), _scores("2", correct=same), mcnemar_one_sided)
    assert not ok
    assert reasons[-1] == ("FAIL mean accuracy 0.800 vs champion v2 0.800 (+0.000, need >= +0.020) or paired test over "
                           "200 questions: 0 gained, 0 lost, p = 1 (need <= 0.05); equal to the champion, so v2 stays")
    # the same count of right answers on other questions is no better either
    ok, reasons = gate(_ev(), CFG, _scores(correct=same), _scores("2", correct=_answers(160, offset=7)), mcnemar_one_sided)
    assert not ok and "7 gained, 7 lost" in reasons[-1] and reasons[-1].endswith("equal to the champion, so v2 stays")
    # a champion registered before per-question results were kept: margin only, and said
    ok, reasons = gate(_ev(), CFG, _scores(correct=same), _scores("2"), mcnemar_one_sided)
    assert not ok and "no paired test" in reasons[-1] and reasons[-1].endswith("equal to the champion, so v2 stays")


def test_a_challenger_passes_by_the_margin_or_by_the_paired_test():
    champ = _scores("2", 0.68, 0.88, correct=_answers(156))
    # +0.020 mean accuracy: the margin, although 4 more right answers out of 200 are not significant
    ok, reasons = gate(_ev(), CFG, _scores(correct=_answers(160)), champ, mcnemar_one_sided)
    assert ok and "(+0.020, need >= +0.020)" in reasons[-1] and "4 gained, 0 lost, p = 0.062" in reasons[-1]
    # +0.015 is under the margin, but 3 gained and none lost is not significant either ...
    near = _scores("2", 0.685, 0.885, correct=_answers(157))
    assert not gate(_ev(), CFG, _scores(correct=_answers(160)), near, mcnemar_one_sided)[0]
    # ... while under a looser paired threshold it is
    loose = GateConfig(champion_max_p=0.2)
    ok, reasons = gate(_ev(), loose, _scores(correct=_answers(160)), near, mcnemar_one_sided)
    assert ok and "3 gained, 0 lost, p = 0.12" in reasons[-1]


def test_the_cyber_gain_must_reach_the_reference_range_when_the_gate_names_one(tmp_path):
    """Issue 21: the gate can hold the gain to the multi-seed reference instead of one fixed threshold."""
    from fluxforge.eval.reference import reference

    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps({"profile": "none", "effects": {
        "cyber_gain": {"n": 3, "ci95": [0.60, 0.66], "pi95": [0.55, 0.71]}}}))
    cfg = GateConfig(reference=str(evidence))
    me = _scores()
    ok, reasons = gate(_ev(), cfg, me, None, mcnemar_one_sided, reference("cyber_gain", evidence))  # gain +0.650
    assert ok and "PASS cyber accuracy gain +0.650 vs the reference interval [+0.550, +0.710]" in reasons[1]
    ok, reasons = gate(_ev(final_cyber=0.78), cfg, me, None, mcnemar_one_sided, reference("cyber_gain", evidence))
    assert not ok and reasons[0].startswith("PASS")  # +0.530 clears the fixed threshold ...
    assert reasons[1].startswith("FAIL cyber accuracy gain +0.530 vs the reference interval")  # ... not the reference
    assert "need >= its lower end +0.550" in reasons[1]
    missing = reference("cyber_gain", tmp_path / "nope.json")
    ok, reasons = gate(_ev(), cfg, me, None, mcnemar_one_sided, missing)
    assert not ok and "FAIL cyber accuracy gain +0.650 vs the reference in" in reasons[1] and "nope.json is missing" in reasons[1]
    assert not any("reference" in r for r in gate(_ev(final_cyber=0.78), CFG, me, None, mcnemar_one_sided)[1])


def test_a_champion_that_cannot_be_compared_stops_the_gate():
    me = _scores(correct=_answers(160))
    for tags, why in [({}, "eval.general_acc is missing"),
                      ({"eval.general_acc": "n/a", "eval.cyber_acc": "0.5", "eval.set_digest": "abc"}, "do not parse"),
                      ({"eval.general_acc": "nan", "eval.cyber_acc": "0.5", "eval.set_digest": "abc"}, "hold no accuracies"),
                      ({"eval.general_acc": "0.1", "eval.cyber_acc": "0.1"}, "no evaluation-set digest"),
                      ({"eval.general_acc": "0.1", "eval.cyber_acc": "0.1", "eval.set_digest": "abc",
                        "eval.correct": "%%%", "eval.questions": "200"}, "per-question results do not parse")]:
        champ = scores_from_tags("4", tags)
        assert isinstance(champ, Unreadable) and why in champ.why
        ok, reasons = gate(_ev(), CFG, me, champ, mcnemar_one_sided)
        assert not ok and reasons[-1].startswith("FAIL champion v4 cannot be compared") and "stays champion" in reasons[-1]
    other = _scores("4", 0.1, 0.1, eval_set="other-set")
    ok, reasons = gate(_ev(), CFG, me, other, mcnemar_one_sided)
    assert not ok and "another evaluation set" in reasons[-1] and "no comparison was made" in reasons[-1]
    assert gate(_ev(), GateConfig(must_beat_champion=False), me, other, mcnemar_one_sided)[0]


def test_results_round_trip_through_a_tag():
    answers = _answers(123, 437)
    tags = evaluation_tags(_ev(), answers)
    back = scores_from_tags("1", tags)
    assert back.correct == answers and back.general_acc == 0.7 and tags["eval.questions"] == "437"
    assert len(tags["eval.correct"]) == 76  # 437 bits in 55 bytes, base64
    last = encode_results(_answers(1, 437, offset=436))  # only the last question right
    for wrong_count in (436, 441):  # an answer beyond the count, or fewer bits than questions
        with pytest.raises(ValueError, match="do not encode"):
            decode_results(last, wrong_count)


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


def _register(params, ev, correct=None):
    return register_and_gate(params, ev, correct or _answers(160), paired_test=mcnemar_one_sided)


def test_register_promote_then_refuse_a_worse_challenger(tiny_params, tiny_model_dir, monkeypatch):
    first = _register(tiny_params, _ev())
    assert first["promoted"] and first["version"] == "1"
    client = mlflow.MlflowClient()
    name = tiny_params.registry.model_name
    champ = client.get_model_version_by_alias(name, "champion")
    assert str(champ.version) == "1"
    assert champ.tags["fluxforge.cumulative_tokens"] == "1234" and champ.tags["gate"] == "passed"

    worse = copy.deepcopy(_ev())
    worse["models"]["continual/cyber"]["general"]["acc"] = 0.1
    strict = tiny_params.model_copy(update={"registry": tiny_params.registry.model_copy(update={"gate": GateConfig()})})
    second = _register(strict, worse, _answers(100))
    assert not second["promoted"] and second["previous_champion"] == "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    v2 = client.get_model_version(name, "2").tags
    assert "FAIL mean accuracy" in v2["gate.reasons"] and v2["gate.champion"] == "1"

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


def test_the_same_model_registered_again_does_not_move_the_champion(tiny_params, tiny_model_dir, capsys):
    """The issue's refresh that changed nothing measurable: v2 equals v1, so v1 stays champion and the registry says why."""
    from fluxforge.cli import main
    from fluxforge.track.promotion import history

    name = tiny_params.registry.model_name
    assert _register(tiny_params, _ev())["promoted"]
    again = _register(tiny_params, _ev())
    assert not again["promoted"] and again["reasons"][-1].endswith("equal to the champion, so v1 stays")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert [(e["version"], e["action"]) for e in history(name)] == [("1", "promote")]
    v2 = client.get_model_version(name, "2").tags
    assert v2["gate"] == "failed" and float(v2["eval.cyber_acc"]) == 0.9  # full precision in the tag
    # what a person reads is rounded; the registry tag keeps every digit
    client.set_model_version_tag(name, "2", "eval.cyber_acc", repr(21 / 53))
    with pytest.raises(SystemExit):
        main(["lineage", f"{name}/2"])
    out = capsys.readouterr().out
    assert "cyber acc 0.396 " in out and "0.39622641509433965" not in out and "400 questions" not in out
    assert "200 questions" in out and "(against champion v1)" in out and "equal to the champion" in out


def test_a_champion_with_broken_evaluation_tags_is_never_beaten_by_default(tiny_params, tiny_model_dir):
    name = tiny_params.registry.model_name
    _register(tiny_params, _ev())
    client = mlflow.MlflowClient()
    client.delete_model_version_tag(name, "1", "eval.general_acc")  # once, this counted as accuracy 0: any challenger won
    better = copy.deepcopy(_ev())
    better["models"]["continual/cyber"]["general"]["acc"] = 0.95
    decision = _register(tiny_params, better, _answers(190))
    assert not decision["promoted"] and str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert decision["reasons"][-1].startswith("FAIL champion v1 cannot be compared: its evaluation tag eval.general_acc is missing")
    client.set_model_version_tag(name, "1", "eval.general_acc", "0.7")
    client.set_model_version_tag(name, "1", "eval.set_digest", "another-question-set")
    decision = _register(tiny_params, better, _answers(190))
    assert not decision["promoted"] and "another evaluation set" in decision["reasons"][-1]


SECRET = "planted-Zq8v2LmN4pXw"


def test_the_params_tag_carries_no_secret(tiny_raw, tiny_model_dir, monkeypatch):
    """A secret that reached a params value from the environment, and a password inside a URL, are masked in the dump."""
    from fluxforge.config import parse_params

    monkeypatch.setenv("FLUXFORGE_S3_SECRET", SECRET)
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["sources"][0]["path"] = f"s3://corpus/{SECRET}/docs.jsonl"  # as a shell expands -S path=...$SECRET...
    raw["tracking"]["tracking_uri"] = "http://ci:url-password-77@127.0.0.1:5000"
    decision = _register(parse_params(raw), _ev())
    tags = mlflow.MlflowClient().get_model_version(decision["model_name"], decision["version"]).tags
    dump = tags["params"]
    assert SECRET not in dump and "url-password-77" not in dump
    assert "s3://corpus/***/docs.jsonl" in dump and "http://ci:***@127.0.0.1:5000" in dump
    assert json.loads(dump)["register"]["model_name"] == decision["model_name"]  # whole, not cut at 5000 characters
    assert not any(SECRET in v for v in tags.values())


def test_report_says_why_a_challenger_was_not_promoted(tiny_params, tiny_model_dir):
    from fluxforge.eval.report import build_report
    from fluxforge.io import write_json

    _register(tiny_params, _ev())
    worse = copy.deepcopy(_ev())
    worse["models"]["continual/cyber"]["cyber"]["acc"] = 0.26  # barely above the pretrained model
    decision = _register(tiny_params, worse)
    assert not decision["promoted"]
    write_json(P.METRICS / "register.json", decision)
    write_json(P.METRICS / "eval.json", worse)
    html = build_report(tiny_params, P.REPORTS / "report.html").read_text()
    assert f"version {decision['version']} is <b>challenger</b>, <b>not promoted</b>; champion unchanged" in html
    fails = [r for r in decision["reasons"] if r.startswith("FAIL")]
    assert fails and all(html_escape(r) in html for r in fails)
