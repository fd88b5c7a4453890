"""Ingest from an S3 prefix through a real S3-compatible server process (moto): pages, staging, retries, errors."""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fluxforge.config import Source
from fluxforge.data.sources import read_source, source_files
from fluxforge.errors import DataError

pytestmark = pytest.mark.slow  # shares the session's S3 server process


@pytest.fixture
def s3_env(s3_server, monkeypatch, in_tmp):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url), s3_server.bucket, in_tmp


def _doc(i: int) -> str:
    return json.dumps({"text": f"Document number {i} about Zorvex Gateway and its vendor.", "url": f"https://n.example/{i}",
                       "timestamp": f"2024-01-{i % 28 + 1:02d}T00:00:00Z", "domain": "cyber"})


def test_every_page_of_a_prefix_is_ingested_and_bad_lines_name_the_object(s3_env, monkeypatch):
    import fluxforge.data.s3 as s3

    client, bucket, tmp = s3_env
    staging = tmp / "data" / ".s3-staging" / "feed"
    for f in range(5):  # five objects, listed two per page below
        body = "\n".join(_doc(10 * f + i) for i in range(3)) + ("\n{not json" if f == 3 else "")
        client.put_object(Bucket=bucket, Key=f"landing/2024/part-{f}.jsonl", Body=body.encode())
    client.put_object(Bucket=bucket, Key="landing/2024/README.txt", Body=b"not a source file")
    real = s3.stage_prefix
    monkeypatch.setattr(s3, "stage_prefix", lambda url, dest, suffixes: real(url, dest, suffixes, page_size=2))
    src = Source(name="feed", format="jsonl", path=f"s3://{bucket}/landing/2024/", domain="cyber")
    kept, rejected, n_read = read_source(src)
    assert (len(kept), len(rejected), n_read) == (15, 1, 16)
    assert rejected.iloc[0]["reason"] == "invalid_json"
    assert json.loads(rejected.iloc[0]["meta"])["origin"] == f"s3://{bucket}/landing/2024/part-3.jsonl:4"
    # a rerun downloads nothing that has not changed; a changed object is fetched again
    staged = sorted((p.stat().st_mtime_ns, p.name) for p in staging.rglob("*.jsonl"))
    client.put_object(Bucket=bucket, Key="landing/2024/part-0.jsonl", Body=_doc(99).encode())
    kept2, _, n2 = read_source(src)
    again = sorted((p.stat().st_mtime_ns, p.name) for p in staging.rglob("*.jsonl"))
    assert n2 == 14 and [a for a in again if a[1] != "part-0.jsonl"] == [s for s in staged if s[1] != "part-0.jsonl"]


def test_unreachable_store_or_missing_bucket_is_one_clear_error(s3_env, monkeypatch):
    _, bucket, _ = s3_env
    with pytest.raises(DataError, match=r"cannot read s3://no-such-bucket/x.*Check the bucket"):
        read_source(Source(name="feed", format="jsonl", path="s3://no-such-bucket/x/"))
    monkeypatch.setenv("FLUXFORGE_S3_MAX_ATTEMPTS", "2")  # the message is the point here, not the backoff
    monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError, match=r"cannot read s3://.* at http://127.0.0.1:9"):
        read_source(Source(name="feed", format="jsonl", path=f"s3://{bucket}/landing/"))


def test_keys_that_would_leave_the_staging_folder_are_rejected_by_name_and_counted(s3_env):
    """Whoever can write to the bucket chooses the keys; a key is staged as <staging>/<key>, so '..' or a
    leading '/' would write anywhere on this machine. Such objects are never downloaded, only rejected."""
    from fluxforge.data.ledger import Ledger

    client, _, tmp = s3_env
    bucket = "hostile-keys"
    client.create_bucket(Bucket=bucket)
    # each lands inside this test's folder if staged naively, so a broken guard shows up below and harms nothing
    hostile = ["../escaped.jsonl", "feed/../../../escaped-2.jsonl", f"{tmp.resolve()}/absolute.jsonl",
               "feed/a/../../../../escaped-3.jsonl"]
    for key in ["feed/ok.jsonl", *hostile]:
        client.put_object(Bucket=bucket, Key=key, Body=_doc(len(key)).encode())
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(hostile) <= listed, f"the store normalised a key: {listed}"  # else the test would prove nothing
    src = Source(name="feed", format="jsonl", path=f"s3://{bucket}/", domain="cyber")
    kept, rejected, n_read = read_source(src)
    ledger = Ledger("ingest")
    ledger.add(kept, rejected, n_read)
    ledger.check()
    assert (len(kept), n_read) == (1, 5) and set(rejected["reason"]) == {"unsafe_key"}
    assert ledger.to_dict()["rejected_by_reason"] == {"unsafe_key": 4}
    metas = [json.loads(m) for m in rejected["meta"]]
    assert sorted(m["origin"] for m in metas) == sorted(f"s3://{bucket}/{k}" for k in hostile)
    for meta in metas:
        assert meta["error"].startswith(meta["origin"]) and ("'..'" in meta["error"] or "absolute" in meta["error"])
    written = {p.relative_to(tmp).as_posix() for p in tmp.rglob("*.jsonl")}
    assert written == {"data/.s3-staging/feed/feed/ok.jsonl"}, written


def _parquet(rows: range) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"body": [f"Report {i} on the Zorvex Gateway." for i in rows],
                             "link": [f"https://n.example/{i}" for i in rows]}), buf)
    return buf.getvalue()


def test_a_parquet_prefix_stages_only_parquet_objects(s3_env):
    client, bucket, _ = s3_env
    client.put_object(Bucket=bucket, Key="tables/p-0.parquet", Body=_parquet(range(3)))
    client.put_object(Bucket=bucket, Key="tables/deeper/p-1.parquet", Body=_parquet(range(3, 5)))
    client.put_object(Bucket=bucket, Key="tables/p-2.jsonl", Body=_doc(9).encode())  # another format: not this source's
    src = Source(name="tables", format="parquet", path=f"s3://{bucket}/tables/", text_field="body", url_field="link",
                 timestamp_field=None, default_timestamp="2024-03-01", domain="cyber")
    kept, rejected, n_read = read_source(src)
    assert (len(kept), len(rejected), n_read) == (5, 0, 5)
    origins = [json.loads(m)["origin"] for m in kept["meta"]]
    assert sorted(origins) == sorted([f"s3://{bucket}/tables/deeper/p-1.parquet:row {i}" for i in (1, 2)]
                                     + [f"s3://{bucket}/tables/p-0.parquet:row {i}" for i in (1, 2, 3)])
    assert sorted(kept["url"]) == [f"https://n.example/{i}" for i in range(5)]
    one = [f for f in source_files(src) if f.name == "p-1.parquet"]  # a shard: one staged object, still named by its URL
    part, _, n_part = read_source(src, files=one)
    assert n_part == 2 and {json.loads(m)["origin"].rsplit(":", 1)[0] for m in part["meta"]} == {f"s3://{bucket}/tables/deeper/p-1.parquet"}


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the S3 server, but answers the first ``fail`` GetObject requests with HTTP 503 SlowDown."""

    upstream: str
    fail: int
    seen: list[tuple[str, str, int]]
    lock = threading.Lock()

    def _forward(self) -> None:
        key_request = self.command == "GET" and urlsplit(self.path).path.strip("/").count("/") >= 1  # /bucket/key
        with self.lock:
            refuse = key_request and self.fail > 0
            if refuse:
                type(self).fail -= 1
        if refuse:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            status, headers = 503, [("Content-Type", "application/xml")]
        else:
            length = int(self.headers.get("Content-Length") or 0)
            conn = http.client.HTTPConnection(urlsplit(self.upstream).netloc, timeout=30)
            conn.request(self.command, self.path, body=self.rfile.read(length) if length else None,
                         headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
            resp = conn.getresponse()
            body, status = resp.read(), resp.status
            drop = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in drop]
            conn.close()
        with self.lock:
            self.seen.append((self.command, self.path, status))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
        pass


@contextmanager
def _flaky_proxy(upstream: str, fail: int) -> Iterator[type[_FlakyProxy]]:
    handler = type("Proxy", (_FlakyProxy,), {"upstream": upstream, "fail": fail, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        handler.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_503_is_retried_by_botocore_and_exhausted_retries_are_one_clear_error(s3_env, monkeypatch):
    import fluxforge.data.s3 as s3

    client, bucket, _ = s3_env
    client.put_object(Bucket=bucket, Key="flaky/part-0.jsonl", Body="\n".join(_doc(i) for i in range(4)).encode())
    src = Source(name="flaky", format="jsonl", path=f"s3://{bucket}/flaky/", domain="cyber")
    assert s3.client().meta.config.retries == {"total_max_attempts": 5, "mode": "standard"}  # botocore's backoff, not ours
    with _flaky_proxy(s3_env[0].meta.endpoint_url, fail=2) as proxy:
        monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", proxy.url)
        kept, rejected, n_read = read_source(src)
    assert (len(kept), len(rejected), n_read) == (4, 0, 4)
    gets = [status for method, path, status in proxy.seen if method == "GET" and "part-0.jsonl" in path]
    assert gets == [503, 503, 200]  # two refusals, then the retry that got the object

    monkeypatch.setenv("FLUXFORGE_S3_MAX_ATTEMPTS", "3")
    with _flaky_proxy(s3_env[0].meta.endpoint_url, fail=10**6) as proxy:
        monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(DataError, match=rf"cannot read s3://{bucket}/flaky/ at {proxy.url}: .*SlowDown.*reached max retries: 2.*Check the bucket"):
            read_source(Source(name="flaky2", format="jsonl", path=f"s3://{bucket}/flaky/", domain="cyber"))
    gets = [status for method, path, status in proxy.seen if method == "GET" and "part-0.jsonl" in path]
    assert gets == [503] * 3  # exactly the configured attempts
