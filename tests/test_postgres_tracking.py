"""The registry shared by many: an MLflow tracking server on a real PostgreSQL server process, artifacts on the S3
(moto) server process, and the tiny DAG's own ``register`` stage, ``fluxforge promote``, ``rollback`` and ``lineage``
run against it. A PostgreSQL that cannot start fails these tests (the fixture raises), it never skips them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fluxforge.track.postgres import PG_MAJOR
from pipeline_repo import BIN, ROOT
from servers import PgMlflowServer, S3Server

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


def test_register_promote_rollback_and_lineage_on_postgres(pg_mlflow_server: PgMlflowServer, s3_server: S3Server,
                                                          tiny_repo, tmp_path):
    uri, pg = pg_mlflow_server.tracking_uri, pg_mlflow_server.postgres
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo[0], repo, symlinks=True)  # the reproduced tiny DAG: models, evaluation, everything register reads
    name = yaml.safe_load((repo / "params.yaml").read_text())["register"]["model_name"]
    cli = [sys.executable, "-m", "fluxforge.cli"]

    for _ in range(2):  # the DAG's own stage, twice: version 1 becomes champion, version 2 is a challenger
        _run([sys.executable, "-m", "dvc", "repro", "--single-item", "--force", "register"], repo, uri)
    versions = _sql(pg.uri, "SELECT version FROM model_versions WHERE name = %s ORDER BY version", name)
    assert [v for (v,) in versions] == [1, 2], "the registry's rows are not in PostgreSQL"
    assert dict(_sql(pg.uri, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", name))["champion"] == 1

    out = _run([*cli, "promote", name, "2", "--force", "--reason", "shared-registry test"], repo, uri)
    assert "champion v1 -> v2" in out
    assert dict(_sql(pg.uri, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", name))["champion"] == 2
    out = _run([*cli, "rollback", name], repo, uri)
    assert "champion v2 -> v1" in out
    lineage = _run([*cli, "lineage", f"{name}@champion"], repo, uri)
    assert re.search(rf"^{re.escape(name)} v1  \[champion\]", lineage, re.M), lineage
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert f"git {commit[:12]}" in lineage

    # the model's files are in the bucket, through the server (the stage had no S3 credentials)
    prefix = pg_mlflow_server.artifacts_uri.removeprefix(f"s3://{s3_server.bucket}/")
    keys = s3_server.keys(prefix + "/")
    assert any(k.endswith("model.safetensors") for k in keys) and any(k.endswith("/MLmodel") for k in keys)
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in os.environ.values()


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
