"""DVC stage `dedup`: drop exact and MinHash near duplicates across all slices, keeping the earliest."""

import json
import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data import contracts
from fluxforge.data.dedup import dedup
from fluxforge.data.documents import read_docs
from fluxforge.data.ledger import funnel, headline, write_split
from fluxforge.io import write_json
from fluxforge.orchestrate.runners import dedup_engine
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.world.scoring import planted_labels, score_against_labels

log = logging.getLogger("fluxforge.stage.dedup")


@stage
def main(params: Params) -> None:
    df = read_docs(P.FILTERED / "kept.parquet")
    kept, rejected, stats = dedup(df, params.data.dedup, engine=dedup_engine(params.data.runner))
    # the curated boundary's contract: what training reads. A failure stops here, before data/curated exists.
    report = P.REPORTS / "contracts" / "curated.json"
    write_json(P.METRICS / "contract_curated.json",
               contracts.validate(kept, contracts.expectations(params.data.contracts.curated), "curated", report))
    metrics = write_split("dedup", len(df), kept, rejected, P.CURATED, "curated.parquet", stats)
    write_json(P.METRICS / "dedup.json", metrics)
    labels = planted_labels(P.WORLD, params.data.sources)  # filters + dedup against the world's labels
    quality = {} if labels is None else score_against_labels(
        kept, read_docs([d / "rejected.parquet" for d in (P.RAW, P.FILTERED, P.CURATED)]), labels)
    write_json(P.METRICS / "data_quality.json", quality)
    write_json(P.METRICS / "funnel.json", funnel({s: json.loads((P.METRICS / f"{s}.json").read_text())
                                                  for s in ("ingest", "filter", "dedup")}))
    with stage_run("dedup", params, params.data.dedup.model_dump(), inputs={"filtered": P.FILTERED}) as run:
        run.metrics(headline(metrics))
        run.metrics({"quality": quality})
        run.artifact(P.METRICS / "dedup.json", "ledger")
        run.artifact(report, "contracts")
    log.info("dedup: kept %d of %d (%d exact, %d near duplicates)", len(kept), len(df),
             stats["exact_duplicates"], stats["near_duplicates"])


if __name__ == "__main__":
    main()
