"""The registry shared by many: an MLflow tracking server on a real PostgreSQL server process, artifacts on the S3
(moto) server process, and the tiny DAG's own ``register`` stage, ``fluxforge promote``, ``rollback`` and ``lineage``
run against it. A PostgreSQL that cannot start fails these tests (the fixture raises), it never skips them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fluxforge.track.postgres import PG_MAJOR
from pipeline_repo import BIN, ROOT

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
