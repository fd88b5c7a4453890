"""DVC stage `register`: register the final model in MLflow as challenger; promote it to champion if the gate passes."""

import json
import logging
from pathlib import Path

import pandas as pd

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.eval.reference import reference
from fluxforge.eval.stats import mcnemar_one_sided
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.gate import question_results
from fluxforge.track.registry import register_and_gate

log = logging.getLogger("fluxforge.stage.register")


@stage
def main(params: Params) -> None:
    ev = json.loads((P.METRICS / "eval.json").read_text())
    correct = question_results(pd.read_parquet(P.REPORTS / "eval_questions.parquet"), ev["final"])
    gate = params.registry.gate
    ref = reference("cyber_gain", Path(gate.reference)) if gate.reference else None
    decision = register_and_gate(params, ev, correct, paired_test=mcnemar_one_sided, reference=ref)
    write_json(P.METRICS / "register.json", decision)
    log.info("register: %s version %s is challenger; promoted to champion: %s", decision["model_name"],
             decision["version"], decision["promoted"])
    for reason in decision["reasons"]:
        log.info("  gate: %s", reason)


if __name__ == "__main__":
    main()
