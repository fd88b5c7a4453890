"""DVC stage `report`: one HTML page a person reads after a run (reports/report.html)."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.eval.report import build_report
from fluxforge.runtime import stage

log = logging.getLogger("fluxforge.stage.report")


@stage
def main(params: Params) -> None:
    path = build_report(params, P.REPORTS / "report.html")
    log.info("report: %s", path.resolve())


if __name__ == "__main__":
    main()
