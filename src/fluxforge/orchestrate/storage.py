"""The pipeline's DVC remote on S3 (or an S3-compatible store): configure it, push to it, pull from it.

Why: the data and models that ``dvc repro`` produces live only in one machine's ``.dvc/cache``
until they are pushed; a refresh that runs elsewhere (another worker, a fresh clone, CI) starts
from ``dvc pull``. Both transfers cross a network, so transient failures (a store restarting,
connections refused or reset, timeouts, 5xx answers) are retried with exponential backoff, and
a final failure becomes a ``StorageError`` that says in plain words which remote failed, after
how many tries, the last cause in one line and what to check, with secrets masked.

Credentials are never written anywhere by this module: DVC's S3 support (s3fs/botocore) reads
them at run time from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``) or an instance role. The remote's URL and endpoint are not secret and go to the
git-tracked ``.dvc/config``, so every clone finds the same remote.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fluxforge.errors import FluxForgeError
from fluxforge.orchestrate.retry import retrying
from fluxforge.secrets import redact

REMOTE_NAME = "storage"
ENDPOINT_ENV = ("FLUXFORGE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

log = logging.getLogger(__name__)

# Worth another try: the store or the network may be back in a moment. Matched against DVC's output.
_TRANSIENT = re.compile(
    r"could not connect to the endpoint|connection (?:was )?(?:refused|reset|aborted|closed)|connect timeout|"
    r"read timeout|timed out|ServerDisconnected|remote end closed|broken pipe|"
    r"\(5\d\d\)|status(?: code)?:? 5\d\d|InternalError|ServiceUnavailable|Service Unavailable|SlowDown|"
    r"Bad Gateway|Gateway Time-?out|RequestTimeout|Unable to acquire lock",
    re.IGNORECASE)
# Fails the same way on every try: retrying only delays the message a person must read.
_PERMANENT = re.compile(
    r"unable to locate credentials|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\(403\)|"
    r"NoSuchBucket|bucket .* does not exist|no remote provided|missing cache files|config file error",
    re.IGNORECASE)
_COUNTS = re.compile(r"(\d+) files? (pushed|fetched|added|modified|deleted)")


class StorageError(FluxForgeError):
    """A DVC remote that could not be configured, reached or used; the message says what to check."""

    def __init__(self, message: str, attempts: int = 0, transient: bool = False) -> None:
        super().__init__(message)
        self.attempts, self.transient = attempts, transient


@dataclass(frozen=True)
class Transfer:
    """What one ``push`` or ``pull`` did, as DVC reported it."""

    command: str  # "push" or "pull"
    remote: str  # the remote's URL
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"pushed": 43}; {"fetched": 43, "added": 9}; {} if up to date
    attempts: int = 1

    @property
    def files(self) -> int:
        """Files moved over the network (pushed or fetched); 0 when everything was already there."""
        return self.counts.get("pushed" if self.command == "push" else "fetched", 0)


def endpoint_from_env() -> str | None:
    """The S3 endpoint for a non-AWS store named by the environment, FluxForge's own variable first."""
    return next((os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)


def _dvc_config(root: Path | str):  # noqa: ANN202 - dvc.config.Config
    from dvc.config import Config

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        raise StorageError(f"{Path(root).resolve()} is not a DVC repository (no .dvc directory): run `dvc init` there first")
    return Config(dvc_dir=str(dvc_dir))


def configure_remote(root: Path | str, url: str, endpoint_url: str | None = None, name: str = REMOTE_NAME) -> str | None:
    """Make ``url`` (``s3://BUCKET/PREFIX``) the repo's default DVC remote; return the endpoint written, if any.

    The endpoint (for MinIO, moto or any S3-compatible store) comes from ``endpoint_url``, else
    from ``FLUXFORGE_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``; with none, the remote is AWS S3.
    DVC's config API writes the section in-process (no CLI start-up per key) and the remote's
    section is replaced whole, so keys left from an earlier setup (a secret someone put in
    ``.dvc/config`` included) do not survive. Credentials are refused here and never written,
    to ``.dvc/config`` or ``.dvc/config.local``: they stay in the environment.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"DVC remote URL {url!r} is not s3://BUCKET/PREFIX")
    endpoint = endpoint_url or endpoint_from_env()
    if endpoint:
        ep = urlsplit(endpoint)
        if ep.scheme not in {"http", "https"} or not ep.hostname:
            raise StorageError(f"S3 endpoint {redact(endpoint)!r} is not an http(s)://HOST[:PORT] URL")
        if ep.username or ep.password:
            raise StorageError(f"S3 endpoint {redact(endpoint)!r} carries credentials; pass them as AWS_ACCESS_KEY_ID / "
                               "AWS_SECRET_ACCESS_KEY in the environment instead, so they never reach .dvc/config")
    section = {"url": url.rstrip("/"), **({"endpointurl": endpoint} if endpoint else {})}
    with _dvc_config(root).edit("repo") as conf:
        conf["remote"][name] = section
        conf["core"]["remote"] = name
    return endpoint


def remote_url(root: Path | str = ".") -> str | None:
    """URL of the repo's default DVC remote as DVC will use it (all config levels merged); None if none is set."""
    return _default_remote(root)[1].get("url")


def _default_remote(root: Path | str) -> tuple[str | None, dict]:
    conf = _dvc_config(root).read()
    name = conf.get("core", {}).get("remote")
    return name, dict(conf.get("remote", {}).get(name, {})) if name else {}


def push(root: Path | str = ".", retries: int = 3, backoff: float = 2.0, jobs: int | None = None,
         targets: Sequence[str] = ()) -> Transfer:
    """``dvc push`` the workspace's cached outputs to the default remote, retrying transient failures.

    A failed try is followed by up to ``retries`` more, the n-th after ``backoff * 2**(n-1)``
    seconds (2, 4, 8 s by default: long enough for a store to restart, short next to a refresh).
    A rerun after a failure sends only what the remote still lacks: DVC asks which
    content-addressed objects exist before uploading. ``jobs`` caps parallel uploads (DVC's ``-j``).
    Outputs marked ``cache: false`` (metrics, plots, reports) are not in DVC's cache and do not travel.
    ``targets``: only these stages' outputs (default: everything ``dvc.lock`` names).
    """
    return _transfer("push", root, retries, backoff, jobs, list(targets))


def pull(root: Path | str = ".", retries: int = 3, backoff: float = 2.0, jobs: int | None = None,
         targets: Sequence[str] = (), inputs_of: str | None = None, allow_missing: bool = False) -> Transfer:
    """``dvc pull``: fetch the objects ``dvc.lock`` names from the default remote and check them out, with retries as ``push``.

    ``targets``: only these stages' outputs. ``inputs_of``: what that stage reads, i.e. the outputs of every stage
    upstream of it (``--with-deps``), its own outputs left out where the remote does not hold them yet
    (``--allow-missing``): what a machine needs before running one stage. ``allow_missing``: outputs that
    ``dvc.lock`` does not name yet (a pipeline never reproduced) or that the remote does not hold are left for the
    stages to make, instead of failing the pull (DVC's "Checkout failed for following targets").
    """
    extra = ["--with-deps", "--allow-missing", inputs_of] if inputs_of else [*(["--allow-missing"] if allow_missing else []), *targets]
    return _transfer("pull", root, retries, backoff, jobs, extra)


def _transfer(command: str, root: Path | str, retries: int, backoff: float, jobs: int | None, extra: Sequence[str] = ()) -> Transfer:
    """Run ``dvc <command>`` as a subprocess until it succeeds, fails for good, or runs out of tries.

    Why the CLI rather than ``dvc.repo.Repo(root).push()``: each try is a fresh process, so no
    s3fs/aiobotocore connection pool or fsspec instance cache from a failed try (module-global
    state in-process) leaks into the next, and DVC's repo lock dies with the process; the CLI
    also prints each file's transfer error, which the API only logs before raising
    "N files failed to upload". That cause is what the final error must show. Start-up costs
    about 2 s a try, small next to a transfer. Same pattern as ``flows/refresh.py``.
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    name, remote = _default_remote(root)
    url = remote.get("url")
    if not url:
        raise StorageError(f"dvc {command}: no default DVC remote in {Path(root).resolve()}; set one with "
                           "fluxforge.orchestrate.storage.configure_remote(root, 's3://BUCKET/PREFIX') (or `dvc remote add -d`)")
    where = url + (f" (endpoint {remote['endpointurl']})" if remote.get("endpointurl") else "")
    argv = [sys.executable, "-m", "dvc", command, *(["-j", str(jobs)] if jobs else []), *extra]
    env = {"DVC_NO_ANALYTICS": "1", **os.environ}
    tries = retries + 1
    for attempt in retrying(tries, backoff, lambda e: isinstance(e, StorageError) and e.transient, f"dvc {command} to {where}"):
        with attempt:
            n = attempt.retry_state.attempt_number
            proc = subprocess.run(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            output = redact(proc.stdout + "\n" + proc.stderr, os.environ)
            if proc.returncode == 0:
                return Transfer(command, url, {state: int(k) for k, state in _COUNTS.findall(output)}, n)
            transient = bool(_TRANSIENT.search(output)) and not _PERMANENT.search(output)
            if transient and n < tries:  # the retry log line says what happened; the next try may succeed
                raise StorageError(_cause(output), attempts=n, transient=True)
            count = f"{n} {'try' if n == 1 else 'tries'}"
            why = "" if transient else " (the error is not transient, so no more tries)"
            raise StorageError(redact(f"dvc {command} to remote '{name}' at {where} failed after {count}{why}: "
                                      f"{_cause(output)}. {_hint(output, command)}", os.environ), attempts=n)
    raise AssertionError("unreachable")


def _cause(output: str) -> str:
    """One line saying why DVC failed: the most telling ERROR line, stripped of DVC's prefixes."""
    errors = [line.strip()[len("ERROR:"):].strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    causes = [e.rsplit(" - ", 1)[-1] for e in errors]
    summary = next((c for c in causes if re.search(r"\d+ files? failed to", c)), None)
    if summary is None and (failed := sum(e.startswith("failed to transfer") for e in errors)):
        summary = f"{failed} file{'s' if failed > 1 else ''} failed to transfer"
    specific = next((c for c in causes if _PERMANENT.search(c) or _TRANSIENT.search(c)), None)
    if not causes:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        specific = lines[-1] if lines else "no output"
    cause = specific or causes[-1]
    if summary and summary != cause:
        cause = f"{summary}; {cause}"
    return cause if len(cause) <= 400 else cause[:399] + "…"


def _hint(output: str, command: str) -> str:
    """What a person should check, by the kind of failure."""
    if re.search(r"credentials|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\(403\)", output, re.I):
        return ("Check the AWS credentials in this environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE) and that they may read and write the bucket.")
    if re.search(r"NoSuchBucket|bucket .* does not exist", output, re.I):
        return "Check that the bucket exists (DVC does not create it) and that the remote URL names it."
    if re.search(r"missing cache files", output, re.I):
        return ("Some objects are neither in the local cache nor on the remote: push them from the machine that "
                "produced them, or rerun `dvc repro` there." if command == "push" else
                "The remote lacks objects this dvc.lock names: push them from the machine that produced them.")
    done = "reached the remote are not sent" if command == "push" else "were fetched are not fetched"
    return f"Check that the S3 endpoint is up and reachable from this machine, then rerun: objects that already {done} again."
