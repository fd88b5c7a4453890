import json

import pandas as pd
import pytest

from fluxforge.config import Source
from fluxforge.data.documents import IngestError, Ledger, read_source


def _src(path, **kw) -> Source:
    return Source(name="t", format="jsonl", path=str(path), domain="general", **kw)


def test_bad_rows_are_rejected_with_reason_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    good = {"text": "hello world", "url": "https://a.org/1", "timestamp": "2024-01-02T00:00:00Z"}
    with open(f, "wb") as fh:
        fh.write((json.dumps(good) + "\n").encode())
        fh.write(b'{"text": "broken\n')
        fh.write(b'{"text": "bad \xff byte", "url": "u", "timestamp": "2024-01-01"}\n')
        fh.write((json.dumps({"url": "https://a.org/2", "timestamp": "2024-01-01"}) + "\n").encode())
        fh.write((json.dumps({**good, "timestamp": "not a date", "url": "https://a.org/3"}) + "\n").encode())
        fh.write((json.dumps(good) + "\n").encode())  # same record twice
        fh.write(b"[1, 2]\n")
    kept, rejected = read_source(_src(f))
    assert list(kept["text"]) == ["hello world"]
    reasons = sorted(rejected["reason"])
    assert reasons == sorted(["invalid_json", "invalid_utf8", "missing_text_field:text", "missing_or_bad_timestamp",
                              "duplicate_record", "not_an_object"])
    origins = {json.loads(m)["origin"] for m in rejected["meta"]}
    assert f"{f}:2" in origins and f"{f}:3" in origins
    ledger = Ledger("ingest")
    ledger.add(kept, rejected)
    ledger.check()
    assert ledger.to_dict()["ingested"] == 7


def test_ids_are_stable_across_reruns(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"doc {i}", "url": f"https://a.org/{i}", "timestamp": "2024-01-01"}) for i in range(5)))
    a, _ = read_source(_src(f))
    b, _ = read_source(_src(f))
    assert list(a["id"]) == list(b["id"]) and a["id"].is_unique


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="no input files"):
        read_source(_src(tmp_path / "nothing-*.jsonl"))


def test_ledger_detects_imbalance():
    led = Ledger("x")
    led.add(pd.DataFrame({"source": ["a"]}), pd.DataFrame({"source": ["a"], "reason": ["r"]}))
    led.ingested["a"] += 1
    with pytest.raises(AssertionError, match="does not balance"):
        led.check()
