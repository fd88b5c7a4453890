"""DVC stage `distill`: logit distillation of one teacher or a committee into a smaller student."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.runtime import stage
from fluxforge.track.resolve import dag_or_registry_dirs
from fluxforge.track.runs import stage_run
from fluxforge.train.distill import distillation_setup
from fluxforge.train.job import run_job

log = logging.getLogger("fluxforge.stage.distill")


@stage
def main(params: Params) -> None:
    cfg, names = params.distill, params.teacher_names()
    dirs, versions = dag_or_registry_dirs(names)
    setup = distillation_setup(cfg, names, dirs, versions, P.TOKENS, P.CHECKPOINTS / "teacher_targets")
    local = [n for n in names if n not in versions]
    with stage_run("distill", params, cfg.model_dump(), inputs={"tokens": P.TOKENS}) as run:
        run_job(params, "distill", "student", cfg, setup.student, parent=local[0] if local else "", tracker=run,
                objective=setup.objective, extra_info=setup.info)
    if setup.cache:
        log.info("distill: teacher targets %d from cache, %d computed (%s)", setup.cache.hits, setup.cache.misses, setup.cache.dir)


if __name__ == "__main__":
    main()
