"""Run one DVC stage: quiet defaults, params validated first, readable failures, an exit code."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable

QUIET_ENV = {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


# stage -> (module, function): imported lazily so data stages do not pay for torch
_STAGES = {
    "world": ("data_stages", "world"), "ingest": ("data_stages", "ingest"), "validate": ("data_stages", "validate"),
    "filter": ("data_stages", "filter_docs"), "dedup": ("data_stages", "dedup_docs"), "tokenize": ("data_stages", "tokenize"),
    "pretrain": ("train_stages", "pretrain"), "continual": ("train_stages", "continual"), "distill": ("train_stages", "distill"),
    "study": ("study_stages", "study"), "stream": ("stream_stages", "stream"),
    "evaluate": ("eval_stages", "evaluate"), "register": ("eval_stages", "register"), "report": ("eval_stages", "report"),
}


def _stage_fn(name: str) -> Callable:
    module, fn = _STAGES[name]
    return getattr(importlib.import_module(f"fluxforge.pipeline.{module}"), fn)


STAGES = tuple(_STAGES)


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("FLUXFORGE_LOG", "INFO"), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "great_expectations", "urllib3", "httpx", "filelock", "dvc", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(name: str, *args: str, params_path: str = "params.yaml") -> int:
    """Run stage ``name``; return a process exit code (0 ok, 2 bad params, 1 other failure)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    setup_logging()
    log = logging.getLogger(f"fluxforge.stage.{name}")
    from fluxforge.config import ParamsError, load_params
    from fluxforge.errors import FluxForgeError

    try:
        params = load_params(params_path)
    except ParamsError as err:
        print(f"fluxforge: stage '{name}' not started:\n{err}", file=sys.stderr)
        return 2
    if name not in _STAGES:
        print(f"fluxforge: unknown stage '{name}' (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        _stage_fn(name)(params, *args)
    except FluxForgeError as err:
        print(f"fluxforge: stage '{name}' failed:\n{err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - last resort: keep the traceback, but say what failed first
        traceback.print_exc()
        print(f"\nfluxforge: stage '{name}' failed with an unexpected {type(err).__name__}: {err}\n"
              f"(traceback above; please report it with the stage name and params.yaml)", file=sys.stderr)
        return 1
    log.info("stage '%s' done in %.1f s", name + (f"@{args[0]}" if args else ""), time.perf_counter() - t0)
    return 0


def main(name: str) -> None:
    """Entry point of the thin scripts in stages/: ``python -m stages.<name> [args]``."""
    sys.exit(run_stage(name, *sys.argv[1:]))
