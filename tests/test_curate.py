"""`fluxforge curate`: ingest -> filter -> dedup on any corpus, outside the DAG, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fluxforge.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny world's jsonl sources (planted defects and duplicates), one broken line, one exact copy."""
    import yaml

    from fluxforge.config import parse_params
    from fluxforge.world import generate_world

    params = parse_params(yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text()))
    world = tmp_path_factory.mktemp("world")
    generate_world(params.world, world)
    out = tmp_path_factory.mktemp("corpus")
    for f in (world / "sources").glob("*.jsonl"):
        shutil.copy(f, out / f.name)
    news = out / "news.jsonl"
    first = news.read_text().splitlines()[0]
    with open(news, "a") as fh:
        fh.write('{"text": "a broken record\n')  # invalid JSON: rejected at ingest with its line
    (out / "copy.jsonl").write_text(first.replace('"https://', '"https://mirror.') + "\n")  # same text, other URL
    return out


def curate(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["curate", *args])
    got = capsys.readouterr()
    return exit_.value.code, got.out, got.err


def test_curate_writes_tables_and_a_balanced_ledger(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "curate.yaml"
    cfg.write_text("runner: {kind: serial, shard_docs: 40}\nsource: {licence: cc-by-4.0}\n")
    code, stdout, _ = curate(capsys, "--input", str(corpus / "*.jsonl"), "--output", str(out), "--config", str(cfg))
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"curated.parquet", "rejected.parquet", "ledger.json"}  # work dir gone

    ledger = json.loads((out / "ledger.json").read_text())
    curated, rejected = pd.read_parquet(out / "curated.parquet"), pd.read_parquet(out / "rejected.parquet")
    n_lines = sum(1 for f in corpus.glob("*.jsonl") for line in f.read_text().splitlines() if line.strip())
    stages = ledger["stages"]
    assert stages["ingest"]["ingested"] == n_lines
    for name, st in stages.items():
        assert st["ingested"] == st["kept"] + st["rejected"], name
        assert sum(st["rejected_by_reason"].values()) == st["rejected"]
        for src, per in st["by_source"].items():
            assert per["ingested"] == per["kept"] + sum(per["rejected"].values()), (name, src)
    assert stages["filter"]["ingested"] == stages["ingest"]["kept"] and stages["dedup"]["ingested"] == stages["filter"]["kept"]
    assert ledger["funnel"] == {"read": n_lines, "after_ingest": stages["ingest"]["kept"],
                                "after_filter": stages["filter"]["kept"], "after_dedup": len(curated)}
    assert ledger["shards"]["filter"]["shards"] > 1

    # every rejected row is in rejected.parquet with its stage and reason, and no document is in both tables
    assert len(rejected) == sum(st["rejected"] for st in stages.values())
    assert set(rejected["stage"]) == {"ingest", "filter", "dedup"} and rejected["reason"].str.len().min() > 0
    assert rejected.groupby("stage").size().to_dict() == {s: st["rejected"] for s, st in stages.items()}
    assert not set(curated["id"]) & set(rejected.loc[rejected["stage"] != "ingest", "id"])
    assert stages["ingest"]["rejected_by_reason"].get("invalid_json") == 1
    assert stages["dedup"]["rejected"] >= 1  # the exact copy under another URL, at least
    assert all(json.loads(m)["licence"] == "cc-by-4.0" for m in curated["meta"])  # the source: section was applied

    assert "stage" in stdout and f"({len(curated)} documents)" in stdout
    for name, st in stages.items():
        assert f"{name:8s} {st['ingested']:9d} {st['kept']:9d} {st['rejected']:9d}" in stdout


def test_sharding_does_not_change_the_curated_corpus(corpus, tmp_path, capsys):
    outs = {}
    for shard_docs in (25, 100_000):
        cfg = tmp_path / f"c{shard_docs}.yaml"
        cfg.write_text(f"runner: {{kind: serial, shard_docs: {shard_docs}}}\n")
        out = tmp_path / str(shard_docs)
        assert curate(capsys, "--input", str(corpus), "--output", str(out), "--config", str(cfg))[0] == 0
        outs[shard_docs] = {f: (out / f).read_bytes() for f in ("curated.parquet", "rejected.parquet")}
    assert outs[25] == outs[100_000]


@pytest.mark.parametrize("text,key", [
    ("filters:\n  gopher_qualty: {enabled: false}\n", "filters.gopher_qualty"),
    ("source: {text_feild: body}\n", "source.text_feild"),
    ("runner: {kind: spark}\n", "runner.kind"),
    ("dedup: {bands: '14'}\n", "dedup.bands"),
    ("sources: {}\n", "sources"),
    ("source: {path: elsewhere}\n", "source.path"),
])
def test_bad_config_exits_2_naming_the_key(corpus, tmp_path, capsys, text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, stdout, err = curate(capsys, "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "out"), "--config", str(cfg))
    assert code == 2 and stdout == ""
    assert str(cfg) in err and key in err
    assert not (tmp_path / "out").exists()  # nothing was read or written


def test_no_input_files_or_unknown_suffix_exit_2(tmp_path, capsys):
    code, _, err = curate(capsys, "--input", str(tmp_path / "nothing" / "*.jsonl"), "--output", str(tmp_path / "out"))
    assert code == 2 and "no input files" in err
    (tmp_path / "notes.md").write_text("# not a corpus\n")
    code, _, err = curate(capsys, "--input", str(tmp_path / "*"), "--output", str(tmp_path / "out"))
    assert code == 2 and "notes.md: unknown input format" in err and ".jsonl.gz" in err


def test_txt_input_needs_its_source_settings(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one document\n")
    code, _, err = curate(capsys, "--input", str(tmp_path / "*.txt"), "--output", str(tmp_path / "out"))
    assert code == 2 and "txt_split" in err and "[txt files]" in err
