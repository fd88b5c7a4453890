"""DVC stage `mae@<objective>`: masked-autoencoder pretraining (mae | cmae | bmmae) of HF ViTMAEForPreTraining."""

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.errors import FluxForgeError
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.train.mm_jobs import pretrain_mae


@stage
def main(params: Params, objective: str) -> None:
    cfg = params.mm.mae
    if objective not in cfg.objectives:
        raise FluxForgeError(f"mae: objective '{objective}' is not in mm.mae.objectives {cfg.objectives}")
    section = {"model": cfg.model.model_dump(), "train": cfg.train.model_dump(), objective: getattr(cfg, objective).model_dump()}
    with stage_run(f"mae@{objective}", params, section, inputs={"mm_curated": P.MM_CURATED}) as run:
        pretrain_mae(params, objective, run)  # the held-out loss before/after is in its metrics and model info


if __name__ == "__main__":
    main()
