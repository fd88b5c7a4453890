"""DVC stage `ingest`: read every source in params into raw Parquet tables; malformed rows are rejected with a reason."""

import logging

import pandas as pd

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.documents import write_docs
from fluxforge.data.ledger import headline
from fluxforge.data.sources import ingest, raw_tables, source_files
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run

log = logging.getLogger("fluxforge.stage.ingest")


@stage
def main(params: Params) -> None:
    sources = params.data.sources
    read = ingest(sources)
    for table, docs in zip(raw_tables(sources), read.docs.values(), strict=True):
        write_docs(docs, table)
    write_docs(pd.concat(list(read.rejected.values()), ignore_index=True), P.RAW / "rejected.parquet", rejected=True)
    metrics = {**read.ledger.to_dict(), **read.watermark()}
    write_json(P.METRICS / "ingest.json", metrics)
    with stage_run("ingest", params, params.data.model_dump(include={"sources"}),
                   inputs={s.name: source_files(s) for s in sources}) as run:
        run.metrics(headline(metrics))
        run.artifact(P.METRICS / "ingest.json", "ledger")  # per source and reason
    log.info("ingest: %d documents kept of %d read", metrics["kept"], metrics["ingested"])


if __name__ == "__main__":
    main()
