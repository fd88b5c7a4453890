"""DVC stage `mm_eval`: linear probes (raw pixels, random init, each MAE objective); zero-shot and retrieval of the
pretrained CLIP and of the stream's."""

import logging

from transformers import ViTMAEForPreTraining

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.eval.image_branch import evaluate_image_branch, headline
from fluxforge.eval.zero_shot import load_clip
from fluxforge.io import write_json
from fluxforge.runtime import set_threads, stage
from fluxforge.track.runs import stage_run
from fluxforge.train.mae import build, encoder_model

log = logging.getLogger("fluxforge.stage.mm_eval")
MAE_KEYS = ("heldout_loss_before", "heldout_loss_after", "heldout_drop", "steps", "final_loss")  # from each model's info


@stage
def main(params: Params) -> None:
    set_threads()
    mm = params.mm
    models = {o: ViTMAEForPreTraining.from_pretrained(P.model_dir(f"mae/{o}")).eval() for o in mm.mae.objectives}
    clip, tok = load_clip(P.model_dir("clip"))
    stream, _ = load_clip(P.model_dir("mm_stream"))
    metrics = evaluate_image_branch(mm, models, encoder_model(build("mae", mm.mae)), {"clip": clip, "stream": stream}, tok,
                                    P.MM_CURATED, P.REPORTS / "mm")
    metrics["mae"] = {o: {k: P.model_info(P.model_dir(f"mae/{o}"))[k] for k in MAE_KEYS} for o in mm.mae.objectives}
    write_json(P.METRICS / "mm_eval.json", metrics)
    with stage_run("mm_eval", params, mm.eval.model_dump(), inputs={"mm_curated": P.MM_CURATED}) as run:
        run.metrics(headline(metrics))
        run.artifact(P.REPORTS / "mm", "mm")
    for name, row in metrics["probes"].items():
        log.info("probe %-12s %.3f [%.3f, %.3f]", name, row["accuracy"], row["low"], row["high"])
    for name in ("clip", "stream"):
        log.info("%s zero-shot %.3f (chance %.3f)", name, *(metrics[name]["zero_shot.heldout"][k] for k in ("accuracy", "chance")))


if __name__ == "__main__":
    main()
