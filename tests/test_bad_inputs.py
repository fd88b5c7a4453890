"""The bad-input catalogue: each input gets a clear error naming it, or a rejected row with a reason, never a
bare traceback or a silent skip; and names read from files never become paths outside their folder.

Elsewhere: duplicate keys in params.yaml (test_config) and in a profile (test_profiles); truncated gzip, invalid
UTF-8, unparseable CSV rows (test_connectors); a DeepSpeed state naming a missing, corrupt or foreign tag
(test_deepspeed); hostile S3 keys on the S3 server process (test_ingest_s3); random files (test_reader_fuzz).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fluxforge.config import ParamsError, Source, load_params, parse_params, read_params
from fluxforge.data.connectors import IngestError
from fluxforge.data.ledger import Ledger
from fluxforge.data.sources import read_source
from fluxforge.eval.tasks import TaskFileError, load_task
from fluxforge.paths import UnsafeNameError, within
from fluxforge.train.model import ModelLoadError, load_pretrained

LINES = [json.dumps({"text": f"Line {i} of a corpus that compresses well, line {i}.", "url": f"https://x.org/{i}",
                     "timestamp": "2024-01-01"}) for i in range(300)]


def _src(path, fmt: str = "jsonl", **kw) -> Source:
    return Source(**{"name": "t", "format": fmt, "path": str(path), "domain": "general", "url_field": None, **kw})


def _balanced(src: Source):  # noqa: ANN202
    kept, rejected, n = read_source(src)
    ledger = Ledger("ingest")
    ledger.add(kept, rejected, n)
    ledger.check()
    return kept, rejected, n


def _reasons(rejected) -> list[str]:  # noqa: ANN001
    return list(rejected["reason"])


# ----------------------------------------------------------------------------- gzip
def test_a_corrupt_gzip_keeps_no_line_and_rejects_every_one_by_name(tmp_path):
    """Deflate decodes damaged bytes into plausible garbage ("corrpus", "liine") before it notices; those lines
    are valid JSON, so only rejecting the whole file keeps them out. Nothing is lost: each is a rejected row."""
    whole = bytearray(gzip.compress(("\n".join(LINES) + "\n").encode(), mtime=0))
    whole[len(whole) // 2: len(whole) // 2 + 6] = b"\xff" * 6  # inside the deflate stream, not a cut
    f = tmp_path / "damaged.jsonl.gz"
    f.write_bytes(bytes(whole))
    kept, rejected, n = _balanced(_src(f))
    assert kept.empty and set(_reasons(rejected)) <= {"corrupt_gzip", "invalid_json"} and n == len(rejected)
    assert _reasons(rejected)[-1] == "corrupt_gzip" and 0 < len(rejected) - 1 < len(LINES)
    first = rejected[[json.loads(m)["origin"] == f"{f}:1" for m in rejected["meta"]]]
    assert list(first["text"]) == [json.loads(LINES[0])["text"]]  # an intact line: shown, not lost
    assert json.loads(first["meta"].iloc[0])["error"].startswith("the gzip stream is corrupt at line")


def test_a_gzip_whose_checksum_is_wrong_keeps_no_line(tmp_path):
    whole = bytearray(gzip.compress(("\n".join(LINES[:5]) + "\n").encode(), mtime=0))
    whole[-8:-4] = (zlib.crc32(b"something else")).to_bytes(4, "little")  # the CRC32 trailer
    f = tmp_path / "crc.jsonl.gz"
    f.write_bytes(bytes(whole))
    kept, rejected, n = _balanced(_src(f))
    assert kept.empty and _reasons(rejected) == ["corrupt_gzip"] * 6 and n == 6
    assert "CRC check failed" in json.loads(rejected["meta"].iloc[-1])["error"]


# ----------------------------------------------------------------------------- parquet and columns
def test_a_file_named_parquet_that_is_not_parquet_stops_ingest_naming_it(tmp_path):
    f = tmp_path / "notes.parquet"
    f.write_text("text,url\nthis is a CSV file under a Parquet name,https://x.org/1\n")
    with pytest.raises(IngestError, match=rf"source 't': {f} is not a readable Parquet file"):
        read_source(_src(f, "parquet"))


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")
    return buf.getvalue()


def test_a_damaged_parquet_page_stops_ingest_naming_the_file(tmp_path):
    data = bytearray(_parquet_bytes(pa.table({"text": [f"row {i}" for i in range(50)], "timestamp": ["2024-01-01"] * 50})))
    at = data.index(b"row 0") - 12  # the first data page's header: its thrift no longer parses
    data[at:at + 8] = b"\xff" * 8
    f = tmp_path / "damaged.parquet"
    f.write_bytes(bytes(data))
    with pytest.raises(IngestError, match=rf"{f} is a damaged Parquet file"):
        read_source(_src(f, "parquet"))


def test_a_text_column_that_is_not_text(tmp_path):
    f = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2], "timestamp": ["2024-01-01"] * 2}), f)
    with pytest.raises(IngestError, match=rf"{f}: column 'text' holds int64, not text"):
        read_source(_src(f, "parquet"))
    j = tmp_path / "numbers.jsonl"
    j.write_text('{"text": 42, "timestamp": "2024-01-01"}\n{"text": ["a", "list"], "timestamp": "2024-01-01"}\n'
                 '{"text": "fine", "timestamp": "2024-01-01"}\n')
    kept, rejected, _ = _balanced(_src(j))
    assert list(kept["text"]) == ["fine"] and _reasons(rejected) == ["missing_text_field:text"] * 2


def test_a_parquet_string_column_holding_bytes_that_are_not_utf8_is_a_rejected_row(tmp_path):
    good = _parquet_bytes(pa.table({"text": ["first fine row", "Document two", "third fine row"],
                                    "timestamp": ["2024-01-01"] * 3}))
    f = tmp_path / "latin1.parquet"
    f.write_bytes(good.replace(b"Document two", b"Docum\xe9nt two", 1))  # a writer that did not check UTF-8
    kept, rejected, _ = _balanced(_src(f, "parquet"))
    assert list(kept["text"]) == ["first fine row", "third fine row"]
    assert _reasons(rejected) == ["invalid_utf8"] and json.loads(rejected["meta"].iloc[0])["origin"] == f"{f}:row 2"


def test_a_csv_header_after_blank_lines_is_found_and_an_unreadable_header_is_named(tmp_path):
    f = tmp_path / "blank-start.csv"
    f.write_text("\n\r\ntext,url\nhello there,https://x.org/1\n")
    kept, _, n = _balanced(_src(f, "csv", timestamp_field=None, default_timestamp="2024-01-01"))
    assert list(kept["text"]) == ["hello there"] and n == 1  # not an "empty file"
    f.write_text("x" * 200_000 + ",url\nhello,https://x.org/1\n")  # beyond the csv module's field size limit
    with pytest.raises(IngestError, match=rf"{f}: the header row cannot be parsed .field larger than field limit"):
        read_source(_src(f, "csv", timestamp_field=None, default_timestamp="2024-01-01"))


# ----------------------------------------------------------------------------- params
@pytest.mark.parametrize("text", ["", "\n   \n", "# only a comment\n"])
def test_an_empty_params_file_is_named_as_empty(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=rf"{path}: the file is empty"):
        load_params(path)


def test_names_read_from_params_never_leave_their_folder(tiny_raw, tmp_path):
    source = tiny_raw["data"]["sources"][0]
    for name in ("../escape", "/abs", "a/b", ".hidden", ""):
        with pytest.raises(ParamsError, match="data.sources.0.name"):
            parse_params({**tiny_raw, "data": {**tiny_raw["data"], "sources": [{**source, "name": name}]}})
    (tmp_path / "profiles").mkdir()
    (tmp_path / "params.yaml").write_text("world: {seed: 1}\n")
    with pytest.raises(ParamsError, match=r"profile 'x\\x00y' is not a profile name: it holds a NUL byte"):
        read_params(tmp_path / "params.yaml", profile="x\x00y")


def test_a_refresh_takes_profiles_only_from_its_repository(tmp_path):
    from fluxforge.orchestrate.params import apply_params

    repo, outside = tmp_path / "repo", tmp_path / "elsewhere.yaml"
    repo.mkdir()
    (repo / "params.yaml").write_text("world: {seed: 1}\n")
    outside.write_text("world: {seed: 2}\n")
    for profile in (str(outside), "../elsewhere.yaml"):
        with pytest.raises(ParamsError, match="is outside the repository"):
            apply_params(repo, profile, [])
    assert (repo / "params.yaml").read_text() == "world: {seed: 1}\n"


def test_within_refuses_every_escape(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert within(tmp_path / "root", "a/./b.jsonl") == tmp_path / "root" / "a" / "b.jsonl"
    for name, why in [("../x", "'..'"), ("a/../../x", "'..'"), ("/etc/passwd", "absolute"), ("", "empty"),
                      ("a\x00b", "NUL"), ("link/x", "symbolic link")]:
        with pytest.raises(UnsafeNameError, match=why):
            within(tmp_path / "root", name)


# ----------------------------------------------------------------------------- eval task files
@pytest.mark.parametrize("case", ["missing", "directory", "not utf-8", "undetectable", "unknown format"])
def test_a_task_file_that_cannot_be_read_is_named_with_the_reason(tmp_path, case):
    path = tmp_path / "task.json"
    fmt, why = None, {"missing": "no such task file", "directory": "is a directory, not a task file",
                      "not utf-8": r"not UTF-8 text \(byte 12\)", "undetectable": "cannot tell the task format",
                      "unknown format": "unknown format 'mmlu'"}[case]
    if case == "directory":
        path.mkdir()
    elif case == "not utf-8":
        path.write_bytes(b'{"questions"\xff: []}')
    elif case == "undetectable":
        path.write_text("Which port does HTTPS use?\nA) 80\nB) 443\n")
    elif case == "unknown format":
        path.write_text('{"questions": []}')
        fmt = "mmlu"
    with pytest.raises(TaskFileError, match=rf"{path}: {why}"):
        load_task(path, fmt)


def test_the_eval_command_exits_2_naming_a_bad_task_file(tmp_path, capsys):
    from fluxforge.cli import main

    (tmp_path / "t.txt").write_text("no format here\n")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tmp_path / "m"), "--task", str(tmp_path / "t.txt"), "--format", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err or "unknown format 'nope'" in err
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tmp_path / "m"), "--task", str(tmp_path / "t.txt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "cannot tell the task format" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- sharded safetensors
@pytest.fixture
def sharded(tmp_path, tiny_lm):  # noqa: ANN001, ANN201
    tiny_lm.config.architectures = ["LlamaForCausalLM"]
    tiny_lm.save_pretrained(tmp_path / "m", safe_serialization=True, max_shard_size="40KB")
    index = tmp_path / "m" / "model.safetensors.index.json"
    assert index.exists() and len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    return tmp_path / "m", index


def test_a_sharded_index_naming_a_missing_shard_is_named(sharded):
    path, index = sharded
    load_pretrained(path)  # intact: loads
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=rf"{index}: lists shards that are missing: \['{shard.name}'\]"):
        load_pretrained(path)


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../outside.safetensors"])
def test_a_sharded_index_entry_outside_the_model_directory_is_refused(sharded, entry):
    path, index = sharded
    outside = path.parent / "outside.safetensors"
    first = sorted(path.glob("model-*.safetensors"))[0]
    outside.write_bytes(first.read_bytes())  # a real shard sits there: only the name rule stops the load
    mapping = json.loads(index.read_text())
    key = next(k for k, v in mapping["weight_map"].items() if v == first.name)
    mapping["weight_map"][key] = entry
    index.write_text(json.dumps(mapping))
    with pytest.raises(ModelLoadError, match=rf"{index}: weight_map names a shard outside the model directory"):
        load_pretrained(path)
