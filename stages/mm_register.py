"""DVC stage `mm_register`: register the CLIP model as `fluxforge-clip` (challenger); champion if its gate passes."""

import json
import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.io import write_json
from fluxforge.runtime import stage
from fluxforge.track.registry_clip import register_clip

log = logging.getLogger("fluxforge.stage.mm_register")


@stage
def main(params: Params) -> None:
    decision = register_clip(params, json.loads((P.METRICS / "mm_eval.json").read_text()))
    write_json(P.METRICS / "mm_register.json", decision)
    log.info("mm_register: %s v%s is challenger; promoted to champion: %s", decision["model_name"], decision["version"],
             decision["promoted"])
    for reason in decision["reasons"]:
        log.info("  gate: %s", reason)


if __name__ == "__main__":
    main()
