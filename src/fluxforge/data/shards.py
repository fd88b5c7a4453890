"""Run a data step over shards of a table, mapped by an injected runner, with per-shard resume.

WHY shards: filtering is per document, so a corpus split into ``shard_docs``-document shards can be
filtered on every core (or a Dask/Ray cluster) and merged back in shard order, giving exactly the
table the unsharded step gives. The step must therefore treat each document on its own (a rule
over the whole batch, such as inverse toxicity's "drop the least toxic 10 %", is not shardable: the
caller runs it as one shard).

How the shards are mapped is the caller's choice, a :class:`ShardRunner`: :data:`serial` (one shard
after another in this process) here, a Prefect task-runner pool in
:mod:`fluxforge.orchestrate.runners` (the data layer does not import Prefect). A run with at most
one shard to compute always runs in this process.

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

Results travel back to the driver (the runner hands each to ``on_done``) and the driver writes
them, so workers on a cluster need no shared file system.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fluxforge import paths as P
from fluxforge.errors import FluxForgeError
from fluxforge.io import atomic_dir, file_lock, write_json

log = logging.getLogger(__name__)

WORK_ROOT = P.DATA / ".work"
DONE = "done.json"


class ShardFailed(RuntimeError):
    """A shard's step raised; finished shards are kept for the rerun. Not a FluxForgeError: it may be transient."""


@dataclass
class ShardResult:
    """What a step returns for one shard: named tables (merged in shard order) and integer stats (summed)."""

    tables: dict[str, pd.DataFrame]
    stats: dict = field(default_factory=dict)


Step = Callable[[pd.DataFrame], ShardResult]  # a module-level function or functools.partial (pickled to workers)
OnDone = Callable[[int, ShardResult], None]
Failures = list[tuple[int, BaseException]]


class ShardRunner(Protocol):
    """Maps a step over shards: runs ``step`` on each ``(index, shard)`` of ``todo``, hands each result to
    ``on_done`` (in the driver) as it arrives, and returns the shards that raised instead of raising, so
    every other shard still finishes and is kept. ``kind`` names it in ledgers and logs."""

    kind: str

    def __call__(self, step: Step, todo: Sequence[tuple[int, pd.DataFrame]], stage: str, on_done: OnDone) -> Failures: ...


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


# ----------------------------------------------------------------------------- running shards
def run_step(step: Step, shard: pd.DataFrame) -> ShardResult:
    """``step(shard)``, checked to be a :class:`ShardResult` (what every runner calls on a worker)."""
    result = step(shard)
    if not isinstance(result, ShardResult):
        raise TypeError(f"a sharded step must return ShardResult, got {type(result).__name__}")
    return result


class Serial:
    """The in-process runner: one shard after another, no pool and no Prefect."""

    kind = "serial"

    def __call__(self, step: Step, todo: Sequence[tuple[int, pd.DataFrame]], stage: str, on_done: OnDone) -> Failures:
        failed = []
        for i, shard in todo:
            try:
                on_done(i, run_step(step, shard))
            except Exception as err:  # noqa: BLE001 - as the parallel runners: the other shards still finish
                failed.append((i, err))
        return failed


serial = Serial()


def _progress(total: int, done: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="shard", mininterval=2.0, dynamic_ncols=True,
                disable=os.environ.get("FLUXFORGE_PROGRESS", "1") == "0")


# ----------------------------------------------------------------------------- entry point
def run_sharded(step: Step, df: pd.DataFrame, *, stage: str, shard_docs: int, config: Any, runner: ShardRunner = serial,
                code: Sequence[types.ModuleType | Path] = (), packages: Sequence[str] = (),
                work_root: Path = WORK_ROOT) -> Sharded:
    """Run ``step`` over shards of ``shard_docs`` rows of ``df`` with ``runner``; return the results merged in shard order.

    ``config`` is whatever shapes the step's result besides the data (hashed into each shard's key);
    ``code`` names modules (or files, folders) the step uses whose edits must invalidate finished
    shards, ``packages`` installed distributions whose version must (the step's module, this one,
    pandas and pyarrow are always counted). A failing
    shard raises :class:`ShardFailed` (or the step's own FluxForgeError, which would fail again the
    same way) after every other shard has finished and been kept.
    """
    shards = split(df, shard_docs)
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
            failed = (serial if len(todo) <= 1 else runner)(step, todo, stage, on_done)
        finally:
            bar.close()
        if failed:
            _raise_first(stage, failed, len(shards), len(shards) - len(failed), shard_docs)
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
