"""The data half of the DAG: world -> ingest -> validate -> filter -> dedup -> tokenize."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data import contracts
from fluxforge.data.dedup import dedup
from fluxforge.data.documents import Ledger, read_docs, read_source, source_files, write_docs
from fluxforge.data.quality import score_against_labels
from fluxforge.io import atomic_dir, write_json
from fluxforge.track.runs import stage_run
from fluxforge.world import generate_world

log = logging.getLogger(__name__)


def world(params: Params) -> None:
    summary = generate_world(params.world, P.WORLD)
    write_json(P.METRICS / "world.json", {k: summary[k] for k in ("documents", "facts", "mcq", "heldout_docs")})
    with stage_run("world", params, params.world.model_dump()) as run:
        run.metrics({k: summary[k] for k in ("documents", "facts", "mcq", "heldout_docs")})
        run.artifact(P.WORLD / "summary.json")
    log.info("world: %d documents, %d facts, %d questions", summary["documents"], summary["facts"], summary["mcq"])


def ingest(params: Params) -> None:
    ledger = Ledger("ingest")
    rejected_all, newest = [], {}
    P.RAW.mkdir(parents=True, exist_ok=True)
    for src in params.data.sources:
        kept, rejected, n_read = read_source(src)
        ledger.add(kept, rejected, n_read)
        if len(kept):
            newest[src.name] = pd.to_datetime(kept["timestamp"], utc=True).max().isoformat()
        write_docs(kept, P.RAW / f"{src.name}.parquet")
        rejected_all.append(rejected)
        log.info("ingest %s: %d documents, %d rejected", src.name, len(kept), len(rejected))
    rejected = pd.concat(rejected_all, ignore_index=True)
    write_docs(rejected, P.RAW / "rejected.parquet", rejected=True)
    ledger.check()
    # the newest document's time: a refresh reports how many documents arrived after the previous watermark
    watermark = {"watermark": max(newest.values()) if newest else None, "watermark_by_source": newest}
    write_json(P.METRICS / "ingest.json", {**ledger.to_dict(), **watermark})
    with stage_run("ingest", params, params.data.model_dump(include={"sources"}),
                   inputs={s.name: source_files(s) for s in params.data.sources}) as run:
        run.metrics(_headline(ledger.to_dict()))
        run.artifact(P.METRICS / "ingest.json", "ledger")  # per source and reason


def _raw_tables(params: Params) -> list:
    return [P.RAW / f"{s.name}.parquet" for s in params.data.sources]


def validate(params: Params) -> None:
    df = read_docs(_raw_tables(params))
    summary = contracts.validate(df, contracts.expectations(params.data.contracts.raw), "raw",
                                 P.REPORTS / "contracts" / "raw.json")
    write_json(P.METRICS / "contract_raw.json", summary)
    with stage_run("validate", params, {"contract": "raw"}, inputs={"raw": P.RAW}) as run:
        run.metrics(summary)
        run.artifact(P.REPORTS / "contracts" / "raw.json", "contracts")
    log.info("contract 'raw' passed on %d rows", len(df))


def _split_stage(stage: str, received: int, kept: pd.DataFrame, rejected: pd.DataFrame, out_dir: Path, kept_name: str,
                 stats: dict) -> dict:
    """Write kept + rejected tables atomically and return the balanced ledger merged with ``stats``."""
    ledger = Ledger(stage)
    ledger.add(kept, rejected, received)
    ledger.check()
    with atomic_dir(out_dir) as tmp:
        write_docs(kept, tmp / kept_name)
        write_docs(rejected, tmp / "rejected.parquet", rejected=True)
    metrics = {**ledger.to_dict(), **stats}
    write_json(P.METRICS / f"{stage}.json", metrics)
    return metrics


def _headline(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "by_source"}


def filter_docs(params: Params) -> None:
    """Filter the raw tables in shards (data.runner); the output equals one ``apply_filters`` over all of them."""
    from fluxforge.data.curate import filter_in_shards

    df = read_docs(_raw_tables(params))
    kept, rejected, stats, sharded = filter_in_shards(df, params.data.filters, params.data.runner)
    metrics = _split_stage("filter", len(df), kept, rejected, P.FILTERED, "kept.parquet", stats)
    sharded.discard()  # outputs are written: the finished shards in data/.work/filter are no longer needed
    alone = _standalone_quality(params, df)
    write_json(P.METRICS / "filter_quality.json", alone)
    with stage_run("filter", params, params.data.filters.model_dump(), inputs={"raw": P.RAW}) as run:
        run.metrics(_headline(metrics))
        run.metrics({"alone": alone})
        run.artifact(P.METRICS / "filter.json", "ledger")
    log.info("filter: kept %d of %d in %d shards (%s)", len(kept), len(df), sharded.shards, metrics["rejected_by_reason"])


def dedup_docs(params: Params) -> None:
    df = read_docs(P.FILTERED / "kept.parquet")
    kept, rejected, stats = dedup(df, params.data.dedup)
    # the curated boundary's contract: what training reads. A failure stops here, before data/curated exists.
    contract = contracts.validate(kept, contracts.expectations(params.data.contracts.curated), "curated",
                                  P.REPORTS / "contracts" / "curated.json")
    write_json(P.METRICS / "contract_curated.json", contract)
    metrics = _split_stage("dedup", len(df), kept, rejected, P.CURATED, "curated.parquet", stats)
    quality = _quality(params, kept)
    write_json(P.METRICS / "data_quality.json", quality)
    write_json(P.METRICS / "funnel.json", _funnel())
    with stage_run("dedup", params, params.data.dedup.model_dump(), inputs={"filtered": P.FILTERED}) as run:
        run.metrics(_headline(metrics))
        run.metrics({"quality": quality})
        run.artifact(P.METRICS / "dedup.json", "ledger")
        run.artifact(P.REPORTS / "contracts" / "curated.json", "contracts")
    log.info("dedup: kept %d of %d (%d exact, %d near duplicates)", len(kept), len(df),
             stats["exact_duplicates"], stats["near_duplicates"])


def _world_labels(params: Params) -> pd.DataFrame | None:
    labels_path = P.WORLD / "labels.parquet"
    if not labels_path.exists() or not any(s.format == "world" for s in params.data.sources):
        return None
    return pd.read_parquet(labels_path)


def _standalone_quality(params: Params, raw: pd.DataFrame) -> dict:
    """Each filter alone against the world's planted labels ({} without a world source)."""
    from fluxforge.data.quality import standalone_filter_scores

    labels = _world_labels(params)
    return {} if labels is None else standalone_filter_scores(raw, labels, params.data.filters)


def _quality(params: Params, curated: pd.DataFrame) -> dict:
    """Precision/recall of filters + dedup against the world's planted labels (world sources only)."""
    labels = _world_labels(params)
    if labels is None:
        return {}
    rejected = pd.concat([read_docs(P.RAW / "rejected.parquet"), read_docs(P.FILTERED / "rejected.parquet"),
                          read_docs(P.CURATED / "rejected.parquet")], ignore_index=True)
    return score_against_labels(curated, rejected, labels)


def _funnel() -> dict:
    """Documents left after each data stage: the numbers behind the funnel chart."""
    def kept(stage: str) -> int:
        return json.loads((P.METRICS / f"{stage}.json").read_text())["kept"]

    ingested = json.loads((P.METRICS / "ingest.json").read_text())["ingested"]
    return {"ingested": ingested, **{f"after_{stage}": kept(stage) for stage in ("ingest", "filter", "dedup")}}
