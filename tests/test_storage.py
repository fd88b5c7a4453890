"""DVC's S3 remote through a real moto S3 server process: configure, push, pull, a store that dies mid-push.

The pipeline's own outputs travel: each slow test works on a copy of the session's reproduced
tiny repo (``tiny_repo`` in conftest), so no test reruns the DAG. Credentials live only in the
environment; the secret is random per session, so finding it anywhere is a leak.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from fluxforge.orchestrate import retry, storage
from fluxforge.orchestrate.storage import StorageError
from fluxforge.track import servers
from pipeline_repo import copy_repo, run

FIRST_OBJECT = re.compile(r'"PUT /[^ ]+/files/md5/[^ ]+ HTTP/[0-9.]+" 200')  # the server log's line for a stored object


@pytest.fixture(scope="module")
def aws_env(s3_server) -> Iterator[dict[str, str]]:  # noqa: ANN001
    """The session server's credentials in this process's environment, where DVC (s3fs/botocore) reads them."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", *storage.ENDPOINT_ENV):
            mp.delenv(name, raising=False)
        for name, value in s3_server.env.items():
            mp.setenv(name, value)
        yield s3_server.env


@pytest.fixture
def repo(tiny_repo, tmp_path: Path) -> Path:
    """A copy of the reproduced tiny repo with its dvc.lock committed, as a refresh leaves it (a few MB)."""
    copy = tmp_path / "repo"
    copy_repo(tiny_repo[0], copy)
    # other tests change the shared repo (a failed `dvc repro` deletes a stage's outputs before failing):
    # put back every output dvc.lock records, from the cache, so the workspace is what the lock says
    run(["dvc", "checkout", "--force"], copy)
    run(["git", "add", "-A"], copy)
    run(["git", "commit", "-qm", "pipeline outputs", "--allow-empty"], copy)
    return copy


def cached_outs(root: Path) -> list:
    """DVC's outputs that go through its cache (``cache: false`` metrics, plots and reports excluded)."""
    from dvc.repo import Repo

    with Repo(str(root)) as r:
        return [out for out in r.index.outs if out.use_cache]


def pushed_names(root: Path) -> set[str]:
    """Cache objects ``dvc push`` must send: every cached output's hash and, for directories, their files'."""
    names = set()
    for out in cached_outs(root):
        names.add(out.hash_info.value)
        if out.hash_info.isdir:
            names.update(e["md5"] for e in json.loads(cache_file(root, out.hash_info.value).read_text()))
    return names


def cache_file(root: Path, name: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / name[:2] / name[2:]


def cache_names(root: Path) -> set[str]:
    base = root / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name for p in base.glob("*/*") if p.is_file()}


def bucket_names(s3, bucket: str, prefix: str) -> list[str]:
    """Object names under ``prefix/files/md5/`` as DVC's cache names them (``ab/cdef`` -> ``abcdef``), duplicates kept."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert all(k.startswith(f"{prefix}/files/md5/") for k in keys), keys  # nothing outside DVC's layout
    return [k.removeprefix(f"{prefix}/files/md5/").replace("/", "") for k in keys]


def assert_objects_intact(s3, bucket: str, prefix: str, names: set[str]) -> None:
    """Each object's bytes hash to its name (``.dir`` manifests included): what landed is what was cached."""
    for name in names:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/files/md5/{name[:2]}/{name[2:]}")["Body"].read()
        assert hashlib.md5(body).hexdigest() == name.removesuffix(".dir"), name


def file_hashes(root: Path, outs: list) -> dict[str, str]:
    """{relative path: md5} of every file under the given outputs in ``root``'s workspace."""
    found = {}
    for out in outs:
        top = root / out.def_path
        for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            found[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def files_holding(secret: str, *paths: Path) -> list[str]:
    """Those of ``paths`` (files, or folders searched whole) that contain ``secret``."""
    files = [f for p in paths if p.exists() for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return [str(f) for f in files if secret.encode() in f.read_bytes()]


def test_configure_remote_writes_url_and_endpoint_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No server needed: what lands in .dvc/config, where the endpoint comes from, what is refused."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    for name in storage.ENDPOINT_ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / ".dvc" / "config"
    with pytest.raises(StorageError, match="no default DVC remote"):
        storage.push(tmp_path)
    assert storage.remote_url(tmp_path) is None

    # a stale secret in the remote's section does not survive: the section is replaced whole
    config.write_text('[core]\n    remote = storage\n[\'remote "storage"\']\n    url = s3://old/x\n'
                      '    secret_access_key = planted-secret-123\n')
    assert storage.configure_remote(tmp_path, "s3://dvc-store/fluxforge/") is None
    text = config.read_text()
    assert "url = s3://dvc-store/fluxforge\n" in text and "endpointurl" not in text and "planted-secret-123" not in text
    assert storage.remote_url(tmp_path) == "s3://dvc-store/fluxforge"

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", "http://127.0.0.1:9000")  # FluxForge's own variable wins
    assert storage.configure_remote(tmp_path, "s3://dvc-store/fluxforge") == "http://127.0.0.1:9000"
    assert "endpointurl = http://127.0.0.1:9000" in config.read_text()
    assert storage.configure_remote(tmp_path, "s3://dvc-store/fluxforge", "https://s3.example.internal") == "https://s3.example.internal"

    before = config.read_text()
    with pytest.raises(StorageError, match="carries credentials") as err:
        storage.configure_remote(tmp_path, "s3://dvc-store/x", "http://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000")
    assert "wJalrXUtnFEMI" not in str(err.value)
    with pytest.raises(StorageError, match="not s3://BUCKET/PREFIX"):
        storage.configure_remote(tmp_path, "gs://dvc-store/x")
    assert config.read_text() == before and not (tmp_path / ".dvc" / "config.local").exists()


def test_retry_policy_on_dvc_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    """Which failures are retried, the waits, and what the final message keeps; canned DVC output, no server."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    storage.configure_remote(tmp_path, "s3://dvc-store/x", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-value")
    outputs: list[tuple[int, str]] = []
    slept: list[float] = []

    def dvc(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202 - subprocess.run's shape
        rc, text = outputs.pop(0)
        return subprocess.CompletedProcess(argv, rc, "" if rc else text, text if rc else "")

    monkeypatch.setattr(storage, "subprocess", SimpleNamespace(run=dvc, DEVNULL=subprocess.DEVNULL))
    monkeypatch.setattr(retry.time, "sleep", slept.append)

    outputs[:] = [(1, "ERROR: failed to push data to the cloud - An error occurred (SlowDown) when calling the PutObject "
                      "operation (reached max retries: 4): Please reduce your request rate."), (0, "3 files pushed")]
    assert storage.push(tmp_path, backoff=0.5) == storage.Transfer("push", "s3://dvc-store/x", {"pushed": 3}, 2)
    assert slept == [0.5] and "try 1 of 4" in caplog.text

    lock = "ERROR: Unable to acquire lock. Most likely another DVC process is running or was terminated abruptly."
    outputs[:], slept[:] = [(1, lock)] * 3, []
    with pytest.raises(StorageError, match="failed after 3 tries: Unable to acquire lock") as err:
        storage.pull(tmp_path, retries=2, backoff=0.5)
    assert slept == [0.5, 1.0] and err.value.attempts == 3 and "were fetched are not fetched again" in str(err.value)

    permanent = {
        "ERROR: unexpected error - Unable to locate credentials": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "ERROR: unexpected error - An error occurred (InvalidAccessKeyId) when calling the PutObject operation: "
        "key planted-secret-value is unknown": "may read and write the bucket",
        "Traceback (most recent call last):\n  File \"dvc/main.py\", line 1, in main\nKeyError: 'remote'": "KeyError: 'remote'",
    }
    for text, expected in permanent.items():
        outputs[:], slept[:] = [(1, text)], []
        with pytest.raises(StorageError, match="after 1 try") as err:
            storage.push(tmp_path)
        message = str(err.value)
        assert expected in message and not slept and err.value.attempts == 1
        assert "planted-secret-value" not in message and "Traceback" not in message and "\n" not in message


@pytest.mark.slow
def test_push_then_pull_in_a_fresh_clone_restores_the_pipeline_outputs(repo, s3_server, aws_env, tmp_path):
    """The bucket ends with exactly the cache objects the outputs use, intact; a git clone plus pull rebuilds them."""
    prefix = "dvc-roundtrip"
    url = f"s3://{s3_server.bucket}/{prefix}"
    storage.configure_remote(repo, url, s3_server.endpoint_url)
    run(["git", "commit", "-qam", "DVC remote"], repo)  # the remote travels with the code; its credentials do not

    expected = pushed_names(repo)
    assert expected and expected <= cache_names(repo)
    pushed = storage.push(repo)
    assert (pushed.command, pushed.remote, pushed.files, pushed.attempts) == ("push", url, len(expected), 1)

    s3 = s3_server.client()
    names = bucket_names(s3, s3_server.bucket, prefix)
    assert len(names) == len(set(names)) == len(expected) and set(names) == expected
    assert_objects_intact(s3, s3_server.bucket, prefix, expected)
    assert storage.push(repo).counts == {}  # "Everything is up to date": nothing sent twice

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert storage.remote_url(clone) == url and not (clone / ".dvc" / "cache").exists()
    pulled = storage.pull(clone)
    assert pulled.files == len(expected) and pulled.attempts == 1

    outs = cached_outs(repo)
    assert file_hashes(clone, outs) == file_hashes(repo, outs)
    # `dvc status` in the clone: every cached output matches dvc.lock; what it still reports is only the
    # `cache: false` metrics/plots/reports, which neither git (.gitignore) nor the remote carries
    status = json.loads(run(["dvc", "status", "--json"], clone).stdout)
    cached = {out.def_path for out in outs}
    changed = {path for entries in status.values() for entry in entries if isinstance(entry, dict)
               for kind in ("changed outs", "changed deps") for path in entry.get(kind, {})}
    assert not changed & cached, status


@pytest.mark.slow
def test_push_survives_a_store_that_dies_mid_push(repo, aws_env, tmp_path, monkeypatch, caplog):
    """A store stopped after its first objects landed: push retries, then fails readably; after a restart it completes.

    Restart behaviour: moto keeps objects in memory only, so a plain restart comes back empty.
    Its request recorder (MOTO_ENABLE_RECORDING, a JSON-lines file written before each request
    is handled) is replayed into the restarted server, which thus holds what the first server
    received, as a real S3 would after an outage. The rerun must then send only the missing
    objects, and the bucket must end with every cache object exactly once.
    Determinism: ``jobs=1`` uploads one object at a time (~20 ms each here) while a thread
    polling the server log every 5 ms stops the server after the first object; and
    AWS_MAX_ATTEMPTS=1 turns off botocore's own per-request retries (4 more, with backoff),
    which would otherwise stretch each failed try to tens of seconds; DVC's retries then are ours.
    """
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket, prefix = "fluxforge-dvc-faults", "dvc"
    log, recording = tmp_path / "moto.log", tmp_path / "moto-requests.jsonl"
    env = {**aws_env, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)}
    store = servers.start_s3(bucket, log=log, env=env)
    port = int(store.endpoint_url.rsplit(":", 1)[1])
    url = f"s3://{bucket}/{prefix}"
    storage.configure_remote(repo, url, store.endpoint_url)
    expected = pushed_names(repo)

    stopped = threading.Event()

    def stop_after_first_object() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not FIRST_OBJECT.search(log.read_text(errors="replace")):
            time.sleep(0.005)
        servers.stop(store.server)
        stopped.set()

    killer = threading.Thread(target=stop_after_first_object, daemon=True)
    killer.start()
    restarted = None
    try:
        with caplog.at_level(logging.WARNING, logger="fluxforge.orchestrate.retry"), pytest.raises(StorageError) as err:
            storage.push(repo, retries=2, backoff=0.1, jobs=1)
        killer.join(timeout=10)
        assert stopped.is_set()
        message = str(err.value)
        assert err.value.attempts == 3 and "failed after 3 tries" in message
        assert f"remote 'storage' at {url} (endpoint {store.endpoint_url})" in message
        assert "Could not connect to the endpoint URL" in message and "Check that the S3 endpoint is up" in message
        assert aws_env["AWS_SECRET_ACCESS_KEY"] not in message and "Traceback" not in message and "\n" not in message
        retried = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(retried) == 2 and "try 1 of 3" in retried[0] and "try 2 of 3" in retried[1]

        restarted = servers.start_s3(bucket, port=port, log=log, env=env)  # same port: .dvc/config names it
        _replay(restarted.endpoint_url, recording)
        s3 = _client(restarted.endpoint_url, aws_env)
        landed = set(bucket_names(s3, bucket, prefix))
        assert landed and landed < expected, f"{len(landed)} of {len(expected)} objects landed before the stop"

        again = storage.push(repo, retries=2, backoff=0.1)
        assert again.attempts == 1 and again.files == len(expected - landed)
        names = bucket_names(s3, bucket, prefix)
        assert len(names) == len(set(names)) and set(names) == expected
        assert_objects_intact(s3, bucket, prefix, expected)
    finally:
        killer.join(timeout=10)
        servers.stop(store.server)
        if restarted is not None:
            servers.stop(restarted.server)


@pytest.mark.slow
def test_credentials_stay_out_of_the_repo(repo, s3_server, aws_env, monkeypatch):
    """Endpoint from the environment; after a real push, no file DVC keeps for the repo holds the secret."""
    secret = aws_env["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    assert storage.configure_remote(repo, f"s3://{s3_server.bucket}/dvc-secrets") == s3_server.endpoint_url
    assert storage.push(repo).files > 0
    dvc = repo / ".dvc"
    assert not files_holding(secret, dvc / "config", dvc / "config.local", dvc / "tmp", repo / "dvc.lock", repo / "dvc.yaml")
    assert "endpointurl = " + s3_server.endpoint_url in (dvc / "config").read_text()

    # a permanent failure (no such bucket) is not retried, and says what to check
    storage.configure_remote(repo, "s3://fluxforge-no-such-bucket/dvc", s3_server.endpoint_url)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        storage.push(repo, retries=3, backoff=5)
    assert err.value.attempts == 1 and time.monotonic() - start < 60
    assert "s3://fluxforge-no-such-bucket/dvc" in str(err.value) and "bucket exists" in str(err.value)
    assert secret not in str(err.value)


def _client(endpoint_url: str, env: dict[str, str]):  # noqa: ANN202 - a boto3 S3 client
    import boto3

    return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                 region_name=env["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=endpoint_url)


def _replay(endpoint_url: str, recording: Path) -> None:
    """Replay the first server's recorded requests into the restarted one (a line cut by the stop is dropped)."""
    lines = [line for line in recording.read_text().splitlines() if _complete(line)]
    recording.write_text("".join(line + "\n" for line in lines))
    req = urllib.request.Request(f"{endpoint_url}/moto-api/recorder/replay-recording", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - our own loopback server
        assert resp.status == 200


def _complete(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_a_pipeline_never_reproduced_pulls_only_with_allow_missing(s3_server, aws_env, tmp_path):
    """A refresh's first pull (no dvc.lock yet, an empty remote) must leave the outputs to the stages: plain `dvc pull`
    fails there with "Checkout failed for following targets" (what broke the first GPU hand-off refresh)."""
    from pipeline_repo import make_repo

    repo = make_repo(tmp_path / "new")
    storage.configure_remote(repo, f"s3://{s3_server.bucket}/never-reproduced", s3_server.endpoint_url)
    with pytest.raises(StorageError, match="Checkout failed"):
        storage.pull(repo, retries=0)
    pulled = storage.pull(repo, retries=0, allow_missing=True)
    assert pulled.attempts == 1 and pulled.files == 0 and not (repo / "data" / "world").exists()
