"""Where a source's documents are (local files, a glob, a folder, an S3 prefix) and the ingest that reads them.

:func:`read_source` finds a source's files (staging S3 objects first) and hands them to the format's
reader in :mod:`fluxforge.data.connectors`; :func:`ingest` reads every source of ``data.sources``
with one ledger, for the DAG's ingest stage and ``fluxforge curate`` alike.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fluxforge import paths as P
from fluxforge.config import Source
from fluxforge.data import s3
from fluxforge.data.connectors import SUFFIXES, IngestError, read_files
from fluxforge.data.ledger import Ledger

log = logging.getLogger(__name__)


def source_inputs(src: Source) -> s3.Staged:
    """(local file, the name error messages use) for every input of a source; S3 prefixes are staged first,
    and their objects whose keys would leave the staging folder come back refused (URL, why), unread."""
    if src.path.startswith("s3://"):
        suffixes = SUFFIXES[src.format]
        staged = s3.stage_prefix(src.path, staging_dir(src), suffixes)
        for url, why in staged.refused:
            log.warning("source '%s': %s is not downloaded: %s", src.name, url, why)
        if not staged.files and not staged.refused:
            raise IngestError(f"source '{src.name}': no {' / '.join(suffixes)} objects under {src.path}")
        return staged
    return s3.Staged([(f, str(f)) for f in source_files(src)])


def staging_dir(src: Source) -> Path:
    """Where the objects of an S3 source are copied: ``<staging>/<key>``."""
    return P.DATA / ".s3-staging" / src.name


def source_files(src: Source) -> list[Path]:
    """The local files of a source: a file, a glob, a folder (files ending like the format's), or staged S3 objects."""
    if src.path.startswith("s3://"):
        return [f for f, _ in source_inputs(src).files]
    if src.format == "world":
        root = Path(src.path) / "sources"
        files = sorted(root.glob("*.jsonl"))
        where = root
    else:
        files = matching_files(src.path, SUFFIXES[src.format])
        where = f"{src.path} (no {' / '.join(SUFFIXES[src.format])} files)" if Path(src.path).is_dir() else src.path
    if not files:
        raise IngestError(f"source '{src.name}': no input files at {where}")
    return files


def matching_files(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """A local path's files: a folder's files ending in ``suffixes`` (at any depth), a glob's matches, or the file."""
    if Path(path).is_dir():
        return sorted(f for f in Path(path).rglob("*") if f.is_file() and f.name.endswith(suffixes))
    return sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())


def dependency_path(src: Source) -> str:
    """What DVC watches for this source, listed in ingest's ``deps``: a change under it means reading the source again.

    The file or folder itself (DVC hashes a folder whole), a glob's folder before its first wildcard (a superset:
    DVC has no glob dependencies), the S3 prefix (DVC compares its objects' ETags), or a world's ``sources`` folder.
    """
    path = src.path.rstrip("/") or src.path
    if src.format == "world":
        return f"{path}/sources"
    if path.startswith("s3://"):
        return path
    parts = Path(path).parts
    fixed = list(itertools.takewhile(lambda p: not re.search(r"[*?[]", p), parts))
    if len(fixed) == len(parts):
        return os.path.normpath(path)
    if not fixed:
        raise IngestError(f"source '{src.name}': the glob {src.path} starts with a wildcard, so DVC would have to watch "
                          "the whole repository; point it at a folder (e.g. corpus/*.jsonl)")
    return os.path.normpath(os.path.join(*fixed))


def covers(dep: str, path: str) -> bool:
    """Whether a change under ``path`` changes dependency ``dep`` (the same path, or ``path`` inside it)."""
    if dep.startswith("s3://") or path.startswith("s3://"):
        return path == dep or path.startswith(dep.rstrip("/") + "/")
    a, b = os.path.abspath(dep), os.path.abspath(path)
    return b == a or b.startswith(a.rstrip(os.sep) + os.sep)


def read_source(src: Source, files: list[Path] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a source into (documents, rejected rows, records read). Bad records are rejected, never skipped.

    ``files`` reads only those files of the source (from :func:`source_files`), e.g. one shard of it;
    duplicates are then found within those files only.
    """
    inputs = source_inputs(src) if files is None else s3.Staged([(Path(f), _label(src, Path(f))) for f in files])
    missing = [str(f) for f, _ in inputs.files if not f.is_file()]
    if missing:
        raise IngestError(f"source '{src.name}': input file(s) not found: {', '.join(missing[:5])}")
    return read_files(src, inputs.files, inputs.refused)


def _label(src: Source, file: Path) -> str:
    """The name a file goes by in messages and origins: its S3 URL when it is a staged object."""
    if src.path.startswith("s3://"):
        try:
            return f"s3://{s3.split_url(src.path)[0]}/{file.relative_to(staging_dir(src)).as_posix()}"
        except ValueError:
            pass
    return str(file)


def raw_tables(sources: Sequence[Source]) -> list[Path]:
    """The ingest stage's table of each source (``data/raw/<name>.parquet``), in params order."""
    return [P.RAW / f"{s.name}.parquet" for s in sources]


@dataclass
class Ingested:
    """Every source read: documents and rejected rows per source (params order) and the ingest ledger."""

    docs: dict[str, pd.DataFrame] = field(default_factory=dict)
    rejected: dict[str, pd.DataFrame] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=lambda: Ledger("ingest"))

    def watermark(self) -> dict:
        """The newest document's time, overall and per source: a refresh reports how many documents
        arrived after the previous watermark."""
        newest = {name: pd.to_datetime(docs["timestamp"], utc=True).max().isoformat()
                  for name, docs in self.docs.items() if len(docs)}
        return {"watermark": max(newest.values()) if newest else None, "watermark_by_source": newest}


def ingest(sources: Sequence[Source], files: Mapping[str, Sequence[Path]] | None = None) -> Ingested:
    """Read every source (only ``files[name]`` of a source named there); the ledger is checked to balance."""
    out = Ingested()
    for src in sources:
        chosen = None if files is None or src.name not in files else list(files[src.name])
        kept, rejected, n_read = read_source(src, files=chosen)
        out.ledger.add(kept, rejected, n_read)
        out.docs[src.name], out.rejected[src.name] = kept, rejected
        log.info("ingest %s: %d records read, %d documents, %d rejected", src.name, n_read, len(kept), len(rejected))
    out.ledger.check()
    return out
