"""The chain over shards of a corpus (:mod:`fluxforge.data.shards`), equal to one chain over all of it.

The DAG's filter stage and ``fluxforge curate`` both filter through :func:`filter_in_shards`, so both
filter the same way; the caller chooses how shards are mapped (in this process, or a pool from
:mod:`fluxforge.orchestrate.runners`).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pandas as pd

from fluxforge.config import FilterConfig
from fluxforge.data.filters.chain import apply_filters
from fluxforge.data.shards import WORK_ROOT, Sharded, ShardResult, ShardRunner, run_sharded, serial

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).parent


def filter_shard(shard: pd.DataFrame, cfg: FilterConfig) -> ShardResult:
    """One shard through :func:`~fluxforge.data.filters.chain.apply_filters` (module level: pickled to workers)."""
    kept, rejected, stats = apply_filters(shard, cfg)
    return ShardResult({"kept": kept, "rejected": rejected}, stats)


def unshardable(cfg: FilterConfig) -> str | None:
    """Why these filters must see the whole corpus at once (None: every rule decides per document)."""
    if cfg.toxicity.enabled and cfg.toxicity.mode == "inverse":
        return "toxicity.mode inverse drops a fraction of the whole corpus"
    return None


def rule_files(cfg: FilterConfig) -> list[Path]:
    """The files whose edits change what the chain keeps: the package's modules, the shipped word
    lists and a lexicon of one's own (hashed into each shard's key, so an edit reruns every shard)."""
    files = [*sorted(PACKAGE.glob("*.py")), PACKAGE.parent / "assets"]
    return files + [Path(f) for f in (cfg.toxicity.lexicon_path,) if f and Path(f).is_file()]


def filter_in_shards(df: pd.DataFrame, cfg: FilterConfig, shard_docs: int, runner: ShardRunner = serial,
                     stage: str = "filter", work_root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict, Sharded]:
    """(kept, rejected, stats, the sharded run) exactly as ``apply_filters(df, cfg)`` would give them."""
    why = unshardable(cfg)
    if why:
        log.info("%s: one shard (%s)", stage, why)
        shard_docs = max(len(df), 1)
    run = run_sharded(partial(filter_shard, cfg=cfg), df, stage=stage, shard_docs=shard_docs, runner=runner,
                      config=cfg, code=rule_files(cfg), packages=("numpy", "py3langid"), work_root=work_root or WORK_ROOT)
    return run.tables["kept"], run.tables["rejected"], run.stats, run
