"""Session-scoped servers for tests: an in-memory S3 (moto) and an MLflow tracking server writing to it.

Why session scope: the MLflow server takes 10-20 s to start on two cores, so it starts once
and every test that needs a real server shares it (each test should use its own experiment
and model names). Credentials for the fake S3 live only in the server processes' environment
and in ``S3Server.client()``; the test process's own environment never sees them, which also
proves that MLflow clients need no S3 access (artifacts are proxied by the server).
The secret is random per session so a test can search for it in what the server stored.

The PostgreSQL-backed server (``pg_mlflow_server``) is a second MLflow server on a real PostgreSQL
process (:mod:`fluxforge.track.postgres`); it starts only for the tests that ask for it.

Import the fixtures into ``tests/conftest.py``::

    from servers import mlflow_server, pg_mlflow_server, postgres, prefect_server, s3_server, tracking_uri  # noqa: F401
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fluxforge.track import servers
from fluxforge.track.postgres import SERVICE_USER, Postgres, postgres_server


@dataclass(frozen=True)
class S3Server:
    """The moto endpoint, its bucket, and the credentials its servers were started with."""

    endpoint_url: str
    bucket: str
    env: dict[str, str] = field(repr=False)
    log: Path

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        import boto3

        return boto3.session.Session(aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                                     region_name=self.env["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=self.endpoint_url)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@dataclass(frozen=True)
class MlflowServer:
    """A tracking server: where clients point, where it keeps metadata and artifacts, and its log."""

    tracking_uri: str
    backend_db: Path
    artifacts_uri: str
    log: Path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    env = {"AWS_ACCESS_KEY_ID": "fluxforge-test", "AWS_SECRET_ACCESS_KEY": f"ff-secret-{secrets.token_hex(12)}",
           "AWS_DEFAULT_REGION": "us-east-1"}
    log = tmp_path_factory.mktemp("s3-server") / "moto.log"
    with servers.s3_server("fluxforge-mlflow", env=env, log=log) as store:
        yield S3Server(store.endpoint_url, store.bucket, env, log)


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    db, artifacts = root / "backend.db", f"s3://{s3_server.bucket}/artifacts"
    with servers.mlflow_server(f"sqlite:///{db}", artifacts, s3_endpoint=s3_server.endpoint_url,
                               env=s3_server.env, log=root / "server.log", timeout=180) as srv:
        yield MlflowServer(srv.url, db, artifacts, root / "server.log")


@dataclass(frozen=True)
class PgMlflowServer:
    """A tracking server whose backend store is PostgreSQL."""

    tracking_uri: str
    postgres: Postgres
    artifacts_uri: str
    log: Path


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL server on loopback. As root it runs as the ``postgres`` account, which cannot enter pytest's
    private temporary folders: its data lives in a folder of its own under the system's temp dir."""
    home = Path(tempfile.mkdtemp(prefix="fluxforge-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(home, SERVICE_USER)
        with postgres_server(home / "data", log=tmp_path_factory.mktemp("postgres") / "postgres.log") as pg:
            yield pg
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_mlflow_server(postgres: Postgres, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgMlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-pg-server")
    artifacts = f"s3://{s3_server.bucket}/pg-artifacts"
    with servers.mlflow_server(postgres.uri, artifacts, s3_endpoint=s3_server.endpoint_url, env=s3_server.env,
                               log=root / "server.log", timeout=180) as srv:
        yield PgMlflowServer(srv.url, postgres, artifacts, root / "server.log")


@dataclass(frozen=True)
class PrefectServer:
    """``prefect server start`` on loopback: workers cannot use Prefect's temporary in-process server."""

    api_url: str
    home: Path
    log: Path


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    import sys

    home = tmp_path_factory.mktemp("prefect-server")
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": "",
           "PREFECT_SERVER_UI_ENABLED": "false"}

    def start(port: int) -> servers.Server:
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", servers.LOOPBACK, "--port", str(port)]
        return servers.spawn("Prefect server", argv, f"http://{servers.LOOPBACK}:{port}", "/api/health",
                             env=servers.child_env(env), log=home / "server.log", timeout=180)

    server = servers.on_free_port(start, None)
    try:
        yield PrefectServer(f"{server.url}/api", home, home / "server.log")
    finally:
        servers.stop(server)


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[str]:
    """Point MLflow clients (this process and its subprocesses) at ``uri``; restore the previous URI on exit."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(previous)  # None unsets it; the MonkeyPatch then restores the env var


@pytest.fixture
def tracking_uri(mlflow_server: MlflowServer) -> Iterator[str]:
    """This test talks to the shared server; the next one is back on whatever it had (usually local SQLite)."""
    with use_tracking_uri(mlflow_server.tracking_uri) as uri:
        yield uri
