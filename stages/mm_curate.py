"""DVC stage `mm_curate`: image-table contract (rejections with reason and file:row), then pHash dedup; the books."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.captions import read_vocabulary
from fluxforge.data.image_curate import curate_images
from fluxforge.data.ledger import headline
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run

log = logging.getLogger("fluxforge.stage.mm_curate")


@stage
def main(params: Params) -> None:
    metrics = curate_images(P.MM_WORLD, P.MM_CURATED, params.mm.curate, read_vocabulary(P.MM_WORLD / "vocab.json"),
                            params.mm.clip.text.max_position_embeddings, P.REPORTS / "contracts" / "mm")
    write_json(P.METRICS / "mm_curate.json", metrics)
    with stage_run("mm_curate", params, params.mm.curate.model_dump(), inputs={"mm_world": P.MM_WORLD}) as run:
        run.metrics({f"{step}.{k}": v for step in ("contract", "dedup") for k, v in headline(metrics[step]).items()})
        run.metrics(metrics.get("planted", {}))
    log.info("mm_curate: %s", " -> ".join(f"{k} {v}" for k, v in metrics["funnel"].items()))


if __name__ == "__main__":
    main()
