"""DVC stage `world`: generate the embedded default corpus with its ground truth (fluxforge.world)."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.world import generate_world

log = logging.getLogger("fluxforge.stage.world")


@stage
def main(params: Params) -> None:
    summary = generate_world(params.world, P.WORLD)
    metrics = {k: summary[k] for k in ("documents", "facts", "mcq", "heldout_docs")}
    write_json(P.METRICS / "world.json", metrics)
    with stage_run("world", params, params.world.model_dump()) as run:
        run.metrics(metrics)
        run.artifact(P.WORLD / "summary.json")
    log.info("world: %d documents, %d facts, %d questions", summary["documents"], summary["facts"], summary["mcq"])


if __name__ == "__main__":
    main()
