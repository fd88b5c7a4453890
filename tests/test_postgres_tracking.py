"""The registry shared by many: an MLflow tracking server on a real PostgreSQL server process, artifacts on the S3
(moto) server process, and the tiny DAG's own ``register`` stage, ``fluxforge promote``, ``rollback`` and ``lineage``
run against it. A PostgreSQL that cannot start fails these tests (the fixture raises), it never skips them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from fluxforge.track.postgres import PG_MAJOR
from pipeline_repo import BIN, ROOT, copy_repo
from servers import use_tracking_uri

pytestmark = pytest.mark.slow  # PostgreSQL (~6 s) and an MLflow server on it (~15 s); two register stages


def _sql(uri: str, query: str, *args: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(uri) as con:
        return con.execute(query, args).fetchall()


def _run(cmd: list[str], cwd: Path, tracking_uri: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": tracking_uri,
           "FLUXFORGE_PROGRESS": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_infra_runs_the_postgres_and_mlflow_versions_the_tests_run(postgres):
    """infra/compose and infra/k8s pin the PostgreSQL major version the tests start and the MLflow version installed."""
    from importlib.metadata import version

    (num,), = _sql(postgres.uri, "SHOW server_version_num")
    assert int(num) // 10000 == PG_MAJOR, f"the tests run PostgreSQL {num}, infra pins {PG_MAJOR}"
    infra = ROOT / "infra"
    images = [line.split("image:", 1)[1].split("#")[0].strip()
              for f in [*(infra / "k8s").glob("*.yaml"), *(infra / "compose").glob("*.yml"), *(infra / "mlflow").glob("*.yml")]
              for line in f.read_text().splitlines() if "image:" in line]
    postgres_images = {i for i in images if i.startswith("postgres:")}
    assert postgres_images == {f"postgres:{PG_MAJOR}"}, postgres_images
    assert f"FROM ghcr.io/mlflow/mlflow:v{version('mlflow')}" in (infra / "mlflow" / "Dockerfile").read_text()
    assert f"psycopg[binary]=={version('psycopg')}" in (infra / "mlflow" / "Dockerfile").read_text()


def _champion(uri: str, name: str) -> str:
    return str(_sql(uri, "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", name)[0][0])


def test_register_promote_rollback_and_lineage_run_against_the_postgres_registry(tiny_repo, pg_mlflow_server, tmp_path):
    """The tiny DAG's own ``register`` stage twice (v1 becomes champion; v2, the same model, ties with the champion
    it reads back from PostgreSQL, and a tie keeps the champion), then the CLI moves the champion and back; PostgreSQL's
    own tables hold every version and alias, and the lineage reads them back."""
    repo = copy_repo(tiny_repo[0], tmp_path / "repo")
    uri, pg = pg_mlflow_server.tracking_uri, pg_mlflow_server.postgres.uri
    name = yaml.safe_load((repo / "params.yaml").read_text())["register"]["model_name"]
    decisions = []
    for _ in range(2):
        _run([str(BIN / "python"), "-m", "stages.register"], repo, uri)
        decisions.append(json.loads((repo / "metrics" / "register.json").read_text()))
    assert [(d["version"], d["promoted"]) for d in decisions] == [("1", True), ("2", False)], decisions
    assert any("vs champion v1" in r for r in decisions[1]["reasons"]), decisions[1]["reasons"]
    assert _sql(pg, "SELECT version FROM model_versions WHERE name = %s ORDER BY version", name) == [(1,), (2,)]
    assert _champion(pg, name) == "1"
    fluxforge = str(BIN / "fluxforge")
    assert "champion v1 -> v2" in _run([fluxforge, "promote", name, "2", "--force", "--reason", "try"], repo, uri)
    assert _champion(pg, name) == "2"
    assert "champion v2 -> v1" in _run([fluxforge, "rollback", name], repo, uri)
    assert _champion(pg, name) == "1"
    lineage = _run([str(BIN / "fluxforge"), "lineage", f"{name}@champion"], repo, uri)
    assert f"{name} v1  [champion]" in lineage and "gate         passed" in lineage
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    pretrained = next(o["md5"] for o in lock["pretrain"]["outs"] if o["path"] == "models/pretrain")
    assert f"models/pretrain {pretrained[:12]}" in lineage, lineage  # the chain's dvc.lock hashes, read from PostgreSQL
    assert not _sql(pg, "SELECT name FROM registered_models WHERE name LIKE %s", f"{name}.promotion-lock%"), \
        "a promotion lock was left in the registry"


def test_promoters_on_many_hosts_race_the_postgres_registry_and_agree(pg_mlflow_server, tmp_path):
    """tests/test_promotion.py's race (processes with no folder in common, the lock in the registry) on PostgreSQL."""
    from test_promotion import race_and_check

    with use_tracking_uri(pg_mlflow_server.tracking_uri) as uri:
        race_and_check(uri, tmp_path, racers=4, rounds=10)  # 14 s here (the SQLite server gets 25 rounds)
