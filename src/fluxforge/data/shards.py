"""Run a data step over shards of a table in parallel through a Prefect 3 task runner, with per-shard resume.

WHY shards: filtering is per document, so a corpus split into ``runner.shard_docs``-document shards
can be filtered on every core (or a Dask/Ray cluster) and merged back in shard order, giving exactly
the table the unsharded step gives. The step must therefore treat each document on its own (a rule
over the whole batch, such as inverse toxicity's "drop the least toxic 10 %", is not shardable: the
caller runs it as one shard).

Resume: each finished shard's tables and stats are written, by the driver, into
``<work root>/<stage>/<key>/`` in one rename (:func:`fluxforge.io.atomic_dir`) with a ``done.json``
marker. ``key`` hashes the shard's content (every column, :func:`pandas.util.hash_pandas_object`),
the step's config and the code version (source of the step's module, this module and any modules
the caller names, plus the pandas/pyarrow versions). A rerun after a crash (a killed process, one
shard raising) reuses finished shards and runs only the others; a changed config, code or input
gives new keys, and stale keys are deleted at the start, so the work dir holds at most one run.
The work dir is NOT inside a DVC output: DVC deletes a stage's outputs before rerunning it, which
would throw the finished shards away (``data/.work`` is git-ignored and dvc-ignored). The caller
calls :meth:`Sharded.discard` once its own outputs are written.

Results travel back to the driver (Prefect futures) and the driver writes them, so workers on a
Dask/Ray cluster need no shared file system.

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

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fluxforge import paths as P
from fluxforge.config import RunnerConfig
from fluxforge.errors import FluxForgeError
from fluxforge.io import atomic_dir, file_lock, write_json

log = logging.getLogger(__name__)

WORK_ROOT = P.DATA / ".work"
DONE = "done.json"
CLUSTER_PACKAGES = {"dask": "prefect-dask", "ray": "prefect-ray"}


class RunnerUnavailable(FluxForgeError):
    """The configured runner needs a package that is not installed."""


class ShardFailed(RuntimeError):
    """A shard's step raised; finished shards are kept for the rerun. Not a FluxForgeError: it may be transient."""


@dataclass
class ShardResult:
    """What a step returns for one shard: named tables (merged in shard order) and integer stats (summed)."""

    tables: dict[str, pd.DataFrame]
    stats: dict = field(default_factory=dict)


Step = Callable[[pd.DataFrame], ShardResult]  # a module-level function or functools.partial (pickled to workers)


@dataclass
class Sharded:
    """The merged result of a sharded run and where its shards were kept."""

    tables: dict[str, pd.DataFrame]
    stats: dict
    shards: int
    ran: int  # shards computed by this run (the others were finished by an earlier one)
    work_dir: Path

    def discard(self) -> None:
        """Delete the finished shards: call after the caller's own outputs are safely written."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- splitting and keys
def split(df: pd.DataFrame, shard_docs: int) -> list[pd.DataFrame]:
    """Consecutive shards of at most ``shard_docs`` rows (at least one shard, possibly empty)."""
    df = df.reset_index(drop=True)
    if len(df) == 0:
        return [df]
    return [df.iloc[i:i + shard_docs].reset_index(drop=True) for i in range(0, len(df), shard_docs)]


def _module_file(obj: Any) -> Path | None:
    target = obj.func if hasattr(obj, "func") else obj  # functools.partial
    mod = obj if isinstance(obj, types.ModuleType) else inspect.getmodule(target)
    src = getattr(mod, "__file__", None)
    return Path(src) if src else None


def code_version(step: Step, modules: Sequence[types.ModuleType | Path] = (), packages: Sequence[str] = ()) -> str:
    """Hash of the code that shapes a shard's result: the step's module, this module, ``modules`` (modules, files or
    folders such as data assets) and the versions of pandas, pyarrow and ``packages`` (e.g. a model inside a wheel)."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    for pkg in ("pandas", "pyarrow", *packages):
        try:
            h.update(f"{pkg} {version(pkg)}\n".encode())
        except PackageNotFoundError:
            h.update(f"{pkg} -\n".encode())
    files = {_module_file(step), Path(__file__)} | {m if isinstance(m, Path) else _module_file(m) for m in modules}
    for f in sorted(str(f) for f in files if f is not None):
        for g in sorted(Path(f).rglob("*")) if Path(f).is_dir() else [Path(f)]:
            if g.is_file():
                h.update(str(g).encode() + b"\0" + g.read_bytes())
    return h.hexdigest()


def _config_text(config: Any) -> str:
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return json.dumps(config, sort_keys=True, default=str)


def shard_key(shard: pd.DataFrame, config: Any, code: str) -> str:
    """Content (every column and dtype) + config + code version: equal keys mean an equal result."""
    h = hashlib.sha256(code.encode())
    h.update(_config_text(config).encode())
    h.update(json.dumps([[c, str(t)] for c, t in shard.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(shard, index=False).to_numpy().tobytes())
    return h.hexdigest()[:24]


# ----------------------------------------------------------------------------- the work dir
def _is_done(d: Path) -> bool:
    return (d / DONE).is_file()


def _save(d: Path, index: int, result: ShardResult) -> None:
    with atomic_dir(d) as tmp:
        for name, table in result.tables.items():
            table.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "stats.json", result.stats)
        write_json(tmp / DONE, {"shard": index, "tables": {k: len(v) for k, v in result.tables.items()}})


def _load(d: Path) -> tuple[dict[str, pa.Table], dict]:
    names = json.loads((d / DONE).read_text())["tables"]
    return {n: pq.read_table(d / f"{n}.parquet") for n in names}, json.loads((d / "stats.json").read_text())


def _prune(stage_dir: Path, keep: set[str]) -> None:
    """Delete shards of earlier runs (other inputs, config or code): the work dir stays one run's size."""
    for d in stage_dir.iterdir() if stage_dir.exists() else []:
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- merging
def merge_stats(parts: Sequence[dict], where: str = "") -> dict:
    """Sum integer stats key by key (nested dicts recursively); anything else must agree across shards."""
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            key = f"{where}{k}"
            if k not in out:
                out[k] = merge_stats([v], f"{key}.") if isinstance(v, dict) else v
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = merge_stats([out[k], v], f"{key}.")
            elif isinstance(v, int) and not isinstance(v, bool) and isinstance(out[k], int):
                out[k] += v
            elif v != out[k]:
                raise ShardFailed(f"stat '{key}' cannot be merged across shards ({out[k]!r} vs {v!r}): "
                                  "a sharded step may return only integer counts, or values equal in every shard")
    return out


def _merge(results: list[tuple[dict[str, pa.Table], dict]]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Concatenate in shard order as Arrow tables, then convert once.

    WHY Arrow and no pandas metadata: a pandas dtype depends on the shard (an empty or all-null column
    is ``object``, a full one ``str``), and ``write_docs`` embeds dtypes in the Parquet footer, so
    merging frames would make the stage's output bytes (its DVC hash) depend on ``shard_docs``.
    """
    tables = {}
    for name in results[0][0]:
        merged = pa.concat_tables([r[0][name] for r in results], promote_options="default")
        tables[name] = merged.replace_schema_metadata(None).to_pandas()
    return tables, merge_stats([r[1] for r in results])


# ----------------------------------------------------------------------------- runners
def _prefect_env() -> None:
    """Prefect settings a stage needs; set before prefect is imported (it reads them at import)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a first start migrates a fresh database: Prefect's 20 s default is too short on a 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def task_runner(cfg: RunnerConfig) -> Any:
    """The Prefect task runner for ``cfg``; dask/ray say which package is missing."""
    _prefect_env()
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if cfg.kind in ("thread", "serial"):
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1 if cfg.kind == "serial" else workers)
    if cfg.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise _missing("dask") from None
        return DaskTaskRunner(address=cfg.address) if cfg.address else DaskTaskRunner(cluster_kwargs={"n_workers": workers})
    if cfg.kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise _missing("ray") from None
        return RayTaskRunner(address=cfg.address) if cfg.address else RayTaskRunner(init_kwargs={"num_cpus": workers})
    raise RunnerUnavailable(f"data.runner.kind '{cfg.kind}' is not one of process, thread, serial, dask, ray")


def _missing(kind: str) -> RunnerUnavailable:
    pkg = CLUSTER_PACKAGES[kind]
    return RunnerUnavailable(f"data.runner.kind '{kind}' needs the {pkg} package, which is not installed: "
                             f"pip install {pkg}  (or set data.runner.kind to process, thread or serial)")


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


def _run_step(step: Step, shard: pd.DataFrame) -> ShardResult:
    result = step(shard)
    if not isinstance(result, ShardResult):
        raise TypeError(f"a sharded step must return ShardResult, got {type(result).__name__}")
    return result


def _prefect_map(step: Step, todo: list[tuple[int, pd.DataFrame]], cfg: RunnerConfig, stage: str,
                 on_done: Callable[[int, ShardResult], None]) -> list[tuple[int, BaseException]]:
    """Submit every shard to the task runner; hand each result to ``on_done`` as it arrives; return failures."""
    runner = task_runner(cfg)
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from prefect.futures import as_completed

    shard_task = task(_run_step, name=f"{stage}-shard", cache_policy=NONE, persist_result=False)

    # no flow parameters: the data must not be sent to the Prefect API as flow-run parameters
    @flow(name=f"fluxforge-{stage}-shards", task_runner=runner, persist_result=False, log_prints=False)
    def shards_flow() -> list[tuple[int, BaseException]]:
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


def _serial(step: Step, todo: list[tuple[int, pd.DataFrame]],
            on_done: Callable[[int, ShardResult], None]) -> list[tuple[int, BaseException]]:
    failed = []
    for i, shard in todo:
        try:
            on_done(i, _run_step(step, shard))
        except Exception as err:  # noqa: BLE001 - as the parallel runners: the other shards still finish
            failed.append((i, err))
    return failed


def _progress(total: int, done: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="shard", mininterval=2.0, dynamic_ncols=True,
                disable=os.environ.get("FLUXFORGE_PROGRESS", "1") == "0")


# ----------------------------------------------------------------------------- entry point
def run_sharded(step: Step, df: pd.DataFrame, *, stage: str, runner: RunnerConfig, config: Any,
                code: Sequence[types.ModuleType | Path] = (), packages: Sequence[str] = (),
                work_root: Path = WORK_ROOT) -> Sharded:
    """Run ``step`` over shards of ``df``; return the shard results merged in shard order.

    ``config`` is whatever shapes the step's result besides the data (hashed into each shard's key);
    ``code`` names modules (or files, folders) the step uses whose edits must invalidate finished
    shards, ``packages`` installed distributions whose version must (the step's module, this one,
    pandas and pyarrow are always counted). A failing
    shard raises :class:`ShardFailed` (or the step's own FluxForgeError, which would fail again the
    same way) after every other shard has finished and been kept.
    """
    shards = split(df, runner.shard_docs)
    version = code_version(step, code, packages)
    keys = [shard_key(s, config, version) for s in shards]
    stage_dir = Path(work_root) / stage
    with file_lock(Path(work_root) / f"{stage}.lock"):
        _prune(stage_dir, set(keys))
        todo = [(i, s) for i, (s, k) in enumerate(zip(shards, keys, strict=True)) if not _is_done(stage_dir / k)]
        reused = len(shards) - len(todo)
        if reused:
            log.info("%s: resuming: %d of %d shards already finished in %s", stage, reused, len(shards), stage_dir)
        bar = _progress(len(shards), reused, stage)
        finished = [reused]

        def on_done(i: int, result: ShardResult) -> None:
            _save(stage_dir / keys[i], i, result)
            finished[0] += 1
            bar.update(1)
            log.info("%s: shard %d done (%d/%d)", stage, i, finished[0], len(shards))

        try:
            if runner.kind == "serial" or len(todo) <= 1:
                failed = _serial(step, todo, on_done)
            else:
                failed = _prefect_map(step, todo, runner, stage, on_done)
        finally:
            bar.close()
        if failed:
            _raise_first(stage, failed, len(shards), len(shards) - len(failed), runner.shard_docs)
        tables, stats = _merge([_load(stage_dir / k) for k in keys])
    return Sharded(tables, stats, len(shards), len(todo), stage_dir)


def _raise_first(stage: str, failed: list[tuple[int, BaseException]], total: int, done: int, size: int) -> None:
    failed.sort(key=lambda f: f[0])
    i, err = failed[0]
    which = ", ".join(str(j) for j, _ in failed[:10])
    msg = (f"{stage}: {len(failed)} of {total} shards failed (number {which}); the first, shard {i} (rows "
           f"{i * size}..{(i + 1) * size - 1}), raised {type(err).__name__}: {err}\n"
           f"{done} finished shards are kept: a rerun computes only the failed ones")
    if isinstance(err, FluxForgeError):
        if _reconstructible(err):
            raise type(err)(msg) from err
        raise err
    raise ShardFailed(msg) from err


def _reconstructible(err: BaseException) -> bool:
    try:
        type(err)("x")
    except Exception:  # noqa: BLE001 - a FluxForgeError subclass with another constructor: re-raise it as it is
        return False
    return True
