"""DVC stage `pretrain`: train the base model from its config (or a base checkpoint) on the pretraining slices."""

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.tokenize import load_pretrained_tokenizer
from fluxforge.eval.probe import world_probe
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.train.job import run_job
from fluxforge.train.model import new_model


@stage
def main(params: Params) -> None:
    cfg = params.pretrain
    model = new_model(params.model, P.TOKENS)
    probe = world_probe(load_pretrained_tokenizer(P.TOKENS), P.WORLD / "eval", cfg.probe_questions, cfg.seq_len) \
        if cfg.probe_every else None
    with stage_run("pretrain", params, cfg.model_dump(), inputs={"tokens": P.TOKENS}) as run:
        run_job(params, "pretrain", "pretrain", cfg, model, parent="", tracker=run, probe=probe)


if __name__ == "__main__":
    main()
