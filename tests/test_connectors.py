"""Connectors: every format gives the raw schema, and every kind of bad input is a rejected row or a clear error."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from fluxforge.config import ParamsError, Source, parse_params
from fluxforge.data.connectors import IngestError
from fluxforge.data.documents import RAW_SCHEMA
from fluxforge.data.ledger import Ledger
from fluxforge.data.sources import read_source, source_files

URL_RE = re.compile(r"^(?:https?|s3|file)://")  # the raw contract's URL rule (fluxforge.data.contracts)
WIKI_HEADING = r"^ = [^=].* = $"  # level-1 WikiText heading; " = = Sub = = " is a subsection


def _src(path, fmt: str = "jsonl", **kw) -> Source:
    return Source(**{"name": "t", "format": fmt, "path": str(path), "domain": "general", **kw})


def _origins(df: pd.DataFrame) -> list[str]:
    return [json.loads(m)["origin"] for m in df["meta"]]


def _read_balanced(src: Source) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    kept, rejected, n = read_source(src)
    ledger = Ledger("ingest")
    ledger.add(kept, rejected, n)
    ledger.check()
    return kept, rejected, n


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(n))


def _check_raw(df: pd.DataFrame, licence: str) -> None:
    assert list(df.columns) == RAW_SCHEMA.names
    assert df["url"].map(lambda u: bool(URL_RE.match(u))).all()
    assert df["id"].is_unique and df["timestamp"].notna().all()
    metas = [json.loads(m) for m in df["meta"]]
    assert all(m["licence"] == licence and m["origin"] for m in metas)


# ----------------------------------------------------------------------------- formats
def test_tables_read_the_named_columns_with_row_origins(tmp_path):
    df = pd.DataFrame({"body": [f"document {i} text" for i in range(5)], "link": [f"https://x.org/{i}" for i in range(4)] + [""],
                       "when": [f"2024-01-0{i + 1}" for i in range(4)] + [""], "key": [10, 11, 12, 13, 14],
                       "other": range(5)})
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "a.parquet")
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_csv(tmp_path / "a.tsv", index=False, sep="\t")
    kw = {"text_field": "body", "url_field": "link", "timestamp_field": "when", "id_field": "key",
          "default_timestamp": "2020-06-01", "licence": "cc-by"}
    for fmt in ("parquet", "csv", "tsv"):
        f = tmp_path / f"a.{fmt}"
        kept, rejected, n = _read_balanced(_src(f, fmt, **kw))
        assert (len(kept), len(rejected), n) == (5, 0, 5), fmt
        _check_raw(kept, "cc-by")
        assert list(kept["text"]) == list(df["body"])
        assert _origins(kept) == [f"{f}:row {i}" for i in range(1, 6)]
        assert [json.loads(m)["native_id"] for m in kept["meta"]][:2] in ([10, 11], ["10", "11"])
        # a row without URL or timestamp: where it is, and the default date
        assert kept["url"].iloc[4] == f"{f.resolve().as_uri()}#5"
        assert kept["timestamp"].iloc[4] == pd.Timestamp("2020-06-01", tz="UTC")
        assert kept["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")


def test_an_origin_with_quotes_in_the_file_name_is_still_json(tmp_path):
    f = tmp_path / 'say "hi" \\ there.csv'
    f.write_text("text,url,timestamp\nhello,https://x.org/1,2024-01-01\n")
    kept, _, _ = _read_balanced(_src(f, "csv"))
    assert _origins(kept) == [f"{f}:row 1"]


def test_txt_splits_by_file_blank_lines_and_heading(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n = First = \n\nalpha one\n = = Part = = \nalpha two\n\n\n = Second = \nbeta\n")
    cases = {"file": 1, "blank_lines": 3, "heading": 2}
    for split, n_docs in cases.items():
        extra = {"heading_pattern": WIKI_HEADING} if split == "heading" else {}
        kept, rejected, n = _read_balanced(_src(f, "txt", txt_split=split, default_timestamp="2016-01-01", **extra))
        assert (len(kept), n) == (n_docs, n_docs) and rejected.empty, split
        _check_raw(kept, "generated")
        assert _origins(kept) == [f"{f}#block {i}" for i in range(1, n_docs + 1)]
        assert list(kept["url"]) == [f"{f.resolve().as_uri()}#{i}" for i in range(1, n_docs + 1)]
    heading, _, _ = read_source(_src(f, "txt", txt_split="heading", heading_pattern=WIKI_HEADING, default_timestamp="2016-01-01"))
    assert heading["text"].iloc[0].startswith("= First =") and "= = Part = =" in heading["text"].iloc[0]
    assert heading["text"].iloc[1] == "= Second =\nbeta"  # trailing spaces dropped per line


def test_jsonl_gz_and_ids_are_identical_on_two_reads(tmp_path):
    rows = [{"text": f"doc {i}", "timestamp": "2024-01-01", "doc_id": f"n{i}"} for i in range(4)]  # no url field
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "b.csv").write_text("text,url,timestamp\nzz,https://x.org/z,2024-02-02\n")
    for src in (_src(tmp_path / "a.jsonl.gz"), _src(tmp_path / "b.csv", "csv"), _src(tmp_path, "jsonl")):
        a, _, _ = read_source(src)
        b, _, _ = read_source(src)
        assert len(a) and list(a["id"]) == list(b["id"]) and a.equals(b)
    kept, _, _ = read_source(_src(tmp_path, "jsonl"))  # a folder: only the format's files
    assert len(kept) == 4 and [json.loads(m)["native_id"] for m in kept["meta"]] == ["n0", "n1", "n2", "n3"]
    assert kept["url"].iloc[2] == f"{(tmp_path / 'a.jsonl.gz').resolve().as_uri()}#3"


def test_read_source_can_read_a_subset_of_the_files(tmp_path):
    for k in range(3):
        (tmp_path / f"p{k}.jsonl").write_text(json.dumps({"text": f"part {k}", "url": f"https://x.org/{k}",
                                                          "timestamp": "2024-01-01"}) + "\n")
    src = _src(tmp_path / "p*.jsonl")
    files = source_files(src)
    assert len(files) == 3
    whole, _, _ = read_source(src)
    shards = [read_source(src, files=[f]) for f in files]
    assert [s[0]["id"].iloc[0] for s in shards] == list(whole["id"])
    assert _origins(shards[1][0]) == [f"{files[1]}:1"]
    with pytest.raises(IngestError, match="not found: .*nope.jsonl"):
        read_source(src, files=[tmp_path / "nope.jsonl"])


def test_default_timestamp_fills_only_absent_timestamps(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"text": "no time", "url": "https://x.org/1"},
                                                   {"text": "bad time", "url": "https://x.org/2", "timestamp": "soon"}]))
    kept, rejected, _ = _read_balanced(_src(f, default_timestamp="2023-05-01"))
    assert list(kept["text"]) == ["no time"] and kept["timestamp"].iloc[0] == pd.Timestamp("2023-05-01", tz="UTC")
    assert list(rejected["reason"]) == ["missing_or_bad_timestamp"] and _origins(rejected) == [f"{f}:2"]


# ----------------------------------------------------------------------------- real files
def test_wikitext_heading_split_gives_one_document_per_article():
    f = SHARED_DATA / "general" / "wikitext2_valid.txt"
    if not f.exists():
        pytest.skip(f"{f} is not here")
    lines = f.read_text(encoding="utf-8").splitlines()
    articles = sum(bool(re.search(WIKI_HEADING, line)) for line in lines)
    subsections = sum(line.startswith(" = = ") for line in lines)
    kept, rejected, n = _read_balanced(_src(f, "txt", txt_split="heading", heading_pattern=WIKI_HEADING,
                                            default_timestamp="2016-09-26", licence="CC BY-SA 3.0"))
    assert len(kept) == articles == n and rejected.empty
    _check_raw(kept, "CC BY-SA 3.0")
    assert kept["text"].str.count(r"(?m)^ = = ").sum() == subsections > 0  # subsections stay inside their article


def test_cti_tsv_reads_every_row_with_its_url():
    f = SHARED_DATA / "cyber" / "cti-rcm.tsv"
    if not f.exists():
        pytest.skip(f"{f} is not here")
    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    src = _src(f, "tsv", text_field="Description", url_field="URL", timestamp_field=None, domain="cyber",
               default_timestamp="2024-06-01", licence="CC BY-NC-SA 4.0")
    kept, rejected, n = _read_balanced(src)
    assert (len(kept) + len(rejected), n) == (len(rows), len(rows))
    assert set(rejected["reason"]) <= {"duplicate_record"}  # CTI-Bench repeats some CVEs
    _check_raw(kept, "CC BY-NC-SA 4.0")
    assert list(kept["url"])[:3] == [r["URL"] for r in rows][:3] and (kept["domain"] == "cyber").all()


# ----------------------------------------------------------------------------- bad input
def test_truncated_gzip_keeps_the_lines_before_the_break(tmp_path):
    rng = random.Random(0)
    lines = [json.dumps({"text": _words(rng, 30), "url": f"https://x.org/{i}", "timestamp": "2024-01-01"}) for i in range(400)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    f = tmp_path / "cut.jsonl.gz"
    f.write_bytes(whole[: len(whole) // 2])
    kept, rejected, n = _read_balanced(_src(f))
    assert 0 < len(kept) < len(lines) and list(kept["text"]) == [json.loads(x)["text"] for x in lines[: len(kept)]]
    assert list(rejected["reason"]) == ["truncated_gzip"] and n == len(kept) + 1
    assert _origins(rejected) == [f"{f}:{len(kept) + 1}"]


def test_invalid_utf8_is_rejected_in_jsonl_txt_and_csv(tmp_path):
    j, t, c = tmp_path / "a.jsonl", tmp_path / "a.txt", tmp_path / "a.csv"
    j.write_bytes(b'{"text": "fine", "url": "https://x.org/1", "timestamp": "2024-01-01"}\n{"text": "bad \xff", "timestamp": "2024-01-01"}\n')
    t.write_bytes(b"first block\n\nsecond \xc3\x28 block\n\nthird block\n")
    c.write_bytes(b"text,url\nfine,https://x.org/1\nbad \xff\xfe,https://x.org/2\nalso fine,https://x.org/3\n")
    cases = [(_src(j), f"{j}:2", 1), (_src(t, "txt", txt_split="blank_lines", default_timestamp="2024-01-01"), f"{t}#block 2", 2),
             (_src(c, "csv", timestamp_field=None, default_timestamp="2024-01-01"), f"{c}:row 2", 2)]
    for src, origin, n_kept in cases:
        kept, rejected, _ = _read_balanced(src)
        assert list(rejected["reason"]) == ["invalid_utf8"] and _origins(rejected) == [origin], src.format
        assert len(kept) == n_kept and "\ufffd" in rejected["text"].iloc[0]  # shown, not lost
    kept, _, _ = read_source(cases[2][0])
    assert _origins(kept) == [f"{c}:row 1", f"{c}:row 3"]


def test_a_line_that_is_not_json_and_a_missing_text_are_rejected(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "ok", "url": "https://x.org/1", "timestamp": "2024-01-01"}\nnot json at all\n'
                 '{"body": "wrong key", "timestamp": "2024-01-01"}\n')
    kept, rejected, _ = _read_balanced(_src(f))
    assert len(kept) == 1
    assert sorted(zip(rejected["reason"], _origins(rejected))) == [("invalid_json", f"{f}:2"), ("missing_text_field:text", f"{f}:3")]
    c = tmp_path / "a.csv"
    c.write_text('text,url\nok,https://x.org/1\n"   ",https://x.org/2\n,https://x.org/3\n')
    kept, rejected, _ = _read_balanced(_src(c, "csv", timestamp_field=None, default_timestamp="2024-01-01"))
    assert list(kept["text"]) == ["ok"] and list(rejected["reason"]) == ["missing_text_field:text"] * 2
    assert _origins(rejected) == [f"{c}:row 2", f"{c}:row 3"]


def test_a_parquet_file_with_another_schema_stops_ingest_naming_the_column(tmp_path):
    good, other = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": ["fine"], "url": ["https://x.org/1"], "timestamp": ["2024-01-01"]}), good)
    pq.write_table(pa.table({"body": ["x"], "url": ["https://x.org/2"], "timestamp": ["2024-01-01"]}), other)
    with pytest.raises(IngestError, match=r"b\.parquet has no column 'text' \(text_field\); its columns are 'body', 'url', 'timestamp'"):
        read_source(_src(tmp_path / "*.parquet", "parquet"))
    (tmp_path / "c.csv").write_text("Body,URL\nx,https://x.org\n")
    with pytest.raises(IngestError, match=r"c\.csv has no column 'Description' .*'Body', 'URL'"):
        read_source(_src(tmp_path / "c.csv", "csv", text_field="Description", url_field="URL", timestamp_field=None,
                         default_timestamp="2024-01-01"))


def test_an_empty_file_is_a_rejected_row_naming_it(tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "url": pa.array([], pa.string()),
                             "timestamp": pa.array([], pa.string())}), tmp_path / "none.parquet")
    gzip.open(tmp_path / "e.jsonl.gz", "wb").close()
    for name, fmt in [("e.jsonl", "jsonl"), ("e.jsonl.gz", "jsonl"), ("e.csv", "csv"), ("h.csv", "csv"), ("e.txt", "txt"),
                      ("e.parquet", "parquet"), ("none.parquet", "parquet")]:
        f = tmp_path / name
        if not f.exists():
            f.write_text("text,url,timestamp\n" if name == "h.csv" else ("\n\n" if name.endswith(".jsonl") else ""))
        extra = {"txt_split": "file", "default_timestamp": "2024-01-01"} if fmt == "txt" else {}
        kept, rejected, n = _read_balanced(_src(f, fmt, **extra))
        assert kept.empty and n == 1 and list(rejected["reason"]) == ["empty_file"], name
        assert _origins(rejected) == [str(f)]


def test_a_50mb_document_is_rejected_too_long_quickly_and_kept_whole(tmp_path):
    big = "word " * 10_000_000  # 50 MB
    f = tmp_path / "big.jsonl"
    f.write_text(json.dumps({"text": "a normal document", "url": "https://x.org/1", "timestamp": "2024-01-01"}) + "\n"
                 + json.dumps({"text": big, "url": "https://x.org/2", "timestamp": "2024-01-01"}) + "\n")
    t = tmp_path / "big.txt"
    t.write_text(big)
    for src, origin in [(_src(f), f"{f}:2"), (_src(t, "txt", txt_split="file", default_timestamp="2024-01-01"), f"{t}#block 1")]:
        start = time.perf_counter()
        kept, rejected, _ = _read_balanced(src)
        assert time.perf_counter() - start < 5
        assert list(rejected["reason"]) == ["too_long"] and _origins(rejected) == [origin]
        assert len(rejected["text"].iloc[0]) == len(big.strip() if src.format == "txt" else big)  # the full row
    kept, rejected, _ = read_source(_src(f, max_doc_chars=100_000_000))
    assert len(kept) == 2 and rejected.empty


def test_an_unparseable_csv_row_is_rejected_and_later_rows_keep_their_numbers(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text('text,url\none,https://x.org/1\ntwo,https://x.org/2,surplus\n"three\nlines",https://x.org/3\nfour\n'
                 'five,https://x.org/5\n')
    kept, rejected, n = _read_balanced(_src(f, "csv", timestamp_field=None, default_timestamp="2024-01-01"))
    assert n == 5 and list(kept["text"]) == ["one", "three\nlines", "five"]
    assert _origins(kept) == [f"{f}:row 1", f"{f}:row 3", f"{f}:row 5"]
    assert list(rejected["reason"]) == ["unparseable_row"] * 2 and _origins(rejected) == [f"{f}:row 2", f"{f}:row 4"]
    assert json.loads(rejected["meta"].iloc[0])["error"] == "expected 2 fields, found 3"
    assert rejected["text"].iloc[0] == "two,https://x.org/2,surplus"


# ----------------------------------------------------------------------------- Source validation
@pytest.mark.parametrize(("change", "message"), [
    ({"format": "txt"}, "format txt needs txt_split"),
    ({"format": "txt", "txt_split": "file"}, "format txt has no per-record domain"),
    ({"format": "txt", "txt_split": "file", "domain": "general"}, "format txt has no timestamps: set default_timestamp"),
    ({"format": "jsonl", "txt_split": "file"}, "txt_split applies to format txt only"),
    ({"format": "txt", "txt_split": "heading", "domain": "general", "default_timestamp": "2024-01-01"}, "heading_pattern is required"),
    ({"format": "txt", "txt_split": "heading", "heading_pattern": "(", "domain": "general", "default_timestamp": "2024-01-01"},
     "not a valid regular expression"),
    ({"format": "csv", "default_timestamp": "last spring"}, "default_timestamp must be an ISO date"),
    ({"format": "csv", "timestamp_field": None}, "timestamp_field is null: set default_timestamp"),
    ({"format": "xml"}, "data.sources.0.format"),
    ({"max_doc_chars": 0}, "data.sources.0.max_doc_chars"),
])
def test_source_mistakes_are_explained(tiny_raw, change, message):
    tiny_raw["data"]["sources"][0].update(change)
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(tiny_raw)


def test_an_unquoted_yaml_date_is_a_default_timestamp(tiny_raw):
    import datetime as dt

    tiny_raw["data"]["sources"][0].update({"format": "csv", "timestamp_field": None, "default_timestamp": dt.date(2024, 3, 1)})
    assert parse_params(tiny_raw).data.sources[0].default_timestamp == "2024-03-01"
