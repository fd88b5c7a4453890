"""Curate any corpus outside the DAG: ingest -> filter -> dedup, the DAG's own steps, on a glob of files.

``fluxforge curate --input GLOB --output DIR [--config FILE]`` reads the files (format from the
suffix), filters them in shards through :mod:`fluxforge.data.shards` and removes duplicates, then
writes ``curated.parquet``, ``rejected.parquet`` (every rejected row with ``reason`` and ``stage``)
and ``ledger.json`` (per stage: documents in, kept and rejected per source and reason, plus the
funnel). The optional YAML config takes a ``source:`` section (the fields of a params.yaml source
other than name/path/format) and ``filters:`` / ``dedup:`` / ``runner:`` sections with the schema of
params.yaml's ``data.*``; unknown keys are errors that name the key, as in params.yaml.

:func:`filter_in_shards` is also the DAG's filter stage (``filter_docs``), so both filter the same way.
"""

from __future__ import annotations

import glob
import logging
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fluxforge.config import DedupConfig, FilterConfig, RunnerConfig, Source
from fluxforge.data.shards import Sharded, ShardResult, run_sharded
from fluxforge.errors import FluxForgeError

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- the sharded filter step
def filter_shard(shard: pd.DataFrame, cfg: FilterConfig) -> ShardResult:
    """One shard through :func:`fluxforge.data.filters.apply_filters` (module level: pickled to workers)."""
    from fluxforge.data.filters import apply_filters

    kept, rejected, stats = apply_filters(shard, cfg)
    return ShardResult({"kept": kept, "rejected": rejected}, stats)


def unshardable(cfg: FilterConfig) -> str | None:
    """Why these filters must see the whole corpus at once (None: every rule decides per document)."""
    if cfg.toxicity.enabled and cfg.toxicity.mode == "inverse":
        return "toxicity.mode inverse drops a fraction of the whole corpus"
    return None


def filter_in_shards(df: pd.DataFrame, cfg: FilterConfig, runner: RunnerConfig, stage: str = "filter",
                     work_root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict, Sharded]:
    """(kept, rejected, stats, the sharded run) exactly as ``apply_filters(df, cfg)`` would give them."""
    from fluxforge.data import filters
    from fluxforge.data.shards import WORK_ROOT

    why = unshardable(cfg)
    if why:
        log.info("%s: one shard (%s)", stage, why)
        runner = runner.model_copy(update={"shard_docs": max(len(df), 1)})
    code = [filters, Path(filters.__file__).parent / "assets"]  # the rules and their shipped word lists
    code += [Path(f) for f in (cfg.toxicity.lexicon_path,) if f and Path(f).is_file()]  # a lexicon of one's own
    run = run_sharded(partial(filter_shard, cfg=cfg), df, stage=stage, runner=runner, config=cfg, code=code,
                      packages=("numpy", "py3langid"), work_root=work_root or WORK_ROOT)
    return run.tables["kept"], run.tables["rejected"], run.stats, run


# ----------------------------------------------------------------------------- config and inputs
def load_config(path: Path | str | None) -> CurateConfig:
    """Parse and validate the --config YAML; errors name the file and the dotted key."""
    if path is None:
        return CurateConfig()
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise CurateError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise CurateError(f"{path}: expected a mapping with source/filters/dedup/runner sections, got {type(raw).__name__}")
    try:
        cfg = CurateConfig.model_validate(raw)
    except ValidationError as err:
        raise CurateError(_errors(err, path)) from None
    for key in SET_BY_COMMAND:
        if key in cfg.source:
            raise CurateError(f"{path}: source.{key}: set by --input (the glob and its file suffixes), not by the config")
    return cfg


def _errors(err: ValidationError, path: Path, prefix: str = "") -> str:
    lines = [f"{path}: invalid curate config:"]
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "<top level>")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params.yaml's data.* sections)"
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


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
        try:
            out.append(Source.model_validate({"name": name, "format": fmt, "path": pattern, **options}))
        except ValidationError as err:
            where = f"{config_path or '(no --config)'} [{fmt} files]"
            raise CurateError(_errors(err, Path(where), "source.")) from None
    return out


# ----------------------------------------------------------------------------- the run
def curate(pattern: str, out_dir: Path | str, config: Path | str | None = None, index: Path | str | None = None) -> dict:
    """Ingest, filter and dedup the files of ``pattern`` into ``out_dir``; return the ledger written there.

    ``index``: a :class:`~fluxforge.data.dedup.MinHashIndex` folder of what earlier runs kept (created if
    missing): this run drops duplicates of it and adds its own keepers, so slices curated one after
    another never re-add a document an earlier slice kept.
    """
    from fluxforge.data.dedup import MinHashIndex, dedup
    from fluxforge.data.documents import Ledger, read_source, write_docs
    from fluxforge.io import write_json

    cfg = load_config(config)
    by_format = input_files(pattern)
    sources = sources_for(pattern, by_format, cfg, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledgers = {s: Ledger(s) for s in STAGES}
    stats: dict[str, dict] = {}

    docs, rejected = [], []
    for src in sources:
        kept, bad, n_read = read_source(src, files=by_format[src.format])
        ledgers["ingest"].add(kept, bad, n_read)
        docs.append(kept)
        rejected.append(bad)
        log.info("curate: read %d records from %d %s files (%d rejected)", n_read, len(by_format[src.format]),
                 src.format, len(bad))
    raw = pd.concat(docs, ignore_index=True)

    kept, bad, stats["filter"], run = filter_in_shards(raw, cfg.filters, cfg.runner, "curate-filter", out_dir / ".work")
    ledgers["filter"].add(kept, bad, len(raw))
    rejected.append(bad)

    idx = None
    if index is not None:
        try:
            idx = MinHashIndex.load(index, cfg.dedup) if (Path(index) / "index.json").exists() else MinHashIndex(cfg.dedup)
        except ValueError as err:
            raise CurateError(f"--index {index}: {err}") from None
    curated, bad, stats["dedup"] = dedup(kept, cfg.dedup, index=idx, update_index=idx is not None)
    ledgers["dedup"].add(curated, bad, len(kept))
    rejected.append(bad)

    for ledger in ledgers.values():
        ledger.check()
    write_docs(curated, out_dir / "curated.parquet")
    write_docs(pd.concat([r for r in rejected if len(r)] or rejected[:1], ignore_index=True),
               out_dir / "rejected.parquet", rejected=True)
    result = {
        "input": pattern, "files": {fmt: [str(f) for f in fs] for fmt, fs in by_format.items()},
        "stages": {s: {**ledgers[s].to_dict(), **({"stats": stats[s]} if s in stats else {})} for s in STAGES},
        "funnel": {"read": ledgers["ingest"].received, **{f"after_{s}": ledgers[s].to_dict()["kept"] for s in STAGES}},
        "shards": {"filter": {"shards": run.shards, "ran": run.ran, "runner": cfg.runner.kind}},
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


__all__ = ["CurateConfig", "CurateError", "curate", "filter_in_shards", "filter_shard", "input_files", "load_config",
           "main_summary", "summary_table", "unshardable"]
