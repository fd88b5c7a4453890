"""Curate any corpus outside the DAG: ingest -> filter -> dedup, the DAG's own steps, on a glob of files.

``fluxforge curate --input GLOB --output DIR [--config FILE]`` reads the files (format from the
suffix), filters them in shards through :mod:`fluxforge.data.shards` and removes duplicates, then
writes ``curated.parquet``, ``rejected.parquet`` (every rejected row with ``reason`` and ``stage``)
and ``ledger.json`` (per stage: documents in, kept and rejected per source and reason, plus the
funnel). The optional YAML config takes a ``source:`` section (the fields of a params.yaml source
other than name/path/format) and ``filters:`` / ``dedup:`` / ``runner:`` sections with the schema of
params.yaml's ``data.*``; unknown keys are errors that name the key, as in params.yaml.

The steps are the DAG's own: :func:`~fluxforge.data.sources.ingest`, the filter chain through
:func:`~fluxforge.data.filters.sharded.filter_in_shards`, :func:`~fluxforge.data.dedup.dedup`, and the
ledgers and funnel of :mod:`fluxforge.data.ledger`. How shards are mapped is the caller's
``runner`` (the ``fluxforge curate`` command builds it from the config's ``runner:`` section).
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from fluxforge.config import DedupConfig, FileKind, FilterConfig, RunnerConfig, Source, read_yaml, validate
from fluxforge.data.dedup import DedupEngine, MinHashIndex, dedup, in_process
from fluxforge.data.documents import write_docs
from fluxforge.data.filters.sharded import filter_in_shards
from fluxforge.data.ledger import Ledger, funnel
from fluxforge.data.shards import ShardRunner, serial
from fluxforge.data.sources import ingest
from fluxforge.errors import FluxForgeError
from fluxforge.io import write_json

# longest suffixes first, so "x.jsonl.gz" is jsonl and not an unknown ".gz"
FORMATS: dict[str, str] = {".jsonl.gz": "jsonl", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "txt",
                           ".csv": "csv", ".tsv": "tsv"}
SET_BY_COMMAND = ("path", "format")  # source keys that --input decides
STAGES = ("ingest", "filter", "dedup")


class CurateError(FluxForgeError, ValueError):
    """Bad curate input or config: the message names the file and key."""


class CurateConfig(BaseModel):
    """The --config file: same strictness as params.yaml (unknown keys and wrong types are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    source: dict[str, Any] = Field(default_factory=dict)
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    runner: RunnerConfig = RunnerConfig()


CONFIG_FILE = FileKind(what="curate config", noun="config file", top="a mapping with source/filters/dedup/runner sections",
                       unknown_key="unknown key (check the spelling against params.yaml's data.* sections)",
                       error=CurateError, empty_is_mapping=True)


# ----------------------------------------------------------------------------- config and inputs
def load_config(path: Path | str | None) -> CurateConfig:
    """Parse and validate the --config YAML (the params loader); errors name the file and the dotted key."""
    if path is None:
        return CurateConfig()
    cfg = validate(CurateConfig, read_yaml(path, CONFIG_FILE), path, CONFIG_FILE)
    for key in SET_BY_COMMAND:
        if key in cfg.source:
            raise CurateError(f"{path}: source.{key}: set by --input (the glob and its file suffixes), not by the config")
    return cfg


def input_format(file: Path) -> str:
    """The reader for ``file``, from its suffix; anything else is an error naming the file."""
    name = file.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise CurateError(f"{file}: unknown input format (supported suffixes: {', '.join(FORMATS)})")


def input_files(pattern: str) -> dict[str, list[Path]]:
    """Files matched by ``pattern`` (a glob, a file, or a folder: every supported file under it), by format."""
    if pattern.startswith("s3://"):
        raise CurateError(f"--input {pattern}: curate reads local files; copy the objects first (aws s3 sync)")
    root = Path(pattern)
    if root.is_dir():
        files = sorted(f for f in root.rglob("*") if f.is_file() and any(f.name.lower().endswith(s) for s in FORMATS))
    else:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise CurateError(f"--input {pattern}: no input files (supported suffixes: {', '.join(FORMATS)})")
    by_format: dict[str, list[Path]] = {}
    for f in files:
        by_format.setdefault(input_format(f), []).append(f)
    return by_format


def sources_for(pattern: str, by_format: dict[str, list[Path]], cfg: CurateConfig, config_path: Path | str | None) -> list[Source]:
    """One Source per input format, from the config's ``source:`` section."""
    options = dict(cfg.source)
    base = options.pop("name", "input")
    out = []
    for fmt in by_format:
        name = base if len(by_format) == 1 else f"{base}-{fmt}"
        where = f"{config_path or '(no --config)'} [{fmt} files]"
        out.append(validate(Source, {"name": name, "format": fmt, "path": pattern, **options}, where, CONFIG_FILE, "source."))
    return out


# ----------------------------------------------------------------------------- the run
def curate(pattern: str, out_dir: Path | str, config: Path | str | None = None, index: Path | str | None = None,
           runner: ShardRunner = serial, engine: DedupEngine = in_process) -> dict:
    """Ingest, filter and dedup the files of ``pattern`` into ``out_dir``; return the ledger written there.

    ``index``: a :class:`~fluxforge.data.dedup.MinHashIndex` folder of what earlier runs kept (created if
    missing): this run drops duplicates of it and adds its own keepers, so slices curated one after
    another never re-add a document an earlier slice kept. ``runner`` maps the filter over the shards
    (of the config's ``runner.shard_docs`` documents) and ``engine`` runs dedup; the result depends on neither.
    """
    cfg = load_config(config)
    by_format = input_files(pattern)
    sources = sources_for(pattern, by_format, cfg, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    read = ingest(sources, files={src.name: by_format[src.format] for src in sources})
    raw = pd.concat(list(read.docs.values()), ignore_index=True)
    ledgers, stats, rejected = {"ingest": read.ledger}, {}, list(read.rejected.values())

    kept, bad, stats["filter"], run = filter_in_shards(raw, cfg.filters, cfg.runner.shard_docs, runner, "curate-filter",
                                                       out_dir / ".work")
    ledgers["filter"] = Ledger.balanced("filter", kept, bad, len(raw))
    rejected.append(bad)

    idx = None
    if index is not None:
        try:
            idx = MinHashIndex.load(index, cfg.dedup) if (Path(index) / "index.json").exists() else MinHashIndex(cfg.dedup)
        except ValueError as err:
            raise CurateError(f"--index {index}: {err}") from None
    curated, bad, stats["dedup"] = dedup(kept, cfg.dedup, index=idx, update_index=idx is not None, engine=engine)
    ledgers["dedup"] = Ledger.balanced("dedup", curated, bad, len(kept))
    rejected.append(bad)

    write_docs(curated, out_dir / "curated.parquet")
    write_docs(pd.concat([r for r in rejected if len(r)] or rejected[:1], ignore_index=True),
               out_dir / "rejected.parquet", rejected=True)
    books = {s: ledgers[s].to_dict() for s in STAGES}
    result = {
        "input": pattern, "files": {fmt: [str(f) for f in fs] for fmt, fs in by_format.items()},
        "stages": {s: {**books[s], **({"stats": stats[s]} if s in stats else {})} for s in STAGES},
        "funnel": funnel(books, received_as="read"),
        "shards": {"filter": {"shards": run.shards, "ran": run.ran, "runner": runner.kind}},
    }
    if idx is not None:
        idx.save(index)
        result["index"] = {"path": str(index), "documents": len(idx)}
    write_json(out_dir / "ledger.json", result)
    shutil.rmtree(out_dir / ".work", ignore_errors=True)  # the outputs are written: no shard is needed again
    return result


def summary_table(ledger: dict) -> str:
    """A few lines for the terminal: the funnel, then the rejection reasons per stage."""
    rows = [f"{'stage':8s} {'in':>9s} {'kept':>9s} {'rejected':>9s}"]
    for s in STAGES:
        st = ledger["stages"][s]
        rows.append(f"{s:8s} {st['ingested']:9d} {st['kept']:9d} {st['rejected']:9d}")
    for s in STAGES:
        for reason, n in sorted(ledger["stages"][s]["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            rows.append(f"  {s}: {reason:40s} {n:7d}")
    return "\n".join(rows)


def main_summary(ledger: dict, out_dir: Path | str) -> str:
    """The summary printed by ``fluxforge curate``: the table and where the files are."""
    out = Path(out_dir)
    return (f"{summary_table(ledger)}\n"
            f"curated : {out / 'curated.parquet'} ({ledger['funnel']['after_dedup']} documents)\n"
            f"rejected: {out / 'rejected.parquet'}\nledger  : {out / 'ledger.json'}")


__all__ = ["CurateConfig", "CurateError", "curate", "input_files", "load_config", "main_summary", "summary_table"]
