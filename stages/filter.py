"""DVC stage `filter`: remove boilerplate lines, then drop documents failing the quality/repetition/toxicity rules."""

import logging
from functools import partial

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.documents import read_docs
from fluxforge.data.filters.chain import each_filter_alone
from fluxforge.data.filters.sharded import filter_in_shards
from fluxforge.data.ledger import headline, write_split
from fluxforge.data.sources import raw_tables
from fluxforge.io import write_json
from fluxforge.orchestrate.runners import shard_runner
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.world.scoring import planted_labels, standalone_filter_scores

log = logging.getLogger("fluxforge.stage.filter")


@stage
def main(params: Params) -> None:
    cfg, runner = params.data.filters, params.data.runner
    raw = read_docs(raw_tables(params.data.sources))
    kept, rejected, stats, sharded = filter_in_shards(raw, cfg, runner.shard_docs, shard_runner(runner))
    metrics = write_split("filter", len(raw), kept, rejected, P.FILTERED, "kept.parquet", stats)
    write_json(P.METRICS / "filter.json", metrics)
    sharded.discard()  # outputs are written: the finished shards in data/.work/filter are no longer needed
    labels = planted_labels(P.WORLD, params.data.sources)  # each filter alone against the world's labels
    alone = {} if labels is None else standalone_filter_scores(raw, labels, partial(each_filter_alone, cfg=cfg))
    write_json(P.METRICS / "filter_quality.json", alone)
    with stage_run("filter", params, cfg.model_dump(), inputs={"raw": P.RAW}) as run:
        run.metrics(headline(metrics))
        run.metrics({"alone": alone})
        run.artifact(P.METRICS / "filter.json", "ledger")
    log.info("filter: kept %d of %d in %d shards (%s)", len(kept), len(raw), sharded.shards, metrics["rejected_by_reason"])


if __name__ == "__main__":  # a process pool re-imports __main__ in its workers
    main()
