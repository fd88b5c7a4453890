"""Prefect 3 flow that runs the DVC pipeline stage by stage.

The graph comes from ``dvc.yaml`` through DVC's own API, never redefined here. Each stage
is one Prefect task running ``dvc repro --single-item <stage>``; DVC decides whether the
stage is up to date (no Prefect result caching on top), and tasks run one after another
because DVC takes a repository-wide lock. Transient failures are retried with backoff.

    python -m flows.refresh            # one local refresh, Prefect's temporary server
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the end of its log."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# A stage that reports a readable FluxForge failure (bad params, broken contract, bad input) fails the
# same way on every try; anything else (a lock held, a storage hiccup, a killed process) is worth a retry.
_DETERMINISTIC = re.compile(r"fluxforge: stage '[^']+' (not started|failed:)")


def _retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    exc = state.data
    return not isinstance(exc, StageFailed) or exc.transient


def dag_stages(root: Path | str = ".") -> list[str]:
    """Stage names of dvc.yaml in dependency order (foreach items expanded), via DVC's graph."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        return [stage.name for stage in reversed(list(nx.topological_sort(graph)))]


def _env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # stage commands call `python`: use this environment's
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_condition_fn=_retry_transient,
      cache_policy=NONE, task_run_name="dvc:{stage}")
def repro_stage(root: str, stage: str) -> str:
    """Reproduce one stage; return 'ran' or 'up to date'."""
    logger = get_run_logger()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=_env(),
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise StageFailed(f"stage '{stage}' failed (exit {proc.returncode}):\n{out[-3000:]}", transient=not _DETERMINISTIC.search(out))
    status = "ran" if re.search(r"Running stage", out) else "up to date"
    logger.info("%s: %s", stage, status)
    return status


@flow(name="fluxforge-refresh", log_prints=True)
def refresh(root: str = ".") -> dict[str, str]:
    """Run every stage of the DAG in order; the first failure stops the refresh with its message."""
    results: dict[str, str] = {}
    for stage in dag_stages(root):
        results[stage] = repro_stage(root, stage)
    return results


if __name__ == "__main__":
    print(refresh(sys.argv[1] if len(sys.argv) > 1 else "."))
