"""Source files under an S3 prefix (AWS or any S3-compatible store), staged locally for ingest.

Objects are listed page by page (a prefix may hold millions of keys) and downloaded once:
a manifest of ETags next to the staged copies lets a rerun skip what has not changed.
The endpoint comes from ``FLUXFORGE_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``; credentials
only from the environment, an AWS profile or a role (boto3's own chain), never from params.
botocore retries throttling, 5xx answers and connection errors itself ("standard" mode: 5 attempts,
exponential backoff with full jitter, capped at 20 s; FLUXFORGE_S3_MAX_ATTEMPTS changes the count).
When the attempts are spent, the caller gets one :class:`DataError` naming the URL and the endpoint.
A key is a name chosen by whoever writes to the bucket: one that is absolute or climbs with ``..`` would be
written outside the staging folder, so it is never downloaded but returned as refused, with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fluxforge.errors import DataError
from fluxforge.paths import UnsafeNameError, within


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not url.startswith("s3://") or not bucket:
        raise DataError(f"'{url}' is not an S3 URL (s3://BUCKET/PREFIX)")
    return bucket, prefix


def endpoint() -> str | None:
    return os.environ.get("FLUXFORGE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None


def max_attempts() -> int:
    """Attempts per request, first one included (botocore's standard-mode default is 3; stores that throttle need more)."""
    raw = os.environ.get("FLUXFORGE_S3_MAX_ATTEMPTS", "5")
    if not raw.isdigit() or int(raw) < 1:
        raise DataError(f"FLUXFORGE_S3_MAX_ATTEMPTS must be a whole number >= 1, got {raw!r}")
    return int(raw)


def client():  # noqa: ANN201 - a boto3 S3 client
    """An S3 client whose retries (count and backoff) are botocore's standard mode.

    ``total_max_attempts`` counts the first try; botocore's ``max_attempts`` would count retries only.
    """
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint(),
                        config=Config(retries={"total_max_attempts": max_attempts(), "mode": "standard"}))


def unreadable(url: str, err: Exception) -> DataError:
    """The one error for an S3 request that failed for good: the URL, the endpoint, and what to check."""
    where = f" at {endpoint()}" if endpoint() else ""
    return DataError(f"cannot read {url}{where}: {str(err).splitlines()[0]}. Check the bucket and prefix, that the "
                     "endpoint is reachable, and the credentials in the environment (AWS_ACCESS_KEY_ID/...)")


def list_objects(url: str, suffixes: tuple[str, ...], limit: int = 1000) -> tuple[list[dict], bool]:
    """The first ``limit`` objects under ``url`` whose key ends with one of ``suffixes`` (boto3's Key, ETag,
    LastModified, Size), and whether there are more: enough to describe a prefix without listing millions."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_url(url)
    found: list[dict] = []
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(tuple(suffixes)):
                    if len(found) == limit:
                        return found, True
                    found.append(obj)
    except (BotoCoreError, ClientError) as err:
        raise unreadable(url, err) from None
    return found, False


def download_head(url: str, key: str, dest: Path, max_bytes: int | None = None) -> Path:
    """Copy object ``key`` of ``url``'s bucket to ``dest`` (only its first ``max_bytes`` when given): a sample to inspect."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if max_bytes is None:
            client().download_file(bucket, key, str(dest))
        else:
            body = client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes - 1}")["Body"].read()
            dest.write_bytes(body)
    except (BotoCoreError, ClientError) as err:
        raise unreadable(f"s3://{bucket}/{key}", err) from None
    return dest


@dataclass
class Staged:
    """The objects of a prefix: (local copy, s3 URL) sorted by key, and (s3 URL, why) for keys refused unread."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def stage_prefix(url: str, dest: Path, suffixes: tuple[str, ...] = (".jsonl",), page_size: int = 1000) -> Staged:
    """Download every object under ``url`` whose key ends with one of ``suffixes`` into ``dest``.

    The local copy is ``dest/<key>``; a key that would land outside ``dest`` is refused, not downloaded.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_url(url)
    dest = Path(dest)
    manifest_file = dest / ".manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    s3, staged = client(), Staged()
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                             PaginationConfig={"PageSize": page_size})
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.endswith(tuple(suffixes)):
                    continue
                try:
                    local = within(dest, key)
                except UnsafeNameError as err:
                    staged.refused.append((f"s3://{bucket}/{key}", err.why))
                    continue
                if manifest.get(key) != obj["ETag"] or not local.exists():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    tmp = local.with_name(local.name + ".part")
                    s3.download_file(bucket, key, str(tmp))
                    os.replace(tmp, local)
                    manifest[key] = obj["ETag"]
                staged.files.append((local, f"s3://{bucket}/{key}"))
    except (BotoCoreError, ClientError) as err:
        raise unreadable(url, err) from None
    finally:
        dest.mkdir(parents=True, exist_ok=True)
        manifest_file.write_text(json.dumps(manifest, indent=1))
    staged.files.sort(key=lambda s: s[1])
    return staged
