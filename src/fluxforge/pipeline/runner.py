"""Transitional: the stage table of the old layout (stages move to stages/<name>.py recipes on fluxforge.runtime)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from fluxforge import runtime

# stage -> (module, function): imported lazily so data stages do not pay for torch
_STAGES = {
    "evaluate": ("eval_stages", "evaluate"), "register": ("eval_stages", "register"), "report": ("eval_stages", "report"),
}
STAGES = tuple(_STAGES)


def _stage_fn(name: str) -> Callable:
    module, fn = _STAGES[name]
    return getattr(importlib.import_module(f"fluxforge.pipeline.{module}"), fn)


def run_stage(name: str, *args: str, params_path: str = "params.yaml") -> int:
    if name not in _STAGES:
        print(f"fluxforge: unknown stage '{name}' (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    return runtime.run_stage(name, lambda params, *a: _stage_fn(name)(params, *a), *args, params_path=params_path)


def main(name: str) -> None:
    sys.exit(run_stage(name, *sys.argv[1:]))
