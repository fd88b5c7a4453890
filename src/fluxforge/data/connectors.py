"""Readers that turn one file of a source into raw documents, one reader per ``Source.format``.

A reader sees one file and returns its documents and its rejected rows. Each rejected row says
why (``reason``) and where (``meta.origin``: ``file:line`` for JSONL, ``file:row N`` for the N-th
record of a table, header not counted, ``file#block N`` for text blocks); nothing is dropped without
a row, so the ingest ledger balances (records read = kept + rejected). A file that cannot be read as
its format at all (a Parquet file with another schema, a CSV header without the text column) stops
ingest with an :class:`IngestError` naming the file, the column and the columns it has: reading on
would reject every row for the same reason and hide the cause in a count.

The checks that do not depend on the format run once per file in :func:`_finish` (timestamps and
``default_timestamp``, ``max_doc_chars``, ids); duplicates across files in :func:`read_files`.
Tables are read column-wise (pyarrow): per-row Python runs only for ids and for the rare rows that
fail UTF-8; JSONL is read line by line because each line must name its own error.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fluxforge.config import DOMAINS, Source
from fluxforge.data.documents import RAW_SCHEMA, doc_id, reject
from fluxforge.errors import FluxForgeError

# file-name endings per format: what a folder or an S3 prefix contributes to a source
SUFFIXES: dict[str, tuple[str, ...]] = {
    "world": (".jsonl",), "jsonl": (".jsonl", ".jsonl.gz"), "parquet": (".parquet",),
    "txt": (".txt",), "csv": (".csv",), "tsv": (".tsv",),
}
BAD_COLUMNS = [*RAW_SCHEMA.names, "reason", "stage"]
DOC_COLUMNS = [c for c in RAW_SCHEMA.names if c != "id"]  # ids are computed in _finish
SHOWN_CHARS = 10_000  # text kept for a row rejected as unreadable; too_long rows keep all of it
PARQUET_BATCH = 65_536
# what pyarrow raises for bytes that are not (or no longer) Parquet: bad magic, thrift, pages, names not UTF-8
PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError, IndexError)


class IngestError(FluxForgeError, ValueError):
    """A source that cannot be read at all (missing path, no files, a file without the named columns)."""


@dataclass
class Part:
    """What one file gave: documents (timestamps still raw, no ids), rejected rows, records read."""

    docs: pd.DataFrame
    bad: pd.DataFrame
    n_read: int


# ----------------------------------------------------------------------------- entry point
def read_files(src: Source, inputs: Sequence[tuple[Path, str]],
               refused: Sequence[tuple[str, str]] = ()) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read ``(local file, name for messages)`` pairs of ``src`` into (documents, rejected rows, records read).

    ``refused`` are ``(name, why)`` of inputs that were not read because their name is unsafe (an S3 key that
    would leave the staging folder): each is one record read and one row rejected as ``unsafe_key``.
    """
    reader = READERS[src.format]
    kept, rejected, n_read = [], [], len(refused)
    if refused:
        rejected.append(pd.DataFrame([_bad(src.name, name, b"", "unsafe_key", f"{name}: {why}; not downloaded, "
                                           "it would be written outside the staging folder") for name, why in refused],
                                     columns=BAD_COLUMNS))
    for file, label in inputs:
        sub = f"{src.name}/{file.stem}" if src.format == "world" else src.name
        part = reader(src, Path(file), label, sub)
        ok, bad = _finish(src, part.docs)
        kept.append(ok)
        rejected += [bad, part.bad]
        n_read += part.n_read
    docs = _concat(kept, RAW_SCHEMA.names)
    dup = docs["id"].duplicated(keep="first")
    rejected.append(reject(docs[dup], "duplicate_record", "ingest"))
    return docs[~dup].reset_index(drop=True), _concat(rejected, BAD_COLUMNS), n_read


def _finish(src: Source, docs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse timestamps (``default_timestamp`` where a record has none), give ids, reject what cannot be used."""
    raw = docs["timestamp"]
    absent = raw.isna() | (raw.astype(str).str.strip() == "")
    ts = pd.to_datetime(raw.where(~absent), utc=True, errors="coerce", format="ISO8601")
    if src.default_timestamp is not None:
        ts = ts.where(~absent, _utc(src.default_timestamp))
    docs = docs.assign(timestamp=ts.astype("datetime64[us, UTC]"))  # the raw schema's unit, whatever the input's
    columns = (docs[c].tolist() for c in ("source", "url", "text"))  # lists: iterating Arrow-backed strings is slow
    docs.insert(0, "id", [doc_id(s, u, t) for s, u, t in zip(*columns, strict=True)])
    no_ts = docs["timestamp"].isna()
    too_long = docs["text"].str.len() > src.max_doc_chars
    rejected = pd.concat([reject(docs[no_ts], "missing_or_bad_timestamp", "ingest"),
                          reject(docs[too_long & ~no_ts], "too_long", "ingest")], ignore_index=True)
    return docs[~no_ts & ~too_long], rejected


def _utc(value: str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


# ----------------------------------------------------------------------------- jsonl (and world)
def read_jsonl(src: Source, file: Path, label: str, sub: str) -> Part:
    """One JSON object per line; ``.gz`` files are gunzipped.

    A gzip stream cut short keeps the lines before the cut (they are intact). A corrupt one (bad deflate data or
    checksum) keeps none: bytes decoded before the error may already be wrong, so every line it gave is
    rejected as ``corrupt_gzip`` with its text, as is the break itself.
    """
    rows, bad, n_read, lineno = [], [], 0, 0
    id_key = src.id_field or "doc_id"
    opener: Callable = gzip.open if file.name.endswith(".gz") else open
    base = _url_base(file, label)
    with opener(file, "rb") as fh:
        try:
            for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno names the break below
                if not raw.strip():
                    continue
                n_read += 1
                row = _json_record(src, raw, f"{label}:{lineno}", sub, id_key, f"{base}#{lineno}")
                (bad if "reason" in row else rows).append(row)
        except EOFError as err:  # gzip stream cut short: the lines before it are read
            n_read += 1
            bad.append(_bad(sub, f"{label}:{lineno + 1}", b"", "truncated_gzip", str(err)))
        except (gzip.BadGzipFile, zlib.error) as err:
            n_read += 1
            why = f"the gzip stream is corrupt at line {lineno + 1} ({err}); no line of {label} can be trusted"
            bad += [_bad(sub, json.loads(r["meta"])["origin"], r["text"].encode(), "corrupt_gzip", why) for r in rows]
            rows = []
            bad.append(_bad(sub, f"{label}:{lineno + 1}", b"", "corrupt_gzip", str(err)))
    if n_read == 0:
        return _empty(sub, label)
    return Part(pd.DataFrame(rows, columns=DOC_COLUMNS), pd.DataFrame(bad, columns=BAD_COLUMNS), n_read)


def _json_record(src: Source, raw: bytes, where: str, sub: str, id_key: str, fallback_url: str) -> dict:
    """A document row, or a rejected row (it has ``reason``) for a line that cannot be one."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _bad(sub, where, raw, "invalid_utf8")
    except json.JSONDecodeError:
        return _bad(sub, where, raw, "invalid_json")
    if not isinstance(rec, dict):
        return _bad(sub, where, raw, "not_an_object")
    text = rec.get(src.text_field)
    if not isinstance(text, str) or not text.strip():
        return _bad(sub, where, raw, f"missing_text_field:{src.text_field}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates survive json.loads but not UTF-8
        return _bad(sub, where, raw, "invalid_unicode")
    domain = src.domain if src.domain != "auto" else str(rec.get("domain") or "general")
    if domain not in DOMAINS:
        return _bad(sub, where, raw, f"unknown_domain:{domain[:40]}")
    meta = {"origin": where, "licence": src.licence}
    if id_key in rec:
        meta["native_id"] = rec[id_key]
    url = str(rec.get(src.url_field) or "") if src.url_field else ""
    return {"text": text, "source": sub, "url": url or fallback_url,
            "timestamp": rec.get(src.timestamp_field) if src.timestamp_field else None,
            "domain": domain, "meta": json.dumps(meta)}


# ----------------------------------------------------------------------------- txt
def read_txt(src: Source, file: Path, label: str, sub: str) -> Part:
    """Plain text: a document per file, per blank-line separated block, or per heading (``txt_split``)."""
    rows, bad, n = [], [], 0
    pattern = re.compile(src.heading_pattern) if src.heading_pattern else None
    base = _url_base(file, label)
    with open(file, "rb") as fh:
        for raw in _txt_blocks(fh, src.txt_split or "file", pattern):
            if not raw.strip():
                continue  # whitespace between documents (or before the first heading) is no document
            n += 1
            where = f"{label}#block {n}"
            try:
                # trailing spaces carry nothing, and whitespace-only lines (WikiText writes " " between
                # paragraphs) would otherwise count as duplicated lines in the repetition filters
                text = "\n".join(line.rstrip() for line in raw.decode("utf-8").strip().split("\n"))
            except UnicodeDecodeError:
                bad.append(_bad(sub, where, raw, "invalid_utf8"))
                continue
            rows.append({"text": text, "source": sub, "url": f"{base}#{n}", "timestamp": None,
                         "domain": src.domain, "meta": json.dumps({"origin": where, "licence": src.licence})})
    if n == 0:
        return _empty(sub, label)
    return Part(pd.DataFrame(rows, columns=DOC_COLUMNS), pd.DataFrame(bad, columns=BAD_COLUMNS), n)


def _txt_blocks(fh, split: str, heading: re.Pattern | None) -> Iterator[bytes]:  # noqa: ANN001 - a binary file
    """The raw bytes of each document; a line's bytes are only decoded to match the heading pattern."""
    if split == "file":
        yield fh.read()
        return
    block: list[bytes] = []
    for line in fh:
        if split == "blank_lines":
            if line.strip():
                block.append(line)
                continue
        elif not (block and heading.search(line.decode("utf-8", "surrogateescape").rstrip("\r\n"))):
            block.append(line)
            continue
        if block:
            yield b"".join(block)
        block = [] if split == "blank_lines" else [line]
    if block:
        yield b"".join(block)


# ----------------------------------------------------------------------------- tables
def read_parquet(src: Source, file: Path, label: str, sub: str) -> Part:
    """Parquet, read in record batches of the needed columns only (a large file never sits in memory whole)."""
    import pyarrow.parquet as pq

    if file.stat().st_size == 0:
        return _empty(sub, label)
    try:
        pf = pq.ParquetFile(file)
        schema = pf.schema_arrow
    except PARQUET_ERRORS as err:
        raise IngestError(f"source '{src.name}': {label} is not a readable Parquet file: {err}") from None
    names = _needed_columns(src, label, schema.names)
    text_type = schema.field(src.text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or pa.types.is_binary(text_type)
            or pa.types.is_large_binary(text_type)):
        raise IngestError(f"source '{src.name}': {label}: column '{src.text_field}' holds {text_type}, not text")
    if pf.metadata.num_rows == 0:
        return _empty(sub, label)
    parts, start = [], 1
    for batch in _parquet_batches(src, pf, names, label):
        table = pa.Table.from_batches([batch])
        parts.append(_table_part(src, file, label, sub, table, np.arange(start, start + table.num_rows)))
        start += table.num_rows
    return Part(_concat([p.docs for p in parts], DOC_COLUMNS), _concat([p.bad for p in parts], BAD_COLUMNS), start - 1)


def _parquet_batches(src: Source, pf, names: list[str], label: str) -> Iterator[pa.RecordBatch]:  # noqa: ANN001
    """The file's record batches; a damaged page or footer stops ingest naming the file (its rows cannot be
    counted, so they cannot be rejected one by one)."""
    batches = pf.iter_batches(batch_size=PARQUET_BATCH, columns=names)
    read = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except PARQUET_ERRORS as err:
            raise IngestError(f"source '{src.name}': {label} is a damaged Parquet file (after row {read}): {err}") from None
        read += batch.num_rows
        yield batch


def read_csv(src: Source, file: Path, label: str, sub: str, delimiter: str = ",") -> Part:
    """CSV/TSV with a header row (RFC 4180 quoting). A row that does not parse is rejected, the others are read."""
    import pyarrow.csv as pcsv

    header = _csv_header(file, label, delimiter)
    if not header:
        return _empty(sub, label)
    names = _needed_columns(src, label, header)
    broken: list = []

    def on_invalid(row) -> str:  # noqa: ANN001 - pyarrow.csv.InvalidRow
        broken.append(row)
        return "skip"

    try:
        table = pcsv.read_csv(
            file, read_options=pcsv.ReadOptions(use_threads=False),  # one thread: invalid rows get their numbers
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(include_columns=names, column_types={c: pa.binary() for c in names}))
    except pa.ArrowInvalid as err:
        raise IngestError(f"source '{src.name}': cannot parse {label}: {err}") from None
    # pyarrow numbers rows from the header (= row 1); ours count records, so the first record is row 1
    bad_rows = np.array(sorted(r.number - 1 for r in broken), dtype=np.int64)
    bad = pd.DataFrame([_bad(sub, f"{label}:row {r.number - 1}", r.text.encode("utf-8", "replace"), "unparseable_row",
                             f"expected {r.expected_columns} fields, found {r.actual_columns}") for r in broken],
                       columns=BAD_COLUMNS)
    if table.num_rows + len(broken) == 0:
        return _empty(sub, label)
    good = np.arange(1, table.num_rows + 1)
    rows = good + np.searchsorted(bad_rows - np.arange(len(bad_rows)), good, side="right")  # skip the broken ones
    part = _table_part(src, file, label, sub, table, rows)
    return Part(part.docs, _concat([part.bad, bad], BAD_COLUMNS), part.n_read + len(broken))


def read_tsv(src: Source, file: Path, label: str, sub: str) -> Part:
    return read_csv(src, file, label, sub, delimiter="\t")


def _csv_header(file: Path, label: str, delimiter: str) -> list[str]:
    """The column names of the first row that is not empty, as pyarrow finds it (rows end at \\n, \\r\\n or \\r)."""
    with open(file, "rb") as fh:
        first = next((part for line in fh for part in line.rstrip(b"\n").split(b"\r") if part), b"")
    try:
        line = first.decode("utf-8-sig")
        return [c for c in next(csv.reader([line], delimiter=delimiter), []) if c.strip()] if line.strip() else []
    except UnicodeDecodeError:
        raise IngestError(f"{label}: the header row is not valid UTF-8") from None
    except csv.Error as err:
        raise IngestError(f"{label}: the header row cannot be parsed ({err})") from None


def _needed_columns(src: Source, label: str, have: list[str]) -> list[str]:
    """The columns this source names; one that the file lacks stops ingest (a typo would reject every row)."""
    want = {"text_field": src.text_field, "url_field": src.url_field, "timestamp_field": src.timestamp_field,
            "id_field": src.id_field, "domain: auto": "domain" if src.domain == "auto" else None}
    for key, col in want.items():
        if col is not None and col not in have:
            raise IngestError(f"source '{src.name}': {label} has no column '{col}' ({key}); "
                              f"its columns are {', '.join(map(repr, have)) or 'none'}")
    return list(dict.fromkeys(c for c in want.values() if c is not None))


def _table_part(src: Source, file: Path, label: str, sub: str, table: pa.Table, rows: np.ndarray) -> Part:
    """Documents from a table's columns, column-wise; ``rows`` holds each row's record number for its origin."""
    text, invalid = _text_column(table[src.text_field])
    for col in {src.url_field, src.timestamp_field, src.id_field} - {None, src.text_field}:
        invalid |= _text_column(table[col])[1]  # a URL or date that is not UTF-8 is as unusable as such text
    nums = pd.Series(rows, dtype="int64").astype(str)
    where = label + ":row " + nums
    docs = pd.DataFrame({"text": text, "source": sub, "url": _url_column(src, file, label, table, nums),
                         "timestamp": _timestamp_column(src, table), "domain": _domain_column(src, table),
                         "meta": _meta_column(src, table, where)})
    reason = pd.Series(None, index=text.index, dtype=object)
    reason[invalid] = "invalid_utf8"
    reason[(reason.isna() & (text.fillna("").str.strip() == "")).to_numpy()] = f"missing_text_field:{src.text_field}"
    unknown = (reason.isna() & ~docs["domain"].isin(DOMAINS)).to_numpy()
    reason[unknown] = "unknown_domain:" + docs["domain"][unknown].str.slice(0, 40)
    ok = reason.isna().to_numpy()
    bad = pd.DataFrame([_bad(sub, w, (t or "").encode()[:4 * SHOWN_CHARS], r)
                        for w, t, r in zip(where[~ok], text[~ok], reason[~ok], strict=True)], columns=BAD_COLUMNS)
    return Part(docs[ok], bad, len(rows))


def _url_column(src: Source, file: Path, label: str, table: pa.Table, nums: pd.Series) -> pd.Series:
    fallback = _url_base(file, label) + "#" + nums
    if not src.url_field:
        return fallback
    url = _text_column(table[src.url_field])[0].fillna("")
    return url.where(url.str.strip() != "", fallback)


def _timestamp_column(src: Source, table: pa.Table) -> pd.Series:
    if not src.timestamp_field:
        return pd.Series(None, index=range(table.num_rows), dtype=object)
    col = table[src.timestamp_field]
    return col.to_pandas() if pa.types.is_timestamp(col.type) else _text_column(col)[0]


def _domain_column(src: Source, table: pa.Table) -> pd.Series:
    if src.domain != "auto":
        return pd.Series(src.domain, index=range(table.num_rows), dtype=object)
    return _text_column(table["domain"])[0].fillna("").replace("", "general")  # as JSONL: no domain means general


def _meta_column(src: Source, table: pa.Table, where: pd.Series) -> pd.Series:
    """``{"origin", "licence"[, "native_id"]}`` as JSON, built by string ops (one json.dumps per row is slow)."""
    origin = where.map(json.dumps) if where.str.contains(r'["\\\x00-\x1f]', regex=True).any() else '"' + where + '"'
    meta = '{"origin": ' + origin + ', "licence": ' + json.dumps(src.licence)
    if src.id_field:
        col = table[src.id_field]
        ids = _text_column(col)[0] if pa.types.is_binary(col.type) else pd.Series(col.to_pylist(), dtype=object)
        meta = meta + ', "native_id": ' + pd.Series([json.dumps(v, default=str) for v in ids], dtype=object)
    return meta + "}"


def _text_column(col: pa.ChunkedArray) -> tuple[pd.Series, np.ndarray]:
    """A column as Python strings and a mask of the values that are not UTF-8 (decoded with U+FFFD for display)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # a Parquet string column is not checked by its reader: re-read its bytes, so that each value is validated
        col = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())
    elif not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return col.cast(pa.string()).to_pandas().astype(object), np.zeros(len(col), dtype=bool)
    try:
        return pc.cast(col, pa.large_string()).to_pandas().astype(object), np.zeros(len(col), dtype=bool)
    except pa.ArrowInvalid:
        pass  # some value is not UTF-8: find which, one by one
    values, bad = [], np.zeros(len(col), dtype=bool)
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            values.append(None)
            continue
        try:
            values.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            bad[i] = True
            values.append(v.decode("utf-8", "replace"))
    return pd.Series(values, dtype=object), bad


# ----------------------------------------------------------------------------- shared pieces
def _url_base(file: Path, label: str) -> str:
    """For records without a URL: their file as a URL the raw contract accepts (file:// or s3://); ``#n`` is added."""
    return label if label.startswith("s3://") else file.resolve().as_uri()


def _bad(source: str, where: str, raw: bytes, reason: str, error: str | None = None) -> dict:
    meta = {"origin": where} if error is None else {"origin": where, "error": error}
    return {"id": hashlib.sha1(where.encode()).hexdigest()[:20], "text": raw[:4 * SHOWN_CHARS].decode("utf-8", "replace")[:SHOWN_CHARS],
            "source": source, "url": "", "timestamp": None, "domain": "", "meta": json.dumps(meta),
            "reason": reason, "stage": "ingest"}


def _empty(sub: str, label: str) -> Part:
    """An empty file is one rejected row, so that the ledger shows a source file that gave nothing."""
    return Part(pd.DataFrame(columns=DOC_COLUMNS), pd.DataFrame([_bad(sub, label, b"", "empty_file")], columns=BAD_COLUMNS), 1)


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


READERS: dict[str, Callable[[Source, Path, str, str], Part]] = {
    "world": read_jsonl, "jsonl": read_jsonl, "parquet": read_parquet, "txt": read_txt, "csv": read_csv, "tsv": read_tsv,
}
