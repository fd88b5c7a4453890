"""The report knows its noise (issue 21 item 2): a run's number against the multi-seed reference interval."""

import json
from pathlib import Path

from fluxforge.eval.reference import against_reference
from fluxforge.eval.report.stream import reference_note


def test_a_number_is_inside_or_outside_the_reference_interval(tmp_path):
    ref = tmp_path / "evidence.json"
    ref.write_text(json.dumps({"profile": "tiny", "effects": {"stream_rise_planned": {"n": 3, "ci95": [-0.35, -0.25], "pi95": [-0.40, -0.20]}}}))
    assert against_reference("stream_rise_planned", -0.30, ref).startswith("inside the reference interval [-0.400, -0.200]")
    assert "(one run's 95 % range over 3 seeds, profile tiny)" in against_reference("stream_rise_planned", -0.30, ref)
    assert against_reference("stream_rise_planned", 0.23, ref).startswith("OUTSIDE the reference interval")
    # one run is held to the range one run lands in (pi95), not to the narrower interval of the mean (ci95)
    assert against_reference("stream_rise_planned", -0.22, ref).startswith("inside")
    assert reference_note({"with_replay": 0.23}, ref) == (" The rise with replay is OUTSIDE the reference interval "
                                                         "[-0.400, -0.200] (one run's 95 % range over 3 seeds, profile tiny).")


def test_a_missing_or_malformed_reference_is_said_not_a_crash(tmp_path):
    missing = tmp_path / "evidence.json"
    assert against_reference("stream_rise_planned", 0.1, missing) == (
        f"no reference interval ({missing} is missing: run benchmarks/evidence.py)")
    missing.write_text("{not json")
    assert "no reference interval for stream_rise_planned" in against_reference("stream_rise_planned", 0.1, missing)
    missing.write_text(json.dumps({"effects": {}}))
    assert "KeyError" in against_reference("stream_rise_planned", 0.1, missing)
    assert reference_note(None, missing) == ""


def test_an_effect_from_another_benchmark_names_its_own_profile(tmp_path):
    """benchmarks/evidence_chain.py adds the chain's effects beside the stream's; each says where it was measured."""
    ref = tmp_path / "evidence.json"
    ref.write_text(json.dumps({"profile": "tiny", "effects": {
        "stream_rise_planned": {"n": 3, "ci95": [-0.35, -0.25], "pi95": [-0.4, -0.2]},
        "cyber_gain": {"n": 3, "ci95": [0.18, 0.22], "pi95": [0.15, 0.25], "profile": "none"}}}))
    assert against_reference("cyber_gain", 0.20, ref) == ("inside the reference interval [+0.150, +0.250] (one run's 95 % range over 3 seeds, "
                                                    "profile none)")
    assert against_reference("cyber_gain", 0.05, ref).startswith("OUTSIDE")
    assert against_reference("stream_rise_planned", -0.3, ref).endswith("(one run's 95 % range over 3 seeds, profile tiny)")


def test_the_prediction_interval_is_wider_than_the_interval_of_the_mean_by_sqrt_n_plus_1():
    import sys

    import numpy as np

    from pipeline_repo import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence import interval

    e = interval([0.10, 0.16, 0.13])
    lo, hi = e["ci95"]
    plo, phi = e["pi95"]
    assert np.isclose((phi - plo) / (hi - lo), np.sqrt(3 + 1)) and np.isclose((plo + phi) / 2, e["mean"])
    assert 4.30 < (hi - lo) / 2 / (e["sd"] / np.sqrt(3)) < 4.31  # Student t, 2 degrees of freedom, 97.5 %


def test_each_benchmark_merges_its_effects_into_the_reference_file(tmp_path):
    """Four benchmarks write benchmarks/evidence.json; one must not drop another's effects (the stream benchmark once
    rewrote the whole file), and each effect names where it was measured."""
    import sys

    from pipeline_repo import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence import interval, write_effects

    path = tmp_path / "evidence.json"
    write_effects({"cyber_gain": {"label": "gain", **interval([0.1, 0.2, 0.15])}}, "none", "python chain.py", path=path)
    write_effects({"stream_rise_planned": {"label": "rise", **interval([-0.3, -0.2, -0.4])}}, "none", "python evidence.py",
                  top={"seeds": [0, 1, 2], "promises": {"0": {}}}, path=path)
    record = json.loads(path.read_text())
    assert set(record["effects"]) == {"cyber_gain", "stream_rise_planned"} and record["seeds"] == [0, 1, 2]
    assert record["effects"]["cyber_gain"]["command"] == "python chain.py"
    assert {"profile", "machine", "date", "pi95"} <= set(record["effects"]["stream_rise_planned"])


def test_each_profile_is_set_against_its_own_reference_file():
    """Issue 18 made the default shorter and kept the old run lengths as profiles/full.yaml: the two have different
    intervals, so each profile's benchmarks write, and its gate, summary and report read, the file its
    register.gate.reference names; a profile without one (tiny) never overwrites a reference."""
    import sys

    from fluxforge.config import read_params
    from fluxforge.eval.reference import REFERENCE, reference_file
    from pipeline_repo import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence import evidence_file

    assert evidence_file("none") == ROOT / "benchmarks" / "evidence.json"
    assert evidence_file("full") == ROOT / "benchmarks" / "evidence-full.json"
    assert evidence_file("tiny") == ROOT / "benchmarks" / "results" / "evidence-tiny.json"
    full = read_params(ROOT / "params.yaml", profile="full")["register"]["gate"]["reference"]
    assert reference_file(full) == Path("benchmarks/evidence-full.json") and reference_file(None) == REFERENCE
    record = json.loads((ROOT / full).read_text())
    assert {e["profile"] for e in record["effects"].values()} == {"full"}
    assert "cyber_gain" in record["effects"] and "stream_rise_planned" in record["effects"]


def _run_with_own_reference(root, reference: str, gain: float, pi95: tuple = (0.10, 0.20), profile: str = "full") -> None:
    """A run directory the summary can read: the real dvc.yaml, params naming ``reference`` (the cyber gain's range
    ``pi95`` on ``profile``), and the evaluation's metrics with that cyber gain."""
    import shutil

    import yaml

    from pipeline_repo import ROOT

    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["register"]["gate"]["reference"] = reference
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / reference).parent.mkdir(parents=True, exist_ok=True)
    (root / reference).write_text(json.dumps({"effects": {"cyber_gain": {"n": 3, "pi95": list(pi95), "profile": profile}}}))
    scores = {"general": {"ppl": 200.0, "acc": 0.6}, "cyber": {"ppl": 300.0, "acc": 0.3}}
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps({"models": {"pretrain": scores}, "tests": {"cyber": {
        "acc_pretrain": 0.2, "acc_final": 0.2 + gain, "n": 212, "p_final_vs_pretrain": 1e-4, "gain": gain}}}))


def _committed_run(root) -> None:
    """A git+DVC repo whose one commit holds a run (cyber gain +0.15, its params naming refs/full.json)."""
    from pipeline_repo import run

    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    _run_with_own_reference(root, "refs/full.json", 0.15)
    run(["git", "add", "-A", "-f"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a run"], root)


def _summary(args: list[str], capsys) -> tuple[int, str]:
    """`fluxforge summary ARGS`: its exit code, and what it printed (stdout, then stderr)."""
    import pytest

    from fluxforge.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["summary", *args])
    printed = capsys.readouterr()
    return exit_.value.code, printed.out + printed.err


def test_the_summary_sets_a_run_against_the_reference_its_params_name(tmp_path, monkeypatch, capsys):
    """`fluxforge summary` of a run whose params name another reference (profiles/full.yaml) reads that file."""
    from pipeline_repo import run

    run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    _run_with_own_reference(tmp_path, "refs/full.json", 0.15)
    monkeypatch.chdir(tmp_path)
    code, out = _summary([], capsys)
    assert code == 0 and ("gain +0.150 inside the reference interval [+0.100, +0.200] (one run's 95 % range over 3 "
                          "seeds, profile full)") in out, out


def test_the_summary_of_a_revision_reads_that_revisions_numbers_and_reference(tmp_path, monkeypatch, capsys):
    """`fluxforge summary --rev` (and the end of `fluxforge run --profile`) describes the commit or experiment named,
    not the workspace: its metrics, and the reference its own params name."""

    _committed_run(tmp_path)
    # the workspace moves on: params that name another reference, another gain
    _run_with_own_reference(tmp_path, "refs/other.json", 0.05, pi95=(0.0, 0.10), profile="other")
    monkeypatch.chdir(tmp_path)
    code, out = _summary(["--rev", "HEAD"], capsys)
    assert code == 0 and "summary of HEAD" in out and "0.200 -> 0.350 over 212 questions" in out, out
    assert "gain +0.150 inside the reference interval [+0.100, +0.200] (one run's 95 % range over 3 seeds, profile full)" in out, out
    code, out = _summary([], capsys)
    assert code == 0 and "gain +0.050 inside the reference interval [+0.000, +0.100] (" in out and "profile other" in out, out
    code, out = _summary(["--rev", "no-such-rev"], capsys)
    assert code == 1 and out.startswith("fluxforge summary: ") and "no-such-rev" in out, out


def test_the_end_of_fluxforge_run_names_the_kept_experiment_when_its_summary_cannot_be_read(tmp_path, capsys):
    """After `fluxforge run --profile` finished its experiment, a summary that cannot be read (here: a revision that is
    not there) is a message that names the experiment and exit 1, not a traceback; a readable one prints its numbers."""
    from fluxforge.cli import _print_experiment
    from fluxforge.orchestrate.experiment import Experiment
    from pipeline_repo import run

    _committed_run(tmp_path)
    gone = "0123456789abcdef" * 2 + "01234567"
    code = _print_experiment(tmp_path, Experiment("exp-gone", gone, "sqlite:///mlflow.db", None))
    printed = capsys.readouterr()
    assert code == 1 and "experiment exp-gone ran and is kept, but its summary cannot be read: " in printed.err, printed
    assert gone in printed.err and "Traceback" not in printed.err and "experiment exp-gone (0123456)" in printed.out
    head = run(["git", "rev-parse", "HEAD"], tmp_path).stdout.strip()
    code = _print_experiment(tmp_path, Experiment("exp-here", head, "sqlite:///mlflow.db", None))
    printed = capsys.readouterr()
    assert code == 0 and "0.200 -> 0.350 over 212 questions" in printed.out and not printed.err, printed
