"""DVC stage `validate`: check the raw tables against their great-expectations contract; stop the DAG on failure."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data import contracts
from fluxforge.data.documents import read_docs
from fluxforge.data.sources import raw_tables
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run

log = logging.getLogger("fluxforge.stage.validate")


@stage
def main(params: Params) -> None:
    df = read_docs(raw_tables(params.data.sources))
    report = P.REPORTS / "contracts" / "raw.json"
    summary = contracts.validate(df, contracts.expectations(params.data.contracts.raw), "raw", report)
    write_json(P.METRICS / "contract_raw.json", summary)
    with stage_run("validate", params, {"contract": "raw"}, inputs={"raw": P.RAW}) as run:
        run.metrics(summary)
        run.artifact(report, "contracts")
    log.info("contract 'raw' passed on %d rows", len(df))


if __name__ == "__main__":
    main()
