"""DVC stage `mm_world`: generate the image world (colour x shape pictures over three slices, masks, digits, defects)."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.world.images import generate_image_world

log = logging.getLogger("fluxforge.stage.mm_world")


@stage
def main(params: Params) -> None:
    summary = generate_image_world(params.mm.world, P.MM_WORLD)
    metrics = {k: summary[k] for k in ("images", "masks", "clean_images", "digits", "concepts", "vocabulary")}
    metrics["planted"] = sum(summary["planted"].values())
    write_json(P.METRICS / "mm_world.json", metrics)
    with stage_run("mm_world", params, params.mm.world.model_dump()) as run:
        run.metrics(metrics)
        run.artifact(P.MM_WORLD / "summary.json")
    log.info("mm_world: %d images (%d planted defects), %d digits, %d concepts", metrics["images"], metrics["planted"],
             metrics["digits"], metrics["concepts"])


if __name__ == "__main__":
    main()
