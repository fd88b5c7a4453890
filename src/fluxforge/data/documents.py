"""The document schema shared by every data stage, and the reader that produces it.

Raw documents: ``id, text, source, url, timestamp, domain, meta`` (ARCHITECTURE.md).
Every row that enters is either kept or recorded as rejected with ``reason`` and
``stage``; :class:`Ledger` keeps the books so that ingested = kept + rejected.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fluxforge.config import DOMAINS, Source
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
    """A source that cannot be read at all (missing path, no files)."""


def source_inputs(src: Source) -> list[tuple[Path, str]]:
    """(local file, the name error messages use) for every input of a source; S3 prefixes are staged first."""
    if src.path.startswith("s3://"):
        from fluxforge import paths as P
        from fluxforge.data.s3 import stage_prefix

        staged = stage_prefix(src.path, P.DATA / ".s3-staging" / src.name)
        if not staged:
            raise IngestError(f"source '{src.name}': no .jsonl objects under {src.path}")
        return staged
    return [(f, str(f)) for f in source_files(src)]


def source_files(src: Source) -> list[Path]:
    if src.path.startswith("s3://"):
        return [f for f, _ in source_inputs(src)]
    if src.format == "world":
        root = Path(src.path) / "sources"
        files = sorted(root.glob("*.jsonl"))
        where = root
    else:
        files = sorted(Path(p) for p in glob.glob(src.path, recursive=True) if Path(p).is_file())
        where = src.path
    if not files:
        raise IngestError(f"source '{src.name}': no input files at {where}")
    return files


def read_source(src: Source) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a source into (documents, rejected rows, records read). Bad lines are rejected, never skipped."""
    rows, bad, n_read = [], [], 0
    for file, label in source_inputs(src):
        sub = f"{src.name}/{file.stem}" if src.format == "world" else src.name
        with open(file, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                n_read += 1
                where = f"{label}:{lineno}"
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    bad.append(_bad(sub, where, raw, "invalid_utf8"))
                    continue
                except json.JSONDecodeError:
                    bad.append(_bad(sub, where, raw, "invalid_json"))
                    continue
                if not isinstance(rec, dict):
                    bad.append(_bad(sub, where, raw, "not_an_object"))
                    continue
                text = rec.get(src.text_field)
                if not isinstance(text, str) or not text.strip():
                    bad.append(_bad(sub, where, raw, f"missing_text_field:{src.text_field}"))
                    continue
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates survive json.loads but not UTF-8
                    bad.append(_bad(sub, where, raw, "invalid_unicode"))
                    continue
                url = str(rec.get(src.url_field) or "")
                domain = src.domain if src.domain != "auto" else str(rec.get("domain") or "general")
                if domain not in DOMAINS:
                    bad.append(_bad(sub, where, raw, f"unknown_domain:{domain[:40]}"))
                    continue
                meta = {"origin": where, "licence": src.licence}
                if "doc_id" in rec:
                    meta["native_id"] = rec["doc_id"]
                rows.append({
                    "id": doc_id(sub, url, text), "text": text, "source": sub, "url": url,
                    "timestamp": rec.get(src.timestamp_field), "domain": domain, "meta": json.dumps(meta),
                })
    df = pd.DataFrame(rows, columns=RAW_SCHEMA.names)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, errors="coerce", format="ISO8601")
    no_ts = df["timestamp"].isna()
    dup = df["id"].where(~no_ts).duplicated(keep="first") & ~no_ts  # a bad-timestamp row never shadows a good copy
    rejected = pd.concat([
        reject(df[no_ts], "missing_or_bad_timestamp", "ingest"),
        reject(df[dup & ~no_ts], "duplicate_record", "ingest"),
        pd.DataFrame(bad, columns=[*RAW_SCHEMA.names, "reason", "stage"]),
    ], ignore_index=True)
    return df[~no_ts & ~dup].reset_index(drop=True), rejected, n_read


def _bad(source: str, where: str, raw: bytes, reason: str) -> dict:
    return {"id": hashlib.sha1(where.encode()).hexdigest()[:20], "text": raw.decode("utf-8", "replace")[:10_000],
            "source": source, "url": "", "timestamp": None, "domain": "", "meta": json.dumps({"origin": where}),
            "reason": reason, "stage": "ingest"}


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
