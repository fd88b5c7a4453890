"""A PostgreSQL server process for the shared MLflow backend store, from the distribution's own server binaries.

Why PostgreSQL: SQLite serialises writers and lives on one disk; a registry shared by many refreshes and
people needs a server. Why the distribution's binaries (Debian's ``postgresql`` package, ``apt-get install
postgresql``): they are maintained with security updates and are the same major version as the
``postgres:15`` image that ``infra/compose`` and ``infra/k8s`` run (``PG_MAJOR``); the Python wheels
that bundle a server are years behind or of unclear origin.

:func:`start_postgres` initialises a cluster in a folder (once), starts ``postgres`` on loopback with
password (SCRAM) authentication, and creates the database. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` account the package creates. The password reaches the server
only through a file removed after ``initdb`` and the client only through the URI (pass it in the
environment, never in argv).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fluxforge.track.servers import LOOPBACK, Server, ServerStartError, child_env, on_free_port, spawn, stop

PG_MAJOR = 15  # Debian 12's postgresql; infra/compose and infra/k8s pin the postgres:15 image to match
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"  # the account Debian's package creates; the server's user when we are root


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server and the one database (and owner) made for MLflow."""

    uri: str = field(repr=False)  # postgresql://USER:PASSWORD@127.0.0.1:PORT/DB
    data_dir: Path
    port: int
    database: str
    user: str
    server: Server = field(repr=False)


def binary(tool: str) -> Path:
    """``tool`` (initdb, postgres) from $PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin, else PATH."""
    dirs = [Path(os.environ["PG_BIN"])] if os.environ.get("PG_BIN") else []
    versions = sorted(DEBIAN_BINARIES.glob("*/bin"), key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)
    for d in [*dirs, *versions]:
        if (d / tool).is_file():
            return d / tool
    found = shutil.which(tool)
    if found:
        return Path(found)
    raise ServerStartError(f"PostgreSQL's {tool} was not found (looked in $PG_BIN, {DEBIAN_BINARIES}/*/bin and PATH): "
                           "install the server with `apt-get install -y postgresql` (`make test` does this), or set "
                           "PG_BIN to the folder holding initdb and postgres")


def _run_as() -> str | None:
    return SERVICE_USER if os.geteuid() == 0 else None


def _initdb(data_dir: Path, user: str, password: str, log: Path | None, user_os: str | None) -> None:
    import subprocess

    data_dir.mkdir(parents=True, exist_ok=True)
    pwfile = data_dir.parent / f".{data_dir.name}.pw"
    pwfile.write_text(password + "\n")
    try:
        pwfile.chmod(0o600)
        if user_os:
            shutil.chown(data_dir, user_os)
            shutil.chown(pwfile, user_os)
        data_dir.chmod(0o700)
        argv = [str(binary("initdb")), "-D", str(data_dir), "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "-E", "UTF8", "--locale=C", "--no-instructions"]
        done = subprocess.run(argv, capture_output=True, text=True, user=user_os)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode:
        raise ServerStartError(f"initdb {data_dir} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)


def _can_connect(uri: str) -> bool:
    import psycopg

    try:
        psycopg.connect(uri, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def _create_database(admin_uri: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_uri, autocommit=True) as con:
        if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def start_postgres(data_dir: Path | str, *, database: str = "mlflow", user: str = "mlflow", password: str | None = None,
                   port: int | None = None, log: Path | None = None, env: Mapping[str, str] | None = None,
                   timeout: float = 60.0) -> Postgres:
    """Start PostgreSQL on 127.0.0.1 with its data in ``data_dir`` (initialised on first use) and ``database`` in it.

    ``password`` is required for an existing cluster and generated for a new one. Stop it with ``stop(pg.server)``.
    """
    data_dir = Path(data_dir).resolve()
    user_os = _run_as()
    if not (data_dir / "PG_VERSION").exists():
        password = password or secrets.token_hex(16)
        _initdb(data_dir, user, password, log.with_suffix(".initdb.log") if log else None, user_os)
    elif password is None:
        raise ServerStartError(f"{data_dir} holds a PostgreSQL cluster: pass the password of its user {user}")

    def start(p: int) -> Server:
        admin = f"postgresql://{user}:{password}@{LOOPBACK}:{p}/postgres"
        argv = [str(binary("postgres")), "-D", str(data_dir), "-h", LOOPBACK, "-p", str(p), "-k", str(data_dir)]
        return spawn("PostgreSQL", argv, f"postgresql://{LOOPBACK}:{p}", "", env=child_env(env), log=log, timeout=timeout,
                     ready=lambda: _can_connect(admin), user=user_os)

    server = on_free_port(start, port)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        _create_database(f"postgresql://{user}:{password}@{LOOPBACK}:{port}/postgres", database)
    except BaseException:
        stop(server)
        raise
    return Postgres(f"postgresql://{user}:{password}@{LOOPBACK}:{port}/{database}", data_dir, port, database, user, server)


@contextmanager
def postgres_server(data_dir: Path | str, **kwargs) -> Iterator[Postgres]:  # noqa: ANN003 - as start_postgres
    """``start_postgres`` as a context manager: the server is stopped on exit, whatever happened."""
    pg = start_postgres(data_dir, **kwargs)
    try:
        yield pg
    finally:
        stop(pg.server)
