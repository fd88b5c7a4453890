import json

import pandas as pd
import pytest

from fluxforge.config import Source
from fluxforge.data.connectors import IngestError
from fluxforge.data.ledger import Ledger
from fluxforge.data.sources import read_source


def _src(path, **kw) -> Source:
    return Source(**{"name": "t", "format": "jsonl", "path": str(path), "domain": "general", **kw})


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
        fh.write(b'{"text": "lone \\ud800 surrogate", "url": "https://a.org/4", "timestamp": "2024-01-01"}\n')
        fh.write((json.dumps({**good, "url": "https://a.org/5", "domain": "medical"}) + "\n").encode())
    kept, rejected, n_read = read_source(_src(f, domain="auto"))
    assert list(kept["text"]) == ["hello world"] and n_read == 9
    reasons = sorted(rejected["reason"])
    assert reasons == sorted(["invalid_json", "invalid_utf8", "missing_text_field:text", "missing_or_bad_timestamp",
                              "duplicate_record", "not_an_object", "invalid_unicode", "unknown_domain:medical"])
    origins = {json.loads(m)["origin"] for m in rejected["meta"]}
    assert f"{f}:2" in origins and f"{f}:3" in origins
    ledger = Ledger("ingest")
    ledger.add(kept, rejected, n_read)
    ledger.check()
    assert ledger.to_dict()["ingested"] == 9 == ledger.to_dict()["kept"] + ledger.to_dict()["rejected"]


def test_a_bad_timestamp_copy_does_not_shadow_the_good_record(tmp_path):
    f = tmp_path / "a.jsonl"
    rec = {"text": "same text", "url": "https://a.org/1"}
    f.write_text(json.dumps({**rec, "timestamp": "garbage"}) + "\n" + json.dumps({**rec, "timestamp": "2024-01-01"}) + "\n")
    kept, rejected, _ = read_source(_src(f))
    assert len(kept) == 1 and list(rejected["reason"]) == ["missing_or_bad_timestamp"]


def test_ids_are_stable_across_reruns(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"doc {i}", "url": f"https://a.org/{i}", "timestamp": "2024-01-01"}) for i in range(5)))
    a, _, _ = read_source(_src(f))
    b, _, _ = read_source(_src(f))
    assert list(a["id"]) == list(b["id"]) and a["id"].is_unique


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="no input files"):
        read_source(_src(tmp_path / "nothing-*.jsonl"))


def test_ledger_detects_a_row_lost_without_a_record():
    led = Ledger("x")
    led.add(pd.DataFrame({"source": ["a"]}), pd.DataFrame({"source": ["a"], "reason": ["r"]}), received=3)
    with pytest.raises(AssertionError, match="3 rows in, 1 kept \\+ 1 rejected"):
        led.check()
