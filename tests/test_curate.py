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
    from fluxforge.config import load_params
    from fluxforge.world import generate_world

    params = load_params(ROOT / "params.yaml", profile="tiny")
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


def test_slices_curated_one_by_one_with_an_index_never_re_add_a_kept_document(tmp_path, capsys):
    """Slice 2 repeats (exactly and nearly) documents slice 1 kept: with --index they are rejected as duplicates."""
    words = "the of and to with that have be".split()
    docs = [" ".join(f"w{i}x{j}" if j % 3 else words[j % 8] for j in range(80)) + "." for i in range(6)]
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir(), s2.mkdir()
    row = lambda t, i, y: json.dumps({"text": t, "url": f"https://x.org/{y}/{i}", "timestamp": f"{y}-01-01"})  # noqa: E731
    (s1 / "a.jsonl").write_text("\n".join(row(t, i, 2023) for i, t in enumerate(docs[:4])) + "\n")
    near = docs[1].replace(docs[1].split()[40], "changed")  # one word of 80: Jaccard ~0.88
    (s2 / "b.jsonl").write_text("\n".join([row(docs[0], 0, 2024), row(near, 1, 2024), row(docs[4], 4, 2024)]) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("filters: {language: {enabled: false}, gopher_repetition: {enabled: false}, "
                   "gopher_quality: {enabled: false}, c4: {enabled: false}, fineweb: {enabled: false}}\n"
                   "source: {domain: general}\nrunner: {kind: serial}\n")
    index = tmp_path / "index"
    for s in (s1, s2):
        code, _, err = curate(capsys, "--input", str(s / "*.jsonl"), "--output", str(tmp_path / f"out-{s.name}"),
                              "--config", str(cfg), "--index", str(index))
        assert code == 0, err
    second = pd.read_parquet(tmp_path / "out-s2" / "rejected.parquet")
    assert sorted(second["reason"]) == ["exact_duplicate", "near_duplicate"]
    first_ids = set(pd.read_parquet(tmp_path / "out-s1" / "curated.parquet")["id"])
    assert {json.loads(m)["duplicate_of"] for m in second["meta"]} <= first_ids
    assert len(pd.read_parquet(tmp_path / "out-s2" / "curated.parquet")) == 1
    assert json.loads((tmp_path / "out-s2" / "ledger.json").read_text())["index"]["documents"] == 5
    # the same index with another dedup config is refused by name
    cfg.write_text(cfg.read_text() + "dedup: {bands: 10}\n")
    code, _, err = curate(capsys, "--input", str(s2 / "*.jsonl"), "--output", str(tmp_path / "o3"),
                          "--config", str(cfg), "--index", str(index))
    assert code == 2 and "different dedup config" in err
