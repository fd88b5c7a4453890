"""DVC stage `mm_stream`: FoMo-in-Flux over the later world slices; every method of mm.stream.methods from models/clip."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.continual.clip_stream import run_clip_stream
from fluxforge.eval.zero_shot import load_clip
from fluxforge.runtime import set_threads, stage
from fluxforge.track.runs import stage_run

log = logging.getLogger("fluxforge.stage.mm_stream")


@stage
def main(params: Params) -> None:
    set_threads()
    clip, tok = load_clip(P.model_dir("clip"))
    with stage_run("mm_stream", params, params.mm.stream.model_dump(), inputs={"mm_curated": P.MM_CURATED,
                                                                              "clip": P.model_dir("clip")}) as run:
        metrics = run_clip_stream(params.mm, clip, tok, run)
    for name, r in metrics["runs"].items():
        m = r["metrics"]
        log.info("mm_stream %-10s A_KA %.3f  A_ZS %.3f  geo %.3f  forgetting %.3f  steps %d", name, m["a_ka"], m["a_zs"],
                 m["geometric_mean"], m["forgetting"], sum(r["steps"].values()))
    for claim, c in metrics["claims"].items():
        log.info("mm_stream claim %s: %s", claim, "holds" if c["holds"] else "does not hold")


if __name__ == "__main__":
    main()
