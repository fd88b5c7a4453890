"""DVC stage `register`: register the final model in MLflow as challenger; promote it to champion if the gate passes."""

import json
import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.registry import register_and_gate

log = logging.getLogger("fluxforge.stage.register")


@stage
def main(params: Params) -> None:
    ev = json.loads((P.METRICS / "eval.json").read_text())
    decision = register_and_gate(params, ev)
    write_json(P.METRICS / "register.json", decision)
    log.info("register: %s version %s is challenger; promoted to champion: %s", decision["model_name"],
             decision["version"], decision["promoted"])
    for reason in decision["reasons"]:
        log.info("  gate: %s", reason)


if __name__ == "__main__":
    main()
