"""What a source's files look like: the format from their suffixes, and which fields hold the text, the URL and
the date, guessed from the first records (``fluxforge source add``).

Every guess carries the reason it was made, because a person confirms it before anything is written, and every
guess can be overridden. A guess that cannot be made (no column holds text, files of several formats) is an
error saying which option settles it, never a silent default.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fluxforge.data.connectors import SUFFIXES, IngestError

FIRST_ROWS = 20  # records read to guess the fields
TXT_SAMPLE_BYTES = 1 << 20  # bytes of a single .txt file read to guess how it splits into documents
FORMATS = tuple(f for f in SUFFIXES if f != "world")  # what a person's own files can be
TEXT_NAMES = ("text", "content", "body", "description", "article", "document", "abstract", "summary", "message")
URL_NAMES = ("url", "link", "href", "uri", "source_url")
TIME_NAMES = ("timestamp", "date", "published", "published_at", "publication_date", "created_at", "created",
              "datetime", "time", "updated_at", "modified")
URL = re.compile(r"^(?:https?|s3|file)://\S+$")
MOSTLY = 0.8  # share of a column's non-empty values that must look like URLs or dates


@dataclass(frozen=True)
class Pick:
    """One guess: the value (a column name, a txt_split, or None for "none"), why (worth keeping as a comment in
    params.yaml) and what was seen (worth showing once)."""

    value: str | None
    why: str
    seen: str = ""


def format_of(name: str) -> str | None:
    """The format a file name's suffix stands for (``a.jsonl.gz`` -> jsonl), or None for other files."""
    return next((fmt for fmt in FORMATS if name.endswith(SUFFIXES[fmt])), None)


def one_format(names: Sequence[str]) -> Pick:
    """The single format of these file names; none, or several, is an error naming what was found."""
    counts = Counter(f for f in map(format_of, names) if f)
    if len(counts) == 1:
        fmt = next(iter(counts))
        return Pick(fmt, f"from the suffix {' / '.join(SUFFIXES[fmt])}", f"{counts[fmt]} file(s)")
    if not counts:
        known = ", ".join(s for f in FORMATS for s in SUFFIXES[f])
        raise IngestError(f"no file with a suffix a source can read ({known}) among {len(names)} file(s)")
    found = ", ".join(f"{n} {fmt}" for fmt, n in counts.most_common())
    raise IngestError(f"files of several formats ({found}): choose one with --format, or point at one kind "
                      "(a glob such as 'corpus/*.jsonl')")


def first_records(file: Path, fmt: str, n: int = FIRST_ROWS) -> list[dict[str, Any]]:
    """The first ``n`` records of a jsonl/csv/tsv/parquet file as dicts (a txt file has none).

    Lines that are not JSON objects are passed over here: the trial read that follows counts and names them.
    """
    try:
        if fmt == "jsonl":
            return _jsonl_head(file, n)
        if fmt in ("csv", "tsv"):
            with open(file, newline="", encoding="utf-8-sig", errors="replace") as fh:
                return [dict(row) for row, _ in zip(csv.DictReader(fh, delimiter="\t" if fmt == "tsv" else ","),
                                                    range(n), strict=False)]
        if fmt == "parquet":
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(file).iter_batches(batch_size=n), None)
            return [] if batch is None else batch.to_pylist()
    except (OSError, csv.Error, ValueError) as err:
        raise IngestError(f"{file}: cannot read its first records as {fmt}: {err}") from None
    return []


def _jsonl_head(file: Path, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    opener: Any = gzip.open if file.name.endswith(".gz") else open
    with opener(file, "rt", encoding="utf-8", errors="replace") as fh:
        try:
            for line in fh:
                try:
                    rec = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    rows.append(rec)
                    if len(rows) == n:
                        break
        except EOFError:  # a sample cut short (the head of an S3 object) ends here
            pass
    return rows


def columns_of(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every field of the records, in the order first seen."""
    return list(dict.fromkeys(k for r in records for k in r))


def _strings(records: Sequence[dict[str, Any]], column: str) -> list[str]:
    return [v for r in records if isinstance(v := r.get(column), str) and v.strip()]


def _mean_chars(records: Sequence[dict[str, Any]], column: str) -> float:
    return sum(map(len, _strings(records, column))) / max(len(records), 1)


def _named(columns: Sequence[str], names: Sequence[str]) -> list[str]:
    """``columns`` whose lower-cased name is in ``names``, in the order of ``names``."""
    return sorted((c for c in columns if c.lower() in names), key=lambda c: names.index(c.lower()))


def pick_text(records: Sequence[dict[str, Any]]) -> Pick:
    """The text column: one named like text (text, content, body...) unless another holds far longer text."""
    columns = columns_of(records)
    longest = max(columns, key=lambda c: _mean_chars(records, c), default=None)
    if longest is None or _mean_chars(records, longest) == 0:
        raise IngestError(f"no field holds text in the first {len(records)} records (fields: "
                          f"{', '.join(columns) or 'none'}): name it with --text-field")
    top = _mean_chars(records, longest)
    for c in _named(columns, TEXT_NAMES):
        if _mean_chars(records, c) >= top / 2:
            return Pick(c, "named like text", f"{_mean_chars(records, c):.0f} characters on average")
    return Pick(longest, "the longest text in the first records", f"{top:.0f} characters on average")


def _share(values: list[Any], test: Any) -> float:
    return sum(1 for v in values if test(v)) / len(values) if values else 0.0


def pick_url(records: Sequence[dict[str, Any]], text: str | None) -> Pick:
    """The URL column: values that are URLs (a column named url, link... first); None when no column has them."""
    columns = [c for c in columns_of(records) if c != text]
    ranked = _named(columns, URL_NAMES) + [c for c in columns if c.lower() not in URL_NAMES]
    for c in ranked:
        if _share(_strings(records, c), lambda v: URL.match(v.strip())) >= MOSTLY:
            return Pick(c, "its values are URLs")
    return Pick(None, "no field of URLs in the first records: URLs are file://<path>#<n>")


def _dates(values: list[Any]) -> pd.Series:
    """``values`` parsed as ISO dates, as the reader parses them (NaT where one is not)."""
    text = pd.Series([v.isoformat() if hasattr(v, "isoformat") else v for v in values], dtype=object)
    return pd.to_datetime(text.where(text.map(lambda v: isinstance(v, str))), utc=True, errors="coerce", format="ISO8601")


def pick_timestamp(records: Sequence[dict[str, Any]], taken: Sequence[str | None]) -> Pick:
    """The date column: ISO dates in (nearly) every record that has one; a column named date, published... first."""
    columns = [c for c in columns_of(records) if c not in taken]
    ranked = _named(columns, TIME_NAMES) + [c for c in columns if c.lower() not in TIME_NAMES]
    for c in ranked:
        values = [v for r in records if (v := r.get(c)) not in (None, "")]
        parsed = _dates(values)
        if values and parsed.notna().mean() >= MOSTLY:
            return Pick(c, "its values are ISO dates", f"{parsed.min():%Y-%m-%d} .. {parsed.max():%Y-%m-%d} in the first records")
    return Pick(None, "no field of ISO dates in the first records: every document gets default_timestamp")


def pick_txt_split(files: Sequence[Path]) -> Pick:
    """How txt files become documents: one per file for several files; for one file, its blank-line blocks if any."""
    if len(files) > 1:
        return Pick("file", "one document per file")
    with open(files[0], "rb") as fh:
        head = fh.read(TXT_SAMPLE_BYTES).decode("utf-8", "replace")
    blocks = sum(1 for b in re.split(r"\n[ \t\r]*\n", head) if b.strip())
    if blocks > 1:
        return Pick("blank_lines", "one document per blank-line separated block", f"{blocks} blocks in the first MB")
    return Pick("file", "the file is one document (it has no blank lines)")
