"""The document schema shared by every data stage, and the entry point that reads sources into it.

:func:`read_source` finds a source's files (staging S3 objects) and hands them to the format's
reader in :mod:`fluxforge.data.connectors`.

Raw documents: ``id, text, source, url, timestamp, domain, meta`` (ARCHITECTURE.md).
Every row that enters is either kept or recorded as rejected with ``reason`` and
``stage``; :class:`Ledger` keeps the books so that ingested = kept + rejected.
"""

from __future__ import annotations

import glob
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fluxforge.config import Source
from fluxforge.errors import FluxForgeError

RAW_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("source", pa.string()),
    ("url", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("domain", pa.string()),
    ("meta", pa.string()),
])
REJECTED_EXTRA = [("reason", pa.string()), ("stage", pa.string())]


def doc_id(source: str, url: str, text: str) -> str:
    """Stable across reruns: a function of where the document came from and what it says."""
    h = hashlib.sha1(f"{source}\x00{url}\x00".encode() + text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:20]


def slice_of(df: pd.DataFrame) -> pd.Series:
    return df["domain"] + "-" + df["timestamp"].dt.year.astype(str)


@dataclass
class Ledger:
    """Counts of documents in, kept and rejected (per source and reason) for one stage.

    ``add`` is told how many rows came in, counted before the stage touched them, so a row
    that a stage drops without recording it makes ``check`` fail.
    """

    stage: str
    ingested: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # key: (source, reason)
    received: int = 0

    def add(self, kept: pd.DataFrame, rejected: pd.DataFrame, received: int) -> None:
        self.received += received
        self.kept.update(kept["source"].value_counts().to_dict())
        for (src, reason), n in rejected.groupby(["source", "reason"]).size().items():
            self.rejected[(src, reason)] += int(n)
        self.ingested.update(kept["source"].value_counts().to_dict())
        self.ingested.update(rejected["source"].value_counts().to_dict())

    def check(self) -> None:
        kept, rej = sum(self.kept.values()), sum(self.rejected.values())
        if self.received != kept + rej:
            raise AssertionError(f"{self.stage}: ledger does not balance: {self.received} rows in, {kept} kept + {rej} rejected")

    def to_dict(self) -> dict:
        by_reason: Counter = Counter()
        for (_, reason), n in self.rejected.items():
            by_reason[reason] += n
        return {
            "ingested": self.received,
            "kept": sum(self.kept.values()),
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "by_source": {
                s: {"ingested": self.ingested[s], "kept": self.kept[s],
                    "rejected": {r: n for (src, r), n in sorted(self.rejected.items()) if src == s}}
                for s in sorted(self.ingested)
            },
        }


def reject(df: pd.DataFrame, reason: str | pd.Series, stage: str) -> pd.DataFrame:
    out = df.copy()
    out["reason"] = reason
    out["stage"] = stage
    return out


# ----------------------------------------------------------------------------- reading sources
class IngestError(FluxForgeError, ValueError):
    """A source that cannot be read at all (missing path, no files, a file without the named columns)."""


def source_inputs(src: Source) -> list[tuple[Path, str]]:
    """(local file, the name error messages use) for every input of a source; S3 prefixes are staged first."""
    if src.path.startswith("s3://"):
        from fluxforge.data.connectors import SUFFIXES
        from fluxforge.data.s3 import stage_prefix

        suffixes = SUFFIXES[src.format]
        staged = stage_prefix(src.path, staging_dir(src), suffixes)
        if not staged:
            raise IngestError(f"source '{src.name}': no {' / '.join(suffixes)} objects under {src.path}")
        return staged
    return [(f, str(f)) for f in source_files(src)]


def staging_dir(src: Source) -> Path:
    """Where the objects of an S3 source are copied: ``<staging>/<key>``."""
    from fluxforge import paths as P

    return P.DATA / ".s3-staging" / src.name


def source_files(src: Source) -> list[Path]:
    """The local files of a source: a file, a glob, a folder (files ending like the format's), or staged S3 objects."""
    from fluxforge.data.connectors import SUFFIXES

    if src.path.startswith("s3://"):
        return [f for f, _ in source_inputs(src)]
    if src.format == "world":
        root = Path(src.path) / "sources"
        files = sorted(root.glob("*.jsonl"))
        where = root
    elif Path(src.path).is_dir():
        files = sorted(f for f in Path(src.path).rglob("*") if f.is_file() and f.name.endswith(SUFFIXES[src.format]))
        where = f"{src.path} (no {' / '.join(SUFFIXES[src.format])} files)"
    else:
        files = sorted(Path(p) for p in glob.glob(src.path, recursive=True) if Path(p).is_file())
        where = src.path
    if not files:
        raise IngestError(f"source '{src.name}': no input files at {where}")
    return files


def read_source(src: Source, files: list[Path] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a source into (documents, rejected rows, records read). Bad records are rejected, never skipped.

    ``files`` reads only those files of the source (from :func:`source_files`), e.g. one shard of it;
    duplicates are then found within those files only.
    """
    from fluxforge.data.connectors import read_files

    inputs = source_inputs(src) if files is None else [(Path(f), _label(src, Path(f))) for f in files]
    missing = [str(f) for f, _ in inputs if not f.is_file()]
    if missing:
        raise IngestError(f"source '{src.name}': input file(s) not found: {', '.join(missing[:5])}")
    return read_files(src, inputs)


def _label(src: Source, file: Path) -> str:
    """The name a file goes by in messages and origins: its S3 URL when it is a staged object."""
    if src.path.startswith("s3://"):
        from fluxforge.data.s3 import split_url

        try:
            return f"s3://{split_url(src.path)[0]}/{file.relative_to(staging_dir(src)).as_posix()}"
        except ValueError:
            pass
    return str(file)


# ----------------------------------------------------------------------------- parquet io
def write_docs(df: pd.DataFrame, path: Path, rejected: bool = False) -> None:
    from fluxforge.io import atomic_file

    schema = RAW_SCHEMA
    if rejected:
        schema = pa.schema([*RAW_SCHEMA, *[pa.field(n, t) for n, t in REJECTED_EXTRA]])
    df = df.copy()
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, errors="coerce")
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    with atomic_file(Path(path), "wb") as fh:
        pq.write_table(table, fh)


def read_docs(paths: list[Path] | Path) -> pd.DataFrame:
    paths = [paths] if isinstance(paths, Path) else paths
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RAW_SCHEMA.names)
