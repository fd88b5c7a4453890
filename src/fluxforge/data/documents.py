"""The document schema shared by every data stage, and its Parquet reader and writer.

Raw documents: ``id, text, source, url, timestamp, domain, meta`` (ARCHITECTURE.md). Every row that
enters is either kept or recorded as rejected with ``reason`` and ``stage`` (:func:`reject`);
:mod:`fluxforge.data.ledger` keeps the books so that ingested = kept + rejected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fluxforge.io import atomic_file

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
    """Each document's slice, ``<domain>-<year>``: the unit of the continual stream and its evaluation."""
    return df["domain"] + "-" + df["timestamp"].dt.year.astype(str)


def reject(df: pd.DataFrame, reason: str | pd.Series, stage: str) -> pd.DataFrame:
    """``df`` as rejected rows: every row keeps its columns and says why (``reason``) and where (``stage``)."""
    out = df.copy()
    out["reason"] = reason
    out["stage"] = stage
    return out


# ----------------------------------------------------------------------------- parquet io
def write_docs(df: pd.DataFrame, path: Path, rejected: bool = False) -> None:
    """Write ``df`` in the raw schema (plus ``reason``/``stage`` when ``rejected``), atomically."""
    schema = RAW_SCHEMA
    if rejected:
        schema = pa.schema([*RAW_SCHEMA, *[pa.field(n, t) for n, t in REJECTED_EXTRA]])
    df = df.copy()
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, errors="coerce")
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    with atomic_file(Path(path), "wb") as fh:
        pq.write_table(table, fh)


def read_docs(paths: list[Path] | Path) -> pd.DataFrame:
    """One table of the documents in ``paths``, in order."""
    paths = [paths] if isinstance(paths, Path) else paths
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RAW_SCHEMA.names)
