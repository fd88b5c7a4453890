"""DVC stage `clip_pretrain`: HF CLIPModel from a config on the first slice's image-caption pairs."""

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.train.mm_jobs import pretrain_clip


@stage
def main(params: Params) -> None:
    with stage_run("clip_pretrain", params, params.mm.clip.model_dump(), inputs={"mm_curated": P.MM_CURATED}) as run:
        pretrain_clip(params, run)


if __name__ == "__main__":
    main()
