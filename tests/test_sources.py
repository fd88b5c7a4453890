"""Your own corpus in one step (issue 22): `fluxforge source add|list|remove`, and the four trip-ups of adding a
source by hand, each a test: txt_split, dateless files, an unquoted date that DVC cannot read, and a pipeline
that failed without an activated venv and missed edits to the source's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from own_corpus import set_date, write_corpus
from pipeline_repo import make_repo, ran
from pipeline_repo import run as run_in

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv this test runs in: the repository's .venv in the copies below
NO_VENV_PATH = "/usr/bin:/bin"


def fluxforge(repo: Path, *argv: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run `fluxforge ARGV` in ``repo`` (in this process: the CLI's own parser and functions); (exit code, out, err)."""
    from fluxforge.cli import build_parser

    monkeypatch.chdir(repo)
    args = build_parser().parse_args(list(argv))
    code = args.fn(args)
    out, err = capsys.readouterr()
    return code, out, err


def venv_dvc(repo: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`.venv/bin/dvc ARGV` as a person runs it after `make install` without activating the venv: no venv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FLUXFORGE_PYTHON", "MLFLOW_TRACKING_URI")}
    env.update(PATH=NO_VENV_PATH, FLUXFORGE_PROGRESS="0", DVC_NO_ANALYTICS="1")
    proc = subprocess.run([str(repo / ".venv" / "bin" / "dvc"), *argv], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def with_venv(repo: Path) -> Path:
    """Give ``repo`` a .venv as `make install` does (here: this test's own environment, linked)."""
    (repo / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    return repo


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A tiny-profile pipeline repository, not reproduced; tests copy it."""
    return make_repo(tmp_path_factory.mktemp("sources") / "fresh")


@pytest.fixture
def repo(fresh, tmp_path) -> Path:
    shutil.copytree(fresh, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def ingest_entry(repo: Path, name: str) -> dict:
    return next(s for s in yaml.safe_load((repo / "params.yaml").read_text())["data"]["sources"] if s["name"] == name)


def ingest_deps(repo: Path) -> list[str]:
    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["ingest"]["deps"]


# ----------------------------------------------------------------------------- guesses
def test_fields_are_guessed_from_the_first_records(tmp_path):
    from fluxforge.data import guess

    rows = [{"id": i, "title": f"Advisory {i}", "body": f"A long description of flaw number {i} in the parser. " * 3,
             "link": f"https://vendor.example/adv/{i}", "published": f"2023-0{i % 9 + 1}-15", "note": "see vendor"}
            for i in range(12)]
    assert guess.pick_text(rows) == guess.Pick("body", "named like text", guess.pick_text(rows).seen)
    assert guess.pick_url(rows, "body").value == "link"
    assert guess.pick_timestamp(rows, ["body", "link"]).value == "published"
    # names alone decide nothing: a "text" column of titles loses to the long column, a "date" of words is no date
    titled = [{"text": r["title"], "abstract": r["body"], "date": "soon"} for r in rows]
    assert guess.pick_text(titled).value == "abstract"
    assert guess.pick_timestamp(titled, ["abstract"]).value is None
    assert guess.pick_url(titled, "abstract").value is None
    csv = tmp_path / "cti.tsv"
    pd.DataFrame(rows).rename(columns={"body": "Description", "link": "URL"}).to_csv(csv, sep="\t", index=False)
    records = guess.first_records(csv, "tsv")
    assert len(records) == 12 and guess.pick_text(records).value == "Description"
    assert guess.pick_url(records, "Description").value == "URL"
    pq = tmp_path / "t.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    assert guess.pick_timestamp(guess.first_records(pq, "parquet"), ["body"]).value == "published"


def test_format_comes_from_the_suffix_and_mixed_folders_ask_for_one(tmp_path):
    from fluxforge.data import guess
    from fluxforge.data.connectors import IngestError

    assert [guess.format_of(n) for n in ("a.jsonl.gz", "b.TSV", "c.parquet", "d.md")] == ["jsonl", None, "parquet", None]
    assert guess.one_format(["a.txt", "b.txt", "notes.md"]).value == "txt"
    with pytest.raises(IngestError, match=r"several formats \(2 csv, 1 jsonl\).*--format"):
        guess.one_format(["a.csv", "b.csv", "c.jsonl"])


def test_a_source_is_watched_through_its_folder_file_glob_or_prefix():
    from fluxforge.config import Source
    from fluxforge.data.connectors import IngestError
    from fluxforge.data.sources import covers, dependency_path

    def dep(path: str, fmt: str = "jsonl") -> str:
        return dependency_path(Source(name="s", format=fmt, path=path, domain="cyber"))

    assert dep("corpus/cves/") == "corpus/cves" and dep("cves.jsonl") == "cves.jsonl"
    assert dep("../shared/data/cyber/cti-*.tsv", "tsv") == "../shared/data/cyber"
    assert dep("crawl/2024/**/*.jsonl.gz") == "crawl/2024"
    assert dep("s3://bucket/feed/2024/") == "s3://bucket/feed/2024"
    assert dep("data/world", "world") == "data/world/sources"
    with pytest.raises(IngestError, match="starts with a wildcard"):
        dep("*.jsonl")
    assert covers("data/world/sources", "data/world/sources/news.jsonl") and not covers("data/world", "data/worldly")
    assert covers("s3://b/feed", "s3://b/feed/2024") and not covers("s3://b/feed", "s3://b/feeds")


def test_round_trip_edits_keep_the_files_as_written():
    """params.yaml and dvc.yaml, loaded and dumped again unchanged, are byte for byte what they were."""
    from fluxforge.config.roundtrip import Document

    for name in ("params.yaml", "dvc.yaml"):
        text = (ROOT / name).read_text()
        assert Document(text).dump() == text, name


# ----------------------------------------------------------------------------- the trip-ups, one test each
def test_trip_up_1_a_txt_folder_gets_its_txt_split(repo, capsys, monkeypatch):
    """By hand, `format: txt` without txt_split was an error; `source add` chooses it and says why."""
    folder, _ = write_corpus(repo / "corpus")
    code, out, _ = fluxforge(repo, "source", "add", "corpus/articles", "--domain", "general", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0
    assert "txt_split         file  (one document per file)" in out
    entry = ingest_entry(repo, "articles")
    assert (entry["format"], entry["txt_split"], entry["domain"]) == ("txt", "file", "general")
    # one file of blank-line separated articles splits on the blank lines
    (repo / "digest.txt").write_text("\n\n".join(p.read_text() for p in sorted(folder.glob("*.txt"))))
    code, out, _ = fluxforge(repo, "source", "add", "digest.txt", "--domain", "general", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and ingest_entry(repo, "digest")["txt_split"] == "blank_lines"
    assert "trial read of 1 file: 6 records -> 6 documents, 0 rejected" in out
    code, _, _ = fluxforge(repo, "check-params", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0


def test_trip_up_2_dateless_files_get_a_quoted_default_timestamp(repo, capsys, monkeypatch):
    """No dates in the files: `source add` proposes the newest file's date, quoted, and warns when no slice trains on it."""
    _, cves = write_corpus(repo / "corpus", day="2022-03-09")
    code, out, err = fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--domain", "cyber", "--yes",
                               capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and err == ""
    written = (repo / "params.yaml").read_text()
    assert 'default_timestamp: "2022-03-09"' in written and "timestamp_field: null" in written
    entry = ingest_entry(repo, "cves")
    assert (entry["text_field"], entry["url_field"], entry["default_timestamp"]) == ("text", "url", "2022-03-09")
    # a year outside world.years (2021, 2022 in the tiny profile) is written, with a warning naming the slice
    set_date(cves, "2026-01-02")
    code, out, err = fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--name", "later", "--domain", "cyber",
                               "--dry-run", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "slice cyber-2026" in err and 'pass --default-timestamp 2022-06-01' in err
    assert '+    default_timestamp: "2026-01-02"' in out and "dry run: nothing written" in out
    assert (repo / "params.yaml").read_text() == written


def test_trip_up_3_an_unquoted_date_is_caught_before_dvc_chokes_on_it(repo, capsys, monkeypatch):
    """DVC cannot read a date in params.yaml; check-params (and every command reading params) says to quote it."""
    write_corpus(repo / "corpus")
    assert fluxforge(repo, "source", "add", "corpus/articles", "--domain", "general", "--yes",
                     capsys=capsys, monkeypatch=monkeypatch)[0] == 0
    quoted = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(quoted.replace('default_timestamp: "2022-06-01"', "default_timestamp: 2022-06-01"))
    line = next(i for i, t in enumerate((repo / "params.yaml").read_text().splitlines(), 1) if "default_timestamp" in t)
    crash = run_in(["dvc", "status"], repo, check=False)  # why the check exists: DVC stops before any stage
    assert crash.returncode != 0 and "Unsupported value of type 'date'" in crash.stderr + crash.stdout
    code, _, err = fluxforge(repo, "check-params", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert f'line {line}: data.sources.1.default_timestamp: write "2022-06-01", not 2022-06-01' in err
    assert "quote it" in err and "Traceback" not in err
    code, _, err = fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--domain", "cyber", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "quote it" in err  # nothing is added to a file DVC cannot read
    (repo / "params.yaml").write_text(quoted)
    assert fluxforge(repo, "check-params", capsys=capsys, monkeypatch=monkeypatch)[0] == 0
    assert run_in(["dvc", "status"], repo).returncode == 0


@pytest.mark.slow
def test_trip_up_4a_stages_run_without_the_venv_on_path(repo):
    """`.venv/bin/dvc repro` from a shell with no venv on PATH: each stage finds the venv's Python itself."""
    with_venv(repo)
    assert shutil.which("fluxforge", path=NO_VENV_PATH) is None
    proc = venv_dvc(repo, "repro", "world")
    assert ran(proc) == {"world"} and (repo / "data" / "world" / "sources").is_dir()


# ----------------------------------------------------------------------------- the walkthrough
@pytest.fixture(scope="module")
def own_corpus(fresh, tmp_path_factory) -> tuple[Path, set[str]]:
    """The walkthrough: a tiny repo, a txt folder and a jsonl file added with `source add`, then `dvc repro dedup`
    (`.venv/bin/dvc`, venv not activated). Returns the repository and the stages that ran."""
    from fluxforge.cli import main

    repo = tmp_path_factory.mktemp("walkthrough") / "repo"
    shutil.copytree(fresh, repo, symlinks=True)
    write_corpus(repo / "corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        for argv in (["corpus/articles", "--domain", "general"], ["corpus/cves.jsonl", "--domain", "cyber"]):
            with pytest.raises(SystemExit) as done:
                main(["source", "add", *argv, "--yes"])
            assert done.value.code == 0
    return repo, ran(venv_dvc(with_venv(repo), "repro", "dedup"))


@pytest.mark.slow
def test_walkthrough_own_corpus_reaches_the_funnel(own_corpus):
    repo, stages = own_corpus
    assert stages == {"world", "ingest", "validate", "filter", "dedup"}
    ingest = json.loads((repo / "metrics" / "ingest.json").read_text())
    assert ingest["by_source"]["articles"] == {"ingested": 6, "kept": 6, "rejected": {}}
    assert ingest["by_source"]["cves"] == {"ingested": 8, "kept": 8, "rejected": {}}
    world = sum(v["ingested"] for k, v in ingest["by_source"].items() if k.startswith("world/"))
    funnel = json.loads((repo / "metrics" / "funnel.json").read_text())
    assert funnel["ingested"] == world + 6 + 8
    curated = pd.read_parquet(repo / "data" / "curated" / "curated.parquet")
    assert {"articles", "cves"} <= set(curated["source"])
    assert set(curated.loc[curated["source"] == "cves", "domain"]) == {"cyber"}
    assert set(pd.to_datetime(curated.loc[curated["source"] == "articles", "timestamp"]).dt.year) == {2022}
    assert set(ingest_deps(repo)[-2:]) == {"corpus/articles", "corpus/cves.jsonl"}


@pytest.mark.slow
def test_trip_up_4b_changing_one_file_reruns_exactly_ingest_and_what_follows(own_corpus, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(own_corpus[0], repo, symlinks=True)
    article = repo / "corpus" / "articles" / "article-03.txt"
    article.write_text(article.read_text().replace("The ", "Long ago the ", 1))
    proc = venv_dvc(repo, "repro", "dedup")
    assert ran(proc) == {"ingest", "validate", "filter", "dedup"}
    raw = pd.read_parquet(repo / "data" / "raw" / "articles.parquet")
    assert raw["text"].str.contains("Long ago the ").sum() == 1
    assert ran(venv_dvc(repo, "repro", "dedup")) == set()


# ----------------------------------------------------------------------------- list, remove, refusals
def test_list_shows_what_dvc_watches_and_remove_undoes_add(repo, capsys, monkeypatch):
    before = {n: (repo / n).read_text() for n in ("params.yaml", "dvc.yaml")}
    write_corpus(repo / "corpus")
    assert fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--domain", "cyber", "--licence", "CC-BY-4.0",
                     "--yes", capsys=capsys, monkeypatch=monkeypatch)[0] == 0
    assert ingest_entry(repo, "cves")["licence"] == "CC-BY-4.0" and "corpus/cves.jsonl" in ingest_deps(repo)
    code, out, _ = fluxforge(repo, "source", "list", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "(watched as corpus/cves.jsonl)" in out and "(watched as data/world/sources)" in out
    # a source written by hand without its dependency is named as unwatched
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc["data"]["sources"].append({**ingest_entry(repo, "cves"), "name": "by-hand", "path": "corpus/articles",
                                   "format": "txt", "txt_split": "file", "text_field": "text"})
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    out = fluxforge(repo, "source", "list", capsys=capsys, monkeypatch=monkeypatch)[1]
    assert "by-hand" in out and "NOT WATCHED: add `- corpus/articles` to ingest's deps" in out
    # remove takes the entry and its dependency away again
    (repo / "params.yaml").write_text(before["params.yaml"])
    assert fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--domain", "cyber", "--yes",
                     capsys=capsys, monkeypatch=monkeypatch)[0] == 0
    code, out, _ = fluxforge(repo, "source", "remove", "cves", "--yes", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "ingest no longer depends on corpus/cves.jsonl" in out
    assert {n: (repo / n).read_text() for n in before} == before
    code, _, err = fluxforge(repo, "source", "remove", "world", "--yes", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "cannot remove 'world'" in err and "data.sources" in err


def test_nothing_is_written_without_yes_or_for_a_bad_guess(repo, capsys, monkeypatch):
    before = {n: (repo / n).read_text() for n in ("params.yaml", "dvc.yaml")}
    write_corpus(repo / "corpus")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # not a terminal: no one to ask
    code, out, err = fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--domain", "cyber",
                               capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1 and "nothing written" in err and "+  - name: cves" in out
    code, _, err = fluxforge(repo, "source", "add", "corpus/cves.jsonl", "--domain", "cyber", "--text-field", "body",
                             "--yes", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "no field 'body' (fields: text, url)" in err
    code, _, err = fluxforge(repo, "source", "add", "corpus/articles", "--domain", "general", "--name", "world",
                             "--yes", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "a source named 'world' exists already" in err
    code, _, err = fluxforge(repo, "source", "add", "corpus/articles", "--domain", "general", "--default-timestamp",
                             "last spring", "--yes", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "--default-timestamp last spring: not an ISO date" in err
    (repo / "top.jsonl").write_text((repo / "corpus" / "cves.jsonl").read_text())
    code, _, err = fluxforge(repo, "source", "add", "*.jsonl", "--domain", "cyber", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "starts with a wildcard" in err
    code, _, err = fluxforge(repo, "source", "add", ".", "--domain", "cyber", "--format", "jsonl", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "holds the whole repository" in err
    (repo / "corpus" / "empty").mkdir()
    code, _, err = fluxforge(repo, "source", "add", "corpus/empty", "--domain", "general", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "corpus/empty: no " in err
    assert {n: (repo / n).read_text() for n in before} == before


# ----------------------------------------------------------------------------- S3
@pytest.mark.slow
def test_an_s3_prefix_is_reread_when_an_object_changes(repo, s3_server, monkeypatch, capsys):
    """DVC watches the prefix by its objects' ETags: a changed object reruns ingest, an unchanged prefix does not."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)  # read by DVC and by fluxforge alike
    client, bucket = s3_server.client(), s3_server.bucket
    rows = [{"text": t, "url": f"https://advisories.example/{i}"} for i, t in
            enumerate(json.loads(line)["text"] for line in write_corpus(repo / "corpus")[1].read_text().splitlines())]
    for part in range(2):
        body = "".join(json.dumps({**r, "published": f"2022-05-0{part + 1}"}) + "\n" for r in rows[part::2])
        client.put_object(Bucket=bucket, Key=f"issue22/feed/part-{part}.jsonl", Body=body.encode())
    code, out, _ = fluxforge(repo, "source", "add", f"s3://{bucket}/issue22/feed/", "--domain", "cyber", "--yes",
                             capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "an S3 prefix, 2 jsonl objects" in out
    assert ingest_entry(repo, "feed")["timestamp_field"] == "published"
    assert f"s3://{bucket}/issue22/feed" in ingest_deps(repo)
    assert ran(run_in(["dvc", "repro", "ingest"], repo)) == {"world", "ingest"}
    assert json.loads((repo / "metrics" / "ingest.json").read_text())["by_source"]["feed"]["kept"] == 8
    client.put_object(Bucket=bucket, Key="issue22/feed/part-1.jsonl", Body=(json.dumps(rows[1]) + "\n").encode())
    assert ran(run_in(["dvc", "repro", "ingest"], repo)) == {"ingest"}
    assert ran(run_in(["dvc", "repro", "ingest"], repo)) == set()
