"""Ingest from an S3 prefix through a real S3-compatible server process (moto): pages, staging, errors."""

from __future__ import annotations

import json

import boto3
import pytest

from fluxforge.config import Source
from fluxforge.data.documents import read_source
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
    monkeypatch.setattr(s3, "stage_prefix", lambda url, dest: real(url, dest, page_size=2))
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
    monkeypatch.setenv("FLUXFORGE_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError, match=r"cannot read s3://.* at http://127.0.0.1:9"):
        read_source(Source(name="feed", format="jsonl", path=f"s3://{bucket}/landing/"))
