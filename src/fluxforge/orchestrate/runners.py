"""Map a data step over shards through a Prefect 3 task runner: the parallel :class:`~fluxforge.data.shards.ShardRunner`.

:mod:`fluxforge.data.shards` splits, keys, resumes and merges; this module only runs the shards it is
handed, on a Prefect task runner (a process or thread pool) and hands each result back to the
driver, so workers need no shared file system. :func:`shard_runner` picks the runner ``data.runner``
asks for, and :func:`dedup_engine` where dedup runs: ``kind: ray`` sends both to a Ray cluster
(:mod:`fluxforge.orchestrate.ray_cluster`), every other kind runs dedup in this process.

Prefect start-up, measured on the project's 2-core machine (shared, load ~2) on 2026-11-26: the
filter on 21,992 documents (the default world's raw tables x 8), ``shard_docs`` 5000 (5 shards),
2 workers; and an empty flow of 8 trivial tasks for the fixed cost:

=====================================================  =====================  ==============
runner / Prefect API                                   filter, 22k docs       8 empty tasks
=====================================================  =====================  ==============
``apply_filters`` once, no shards                      24.6 s                 -
``serial`` (in this process, no Prefect)               21.5 s                 -
``process``, running server (``PREFECT_API_URL``)      24.1 s                 7-9 s
``thread``, running server                             28.1 s                 1.6-1.9 s
``process``, temporary (ephemeral) server              58.7 s                 ~55 s
``thread``, temporary server                           45.3 s                 17-20 s
=====================================================  =====================  ==============

(Two busy cores leave nothing to gain from parallelism here; the point of the table is the fixed
cost: ~2 s with a server, ~5 s more to spawn worker processes, 15-35 s for a temporary server.)
So the cheapest correct choice, in order: (1) a corpus of one shard (the default world: 2.7k
docs, ``shard_docs`` 5000), or ``kind: serial``, runs in this process without Prefect: no
overhead; (2) when ``PREFECT_API_URL`` is set (a Prefect server, or a refresh flow that passes its
server on to the stages), the runner reports to it; (3) otherwise Prefect starts its temporary
server (``PREFECT_SERVER_EPHEMERAL_ENABLED``, start-up timeout raised to 180 s as
``fluxforge refresh`` does): worth it only when the step takes minutes, i.e. on many cores. The
trade-off of (1) is that such runs do not appear in the Prefect UI; their progress is in the
stage log (shards done/total, and a tqdm bar unless ``FLUXFORGE_PROGRESS=0``).
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd

from fluxforge.config import RunnerConfig
from fluxforge.data.dedup import DedupEngine, in_process
from fluxforge.data.shards import Failures, OnDone, ShardRunner, Step, run_step, serial
from fluxforge.errors import FluxForgeError

log = logging.getLogger(__name__)


class RunnerUnavailable(FluxForgeError):
    """The configured runner is not a Prefect task runner."""


def _prefect_env() -> None:
    """Prefect settings a stage needs; set before prefect is imported (it reads them at import)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a first start migrates a fresh database: Prefect's 20 s default is too short on a 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def task_runner(cfg: RunnerConfig) -> Any:
    """The Prefect task runner for ``cfg`` (process, thread, or serial as a one-thread pool)."""
    _prefect_env()
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if cfg.kind in ("thread", "serial"):
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1 if cfg.kind == "serial" else workers)
    raise RunnerUnavailable(f"data.runner.kind '{cfg.kind}' has no Prefect task runner (process, thread or serial)")


@contextmanager
def _spawn_safe_main(kind: str) -> Iterator[None]:
    """Hide ``__main__`` from spawned workers while the pool starts them.

    Prefect's process pool uses ``spawn``, which re-imports the parent's main module in every worker;
    a script that runs its work at import (no ``if __name__ == "__main__"`` guard; the stage scripts
    have one) would run it again in each worker. The step is pickled by reference to its own module,
    so workers do not need ``__main__``.
    """
    if kind != "process":
        yield
        return
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


class PrefectRunner:
    """A :class:`~fluxforge.data.shards.ShardRunner` over the Prefect task runner of ``cfg``, built when a map
    starts: a run that needs no pool (one shard) never imports Prefect."""

    def __init__(self, cfg: RunnerConfig):
        self.cfg = cfg
        self.kind = cfg.kind

    def __call__(self, step: Step, todo: Sequence[tuple[int, pd.DataFrame]], stage: str, on_done: OnDone) -> Failures:
        """Submit every shard to the task runner; hand each result to ``on_done`` as it arrives; return failures."""
        cfg = self.cfg
        runner = task_runner(cfg)
        from prefect import flow, task
        from prefect.cache_policies import NONE
        from prefect.futures import as_completed

        shard_task = task(run_step, name=f"{stage}-shard", cache_policy=NONE, persist_result=False)

        # no flow parameters: the data must not be sent to the Prefect API as flow-run parameters
        @flow(name=f"fluxforge-{stage}-shards", task_runner=runner, persist_result=False, log_prints=False)
        def shards_flow() -> Failures:
            futures = {shard_task.submit(step, shard): i for i, shard in todo}
            failed = []
            for fut in as_completed(list(futures)):
                try:
                    on_done(futures[fut], fut.result())
                except Exception as err:  # noqa: BLE001 - every other shard still finishes and is kept
                    failed.append((futures[fut], err))
            return failed

        from prefect.settings import get_current_settings

        api = get_current_settings().api.url
        log.info("%s: %d shards on a Prefect %s runner (%s workers), API %s", stage, len(todo), cfg.kind,
                 cfg.workers or os.cpu_count(), api or "a temporary local server (slow start; set PREFECT_API_URL)")
        with _spawn_safe_main(cfg.kind):
            return shards_flow()


def shard_runner(cfg: RunnerConfig) -> ShardRunner:
    """The runner ``data.runner`` asks for: in this process for ``serial``, Ray tasks for ``ray``, else a Prefect task runner."""
    if cfg.kind == "ray":
        from fluxforge.orchestrate.ray_cluster import RayRunner

        return RayRunner(cfg)
    return serial if cfg.kind == "serial" else PrefectRunner(cfg)


def dedup_engine(cfg: RunnerConfig) -> DedupEngine:
    """Where dedup runs: on the Ray cluster for ``ray`` (sketches per shard, LSH buckets shuffled), else in this process."""
    if cfg.kind == "ray":
        from fluxforge.orchestrate.ray_cluster import RayDedup

        return RayDedup(cfg)
    return in_process
