"""Run an S3 server (moto) and an MLflow tracking server with S3 artifacts as child processes.

Why: a shared tracking server that proxies artifacts to S3 is how FluxForge runs beyond one
machine, and tests should exercise that same path rather than a local ``sqlite:///`` store.
Each server runs in its own process group on a free loopback port, so stopping it also stops
the workers it forked (MLflow runs uvicorn underneath). Secrets travel only in the child's
environment: never in argv (``ps`` shows argv), never in files, and any log tail put into an
error message has them masked.

``python -m fluxforge.track.servers --help`` runs either server in the foreground.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fluxforge.errors import FluxForgeError
from fluxforge.secrets import redact

LOOPBACK = "127.0.0.1"


class ServerStartError(FluxForgeError):
    """A server that exited or never answered its health check; the message carries its log tail."""


@dataclass(frozen=True)
class Server:
    """A running child server. ``log`` is None when its output goes to our own stdout/stderr."""

    name: str
    url: str
    process: subprocess.Popen = field(repr=False)
    log: Path | None = None


@dataclass(frozen=True)
class S3Store:
    """An S3 endpoint with one bucket that exists."""

    endpoint_url: str
    bucket: str
    server: Server = field(repr=False)

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (another process may still take it before our child does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus ``extra``: the only way credentials reach a child server."""
    return {**os.environ, **(extra or {})}


def log_tail(log: Path | None, env: Mapping[str, str] | None = None, lines: int = 40) -> str:
    """The last lines of a server's log, masked, for an error message that must say why it failed."""
    if log is None:
        return "(its output went to this terminal; see above)"
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError as err:
        return f"(log {log} unreadable: {err})"
    return redact("\n".join(tail), env) or "(log is empty)"


def stop(server: Server, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left of it after ``grace`` seconds."""
    proc = server.process
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # group id == leader pid (start_new_session=True); also reaches its workers
        except ProcessLookupError:
            return  # nothing of the group is left
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def _healthy(url: str, expect: bytes | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
            return resp.status == 200 and (expect is None or expect in resp.read())
    except (urllib.error.URLError, OSError):
        return False


def spawn(name: str, argv: list[str], url: str, health_path: str, *, env: Mapping[str, str],
          log: Path | None, timeout: float, expect: bytes | None = None, ready: Callable[[], bool] | None = None,
          user: str | None = None) -> Server:
    """Start ``argv`` in a new process group and wait until ``url + health_path`` answers 200 (or ``ready()`` is true).

    ``user`` runs the child as that account (PostgreSQL refuses to run as root). On failure the process
    group is stopped and the error says why, with the (masked) log tail.
    """
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    try:
        proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, user=user,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True)
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor
    server = Server(name, url, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(f"{name} exited with code {proc.returncode} before answering {url}{health_path}; "
                                       f"last lines of its log:\n{log_tail(log, env)}")
            if ready() if ready is not None else _healthy(url + health_path, expect):
                return server
            time.sleep(0.25)
        raise ServerStartError(f"{name} did not answer {url}{health_path} within {timeout:.0f} s (raise the timeout "
                               f"on a loaded machine); last lines of its log:\n{log_tail(log, env)}")
    except BaseException:  # Ctrl-C or SIGTERM while waiting included: never leave the child behind
        stop(server)
        raise


def on_free_port(start: Callable[[int], Server], port: int | None, attempts: int = 3) -> Server:
    """``start(port)``; with no port given, retry on a fresh free port if another process bound ours first."""
    if port is not None:
        return start(port)
    for left in range(attempts - 1, -1, -1):
        try:
            return start(free_port())
        except ServerStartError as err:
            if left == 0 or "address already in use" not in str(err).lower():
                raise
    raise AssertionError("unreachable")


def create_bucket(endpoint_url: str, bucket: str, env: Mapping[str, str]) -> None:
    """Create ``bucket`` (kept if it exists) with credentials and region read from ``env``."""
    import boto3
    from botocore.exceptions import ClientError, NoCredentialsError

    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    s3 = boto3.session.Session(aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                               aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                               region_name=region).client("s3", endpoint_url=endpoint_url)
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=bucket, **extra)
    except NoCredentialsError as err:
        raise ServerStartError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "(moto accepts any values, e.g. testing)") from err
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


def start_s3(bucket: str, *, host: str = LOOPBACK, port: int | None = None, log: Path | None = None,
             env: Mapping[str, str] | None = None, timeout: float = 30.0) -> S3Store:
    """Start an in-memory moto S3 server and create ``bucket`` in it. Stop it with ``stop(store.server)``."""
    full = child_env(env)

    def start(p: int) -> Server:
        url = f"http://{_reachable(host)}:{p}"
        argv = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(p)]
        return spawn("moto S3 server", argv, url, "/moto-api/data.json", env=full, log=log, timeout=timeout)

    server = on_free_port(start, port)
    try:
        create_bucket(server.url, bucket, full)
    except BaseException:
        stop(server)
        raise
    return S3Store(server.url, bucket, server)


def start_mlflow(backend_uri: str, artifacts: str, *, s3_endpoint: str | None = None, host: str = LOOPBACK,
                 port: int | None = None, workers: int = 1, jobs: bool = False, allowed_hosts: str | None = None,
                 log: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 120.0) -> Server:
    """Start ``mlflow server`` that keeps metadata in ``backend_uri`` and proxies artifacts to ``artifacts``.

    Clients then need only the tracking URI (``server.url``): artifacts are served as
    ``mlflow-artifacts:/``, so S3 credentials and ``s3_endpoint`` stay with the server. The
    backend URI goes through the environment, since a Postgres one may carry a password.
    ``jobs=False`` keeps MLflow's GenAI job runner (eight huey worker processes) off: FluxForge
    submits no server-side jobs, and on two cores those workers about double the start time (measured 22 s vs 10 s).
    ``allowed_hosts`` is MLflow's Host-header allow-list; its default admits only localhost and
    private IPs, so a server reached through a DNS name needs that name here.
    """
    extra = {"MLFLOW_BACKEND_STORE_URI": backend_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(jobs).lower(),
             **({"MLFLOW_S3_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {})}
    full = child_env({**(env or {}), **extra})
    full.pop("MLFLOW_TRACKING_URI", None)  # the server is the store; a client URI would only confuse it

    def start(p: int) -> Server:
        argv = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", artifacts,
                "--host", host, "--port", str(p), "--workers", str(workers)]
        argv += ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
        return spawn("MLflow tracking server", argv, f"http://{_reachable(host)}:{p}", "/health",
                     env=full, log=log, timeout=timeout, expect=b"OK")

    return on_free_port(start, port)


@contextmanager
def s3_server(bucket: str, **kwargs) -> Iterator[S3Store]:  # noqa: ANN003 - same keywords as start_s3
    """``start_s3`` as a context manager: the server's process group is stopped on exit, whatever happened."""
    store = start_s3(bucket, **kwargs)
    try:
        yield store
    finally:
        stop(store.server)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: str, **kwargs) -> Iterator[Server]:  # noqa: ANN003 - as start_mlflow
    """``start_mlflow`` as a context manager: the server's process group is stopped on exit, whatever happened."""
    server = start_mlflow(backend_uri, artifacts, **kwargs)
    try:
        yield server
    finally:
        stop(server)


def _reachable(host: str) -> str:
    """The address a local client dials for a server bound to ``host`` (0.0.0.0 is not dialable)."""
    return LOOPBACK if host in {"0.0.0.0", "", "::"} else host


MLFLOW_HELP = """\
MLflow tracking server: metadata in --backend (a SQLite or Postgres URI; default
$MLFLOW_BACKEND_STORE_URI), artifacts proxied to --artifacts (s3://BUCKET/PREFIX). The server
needs S3 credentials in its own environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, or a cloud role) and, for a non-AWS store such as moto or MinIO, the
endpoint in --s3-endpoint or $MLFLOW_S3_ENDPOINT_URL. A Postgres backend needs psycopg 3 installed (psycopg[binary], in the dev extra).
Clients need only MLFLOW_TRACKING_URI=http://HOST:PORT (or tracking.tracking_uri in params.yaml)."""
S3_HELP = """\
In-memory moto S3 server with --bucket created, for trials and CI. Needs AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY set (moto accepts any values, e.g. testing). Its data is lost when it stops."""
HELP = f"""\
Run a server in the foreground until Ctrl-C or SIGTERM, which also stop its worker processes.

mlflow: {MLFLOW_HELP}

s3: {S3_HELP}

Example, one command per terminal:
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
  python -m fluxforge.track.servers s3 --bucket mlflow --port 9000
  python -m fluxforge.track.servers mlflow --backend sqlite:///$PWD/mlflow-server.db \\
      --artifacts s3://mlflow/artifacts --s3-endpoint http://127.0.0.1:9000 --port 5000
  export MLFLOW_TRACKING_URI=http://127.0.0.1:5000     # then run stages as usual
"""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="python -m fluxforge.track.servers", description=HELP, formatter_class=raw)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mlflow", help="MLflow tracking server with S3 artifacts", description=MLFLOW_HELP, formatter_class=raw)
    m.add_argument("--backend", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"),
                   help="backend store URI: sqlite:////abs/path.db or postgresql://USER@HOST/DB "
                        "(put a password in $MLFLOW_BACKEND_STORE_URI, not here: argv is public)")
    m.add_argument("--artifacts", required=True, help="artifact destination, e.g. s3://BUCKET/PREFIX")
    m.add_argument("--s3-endpoint", default=None, help="S3 endpoint for a non-AWS store (default $MLFLOW_S3_ENDPOINT_URL)")
    m.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    m.add_argument("--allowed-hosts", default=None, help="Host headers to accept, e.g. mlflow.example.com "
                   "(default: localhost and private IPs only)")
    m.add_argument("--jobs", action="store_true", help="also run MLflow's GenAI job runner (off by default: unused here)")
    m.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /health (default 120)")
    s = sub.add_parser("s3", help="in-memory moto S3 server with one bucket", description=S3_HELP, formatter_class=raw)
    s.add_argument("--bucket", required=True, help="bucket to create once the server answers")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    for p, port in ((m, 5000), (s, 9000)):
        p.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
        p.add_argument("--port", type=int, default=port, help=f"port (default {port}; 0 picks a free one)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    port = args.port or None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below on `kill`
    try:
        if args.command == "s3":
            store = start_s3(args.bucket, host=args.host, port=port, timeout=args.timeout)
            server = store.server
            print(f"S3 (moto) at {store.endpoint_url}, bucket {store.uri()}: export MLFLOW_S3_ENDPOINT_URL={store.endpoint_url}",
                  flush=True)
        else:
            if not args.backend:
                raise ServerStartError("no backend store: pass --backend or set MLFLOW_BACKEND_STORE_URI")
            server = start_mlflow(args.backend, args.artifacts, s3_endpoint=args.s3_endpoint, host=args.host,
                                  port=port, workers=args.workers, jobs=args.jobs,
                                  allowed_hosts=args.allowed_hosts, timeout=args.timeout)
            print(f"MLflow tracking server at {server.url} (backend {redact(args.backend)}, artifacts {args.artifacts}): "
                  f"export MLFLOW_TRACKING_URI={server.url}", flush=True)
    except ServerStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during start: spawn has already stopped the child
        return 130
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        stop(server)


if __name__ == "__main__":
    sys.exit(main())
