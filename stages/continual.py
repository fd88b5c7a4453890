"""DVC stage `continual@<task>`: one continual task of params `continual.tasks`: its new slices plus replay."""

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.tokenize import load_pretrained_tokenizer
from fluxforge.errors import DataError
from fluxforge.eval.probe import world_probe
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.train.job import run_job
from fluxforge.train.model import load_model


@stage
def main(params: Params, task: str) -> None:
    if task not in params.continual.tasks:
        raise DataError(f"continual task '{task}' is not in params continual.tasks ({list(params.continual.tasks)})")
    cfg = params.continual.tasks[task]
    model, _ = load_model(P.model_dir(cfg.init))
    probe = world_probe(load_pretrained_tokenizer(P.TOKENS), P.WORLD / "eval", cfg.probe_questions, cfg.seq_len) \
        if cfg.probe_every else None
    inputs = {"tokens": P.TOKENS, "parent": P.model_dir(cfg.init)}
    with stage_run(f"continual@{task}", params, cfg.model_dump(), inputs=inputs) as run:
        done = run_job(params, f"continual@{task}", f"continual/{task}", cfg, model, parent=cfg.init, tracker=run,
                       probe=probe, extra_info={"kind": cfg.kind})
        if done:
            run.tags({"fluxforge.parent": cfg.init, "fluxforge.parent_run_id": P.train_metrics(cfg.init).get("mlflow_run_id", "")})


if __name__ == "__main__":
    main()
