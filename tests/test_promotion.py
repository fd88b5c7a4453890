"""Promotion, rollback and their history on a real MLflow SQLite registry, including racing promoters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import mlflow
import pytest

from fluxforge.cli import main
from fluxforge.track.promotion import HISTORY_TAG, history, promote, rollback

NAME = "race-lm"


@pytest.fixture
def registry(in_tmp, monkeypatch):
    """A SQLite registry with versions 1-3; v3 failed its gate. Versions need no weights to be moved around."""
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for v, gate in ((1, "passed"), (2, "passed"), (3, "failed")):
        client.create_model_version(NAME, source=str(in_tmp / f"m{v}"))
        client.set_model_version_tag(NAME, str(v), "gate", gate)
    client.set_model_version_tag(NAME, "3", "gate.reasons", "FAIL cyber accuracy gain +0.010 over pretrain (need >= +0.050)")
    return uri


def _champion() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def test_promote_rollback_and_history(registry):
    promote(NAME, "1")
    promote(NAME, "2", reason="better")
    assert _champion() == "2"
    assert [(e["version"], e["previous"], e["action"]) for e in history(NAME)] == [("1", None, "promote"), ("2", "1", "promote")]
    assert promote(NAME, "2")["action"] == "none"  # idempotent: no history entry for a no-op
    back = rollback(NAME)
    assert back["version"] == "1" and _champion() == "1"
    with pytest.raises(Exception, match="no champion before v1"):
        rollback(NAME)  # v1 was the first champion: nothing to go back to
    assert rollback(NAME, to="2")["version"] == "2" and _champion() == "2"


def test_cli_refuses_a_failed_gate_and_explains(registry, capsys):
    with pytest.raises(SystemExit) as ex:
        main(["promote", NAME, "3"])
    assert ex.value.code == 1
    err = capsys.readouterr().err
    assert "failed its promotion gate" in err and "FAIL cyber accuracy gain" in err and "--force" in err
    with pytest.raises(SystemExit) as ex:
        main(["promote", NAME, "3", "--force", "--reason", "hotfix"])
    assert ex.value.code == 0 and _champion() == "3"
    assert "forced past a failed gate" in history(NAME)[-1]["reason"]
    with pytest.raises(SystemExit) as ex:
        main(["promote", NAME, "9"])
    assert ex.value.code == 1 and "no such version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        main(["lineage", f"{NAME}@champion"])
    out = capsys.readouterr().out
    assert ex.value.code == 0 and f"{NAME} v3  [champion]" in out and "hotfix" in out


RACER = textwrap.dedent("""
    import sys, mlflow
    from fluxforge.track.promotion import promote
    mlflow.set_tracking_uri(sys.argv[1])
    for i in range(int(sys.argv[3])):
        promote("race-lm", sys.argv[2] if i % 2 == 0 else "1", reason=f"racer {sys.argv[2]} #{i}")
""")


def test_racing_promotions_never_leave_a_mixed_registry(registry, in_tmp):
    """Two processes promote alternately as fast as they can; every promotion lands in one consistent chain.

    Without the lock, the history's read-modify-write loses entries and its last entry
    disagrees with the alias (checked by hand once by disabling ``registry_lock``).
    """
    mlflow.MlflowClient().set_model_version_tag(NAME, "3", "gate", "passed")
    promote(NAME, "1")
    rounds = 20
    script = in_tmp / "racer.py"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), registry, v, str(rounds)], stderr=subprocess.PIPE, text=True)
             for v in ("2", "3")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    h = history(NAME)
    assert len(h) >= rounds  # each racer's moves away from "1" cannot all be no-ops
    tag = mlflow.MlflowClient().get_registered_model(NAME).tags[HISTORY_TAG]
    assert json.loads(tag) == h
    assert h[-1]["version"] == _champion()
    for before, after in zip(h, h[1:]):
        assert after["previous"] == before["version"], "a promotion was based on a champion that was no longer current"
    assert all(e["version"] != e["previous"] for e in h)
