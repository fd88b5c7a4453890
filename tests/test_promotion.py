"""Promotion, rollback and their history on a real MLflow registry, including racing promoters on one host and many."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import mlflow
import pytest

from fluxforge.cli import main
from fluxforge.track.locks import LOCK_SUFFIX, LOCKS, Holder, LockError, RegistryLease, host_lock, scheme
from fluxforge.track.promotion import ENTRY_PREFIX, history, promote, rollback

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

    Without the lock, two promoters take the same history sequence number and one of them fails, or
    the last entry disagrees with the alias (checked by hand by disabling ``promotion_lock``).
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
    tags = mlflow.MlflowClient().get_registered_model(NAME).tags
    assert [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(ENTRY_PREFIX)] == h
    assert [e["seq"] for e in h] == list(range(1, len(h) + 1))
    assert h[-1]["version"] == _champion()
    for before, after in zip(h, h[1:]):
        assert after["previous"] == before["version"], "a promotion was based on a champion that was no longer current"
    assert all(e["version"] != e["previous"] for e in h)


GATED_RACER = textwrap.dedent("""
    import random, sys
    import mlflow
    from fluxforge.config import GateConfig
    from fluxforge.eval.stats import mcnemar_one_sided
    from fluxforge.track.gate import evaluation_tags
    from fluxforge.track.registry import gate_and_promote

    uri, name, racer, rounds, run_id = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    client = mlflow.MlflowClient(tracking_uri=uri)
    # only the champion rule decides: the others are wide open
    cfg = GateConfig(min_cyber_acc_gain=-1.0, max_significance_p=1.0, max_general_ppl_increase=100.0)
    rng = random.Random(racer)
    for i in range(rounds):
        right = max(0, min(200, 60 + 4 * i + rng.randint(-8, 8)))  # accuracy climbs with noise: racers collide
        acc = right / 200
        scores = {"general": {"acc": acc, "ppl": 10.0}, "cyber": {"acc": acc, "ppl": 10.0}}
        ev = {"final": "final", "eval_set_digest": "race-set", "tests": {"cyber": {"p_final_vs_pretrain": 0.0}},
              "models": {"final": scores, "pretrain": scores}}
        tags = {**evaluation_tags(ev, [q < right for q in range(200)]), "racer": f"{racer}#{i}"}
        mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
        gate_and_promote(name, str(mv.version), ev, cfg, mcnemar_one_sided, tracking_uri=uri)
""")


@pytest.mark.slow
def test_promoters_on_many_hosts_race_one_server_and_agree(tracking_uri, tmp_path):
    """4 processes, each with its own home and folder (no lock file in common), 25 register-gate-promote rounds each,
    against one MLflow server process (SQLite behind it; tests/test_postgres_tracking.py races one on PostgreSQL).
    The lock lives in the registry, so every gate saw the champion its promotion replaced: the history is one chain,
    every winner and only winners are in it, accuracy only rises."""
    race_and_check(tracking_uri, tmp_path, racers=4, rounds=25)


def race_and_check(tracking_uri: str, tmp_path, racers: int, rounds: int) -> None:  # noqa: ANN001
    """``racers`` processes x ``rounds`` register-gate-promote rounds against ``tracking_uri``; assert one chain."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.create_registered_model(name)
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    script = tmp_path / "racer.py"
    script.write_text(GATED_RACER)
    procs = []
    for r in range(racers):
        home = tmp_path / f"host{r}"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
        procs.append(subprocess.Popen([sys.executable, str(script), tracking_uri, name, f"racer{r}", str(rounds), run_id],
                                      cwd=home, env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]

    versions = {str(mv.version): mv.tags for mv in client.search_model_versions(f"name='{name}'")}
    assert len(versions) == racers * rounds and all(t["gate"] in ("passed", "failed") for t in versions.values())
    h = history(name, tracking_uri)
    winners = {v for v, t in versions.items() if t["gate"] == "passed"}
    promoted = [e["version"] for e in h]
    assert len(promoted) == len(set(promoted)) and set(promoted) == winners, "each winner, and only winners, promoted once"
    # enough promotions for the chain checks below to mean something; how many a race yields depends on its timing
    # (10 rounds of 4 racers on PostgreSQL gave 5 in one run and more in others), so the floor is the meaningful one
    assert len(winners) >= 3, f"only {len(winners)} promotions: too few for the chain to prove anything"
    assert all(e["action"] == "promote" for e in h)
    assert str(client.get_model_version_by_alias(name, "champion").version) == h[-1]["version"]
    mean = {v: float(t["eval.general_acc"]) for v, t in versions.items()}
    for before, entry in zip([None, *h], h):
        assert entry["previous"] == (before["version"] if before else None), "a promotion based on a stale champion"
        # the gate compared the winner with exactly the champion it then replaced
        assert versions[entry["version"]]["gate.champion"] == (entry["previous"] or "")
        if before:
            assert mean[entry["version"]] > mean[before["version"]], "a worse version replaced a better champion"
    assert not [v for v, t in versions.items() if t["gate"] == "failed" and v in {e["version"] for e in h}]
    assert not [m.name for m in client.search_registered_models(f"name LIKE '{name}%'") if m.name != name], \
        "the promotion lock was left behind"


def test_a_dead_holders_lock_is_broken_after_its_lease_and_only_once(in_tmp):
    """The registry lock of a process that died mid-promotion: waiters take over after its lease, one break only."""
    uri = f"sqlite:///{in_tmp / 'locks.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_registered_model("m")
    dead = RegistryLease("m", uri, lease_s=0.5)
    dead.acquire()  # and never releases
    with pytest.raises(LockError, match=r"waited 0 s for the promotion lock held by .* pid"):
        RegistryLease("m", uri, wait_s=0.2).acquire()  # within the lease a live holder is waited for, not broken
    t0 = time.monotonic()
    with RegistryLease("m", uri) as alive:
        assert 0.5 <= time.monotonic() - t0 < 20 and alive.held()
        late = RegistryLease("m", uri)
        late.break_stale(Holder(dead.token, "the dead one", 0.0))  # a second waiter that saw the same dead holder
        assert alive.held(), "a late breaker broke the next holder's lock"
    names = {m.name for m in client.search_registered_models()}
    assert names == {"m", f"m{LOCK_SUFFIX}.stale-{dead.token}"}  # released, and the broken lock kept as a record
    with pytest.raises(LockError, match="broken while this process held it"):
        dead.release()


def test_each_store_gets_the_lock_that_spans_its_promoters():
    assert {scheme(u) for u in ("http://mlflow:5000", "https://u:p@mlflow", "postgresql+psycopg2://db/mlflow")} == \
        {"http", "https", "postgresql"}
    assert LOCKS.get(scheme("http://mlflow:5000"), RegistryLease) is RegistryLease  # a shared server: in the registry
    assert LOCKS[scheme("sqlite:////tmp/mlflow.db")] is host_lock and LOCKS[scheme("./mlruns")] is host_lock
