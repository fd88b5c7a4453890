"""Sharded data steps: parallel = serial, per-shard resume after a crash, clear errors for missing runners.

The parallel runs go through real Prefect task runners on a real (test harness) Prefect server;
executions are counted from files the worker itself writes, never by mocking.
"""

from __future__ import annotations

import os
import uuid
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from fluxforge.config import FilterConfig, RunnerConfig, Source
from fluxforge.data.shards import ShardFailed, ShardResult, merge_stats, run_sharded, split
from fluxforge.orchestrate.runners import RunnerUnavailable, shard_runner, task_runner


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect_home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def world_docs(tmp_path_factory) -> pd.DataFrame:
    """The tiny world's raw documents (planted defects included), read as the ingest stage reads them."""
    from fluxforge.config import load_params
    from fluxforge.data.sources import read_source
    from fluxforge.world import generate_world

    root = Path(__file__).resolve().parents[1]
    params = load_params(root / "params.yaml", profile="tiny")
    out = tmp_path_factory.mktemp("world")
    generate_world(params.world, out)
    docs, _, _ = read_source(Source(name="world", format="world", path=str(out)))
    assert len(docs) > 100
    return docs


# ----------------------------------------------------------------------------- steps run by the workers
def tagging_step(shard: pd.DataFrame, log_dir: str, crash_on: str | None = None) -> ShardResult:
    """Keep docs with an even word count; log one file per execution; raise on a doc containing ``crash_on``."""
    Path(log_dir, f"{shard['id'].iloc[0]}-{uuid.uuid4().hex}").write_text(str(len(shard)))
    if crash_on is not None and shard["text"].str.contains(crash_on, regex=False).any():
        raise ValueError(f"planted crash in the shard starting at {shard['id'].iloc[0]}")
    even = shard["text"].str.split().str.len() % 2 == 0
    return ShardResult({"kept": shard[even].reset_index(drop=True), "rejected": shard[~even].reset_index(drop=True)},
                       {"even": int(even.sum()), "by": {"odd": int((~even).sum())}})


def synthetic(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"d{i:04d}" for i in range(n)], "text": [" ".join(["w"] * (i % 7 + 1)) for i in range(n)],
                         "n": range(n)})


def executions(log_dir: Path) -> list[str]:
    """The first doc id of every shard executed so far (one file per execution, written by the worker)."""
    return sorted(f.name.split("-")[0] for f in log_dir.iterdir())


# ----------------------------------------------------------------------------- tests
def test_split_covers_every_row_once_in_order():
    df = synthetic(23)
    shards = split(df, 5)
    assert [len(s) for s in shards] == [5, 5, 5, 5, 3]
    assert pd.concat(shards, ignore_index=True).equals(df)
    assert len(split(df.iloc[:0], 5)) == 1  # an empty table is one empty shard: the step still defines the columns


@pytest.mark.slow  # a real Prefect server (~25 s to start here) and worker processes
def test_thread_runner_equals_serial_and_unsharded(prefect_api, tmp_path):
    df = synthetic(50)
    whole = tagging_step(df, str(tmp_path))
    got = {}
    for kind in ("serial", "thread"):
        logs = tmp_path / kind
        logs.mkdir()
        run = run_sharded(partial(tagging_step, log_dir=str(logs)), df, stage=f"t-{kind}", shard_docs=12,
                          runner=shard_runner(RunnerConfig(kind=kind, workers=2)), config={"v": 1}, work_root=tmp_path / "work")
        assert run.shards == 5 and run.ran == 5 and len(executions(logs)) == 5
        got[kind] = run
        run.discard()
        assert not run.work_dir.exists()
    for run in got.values():
        for name in ("kept", "rejected"):  # values and order; merged strings come back as str, not object
            pd.testing.assert_frame_equal(run.tables[name], whole.tables[name], check_dtype=False)
        assert run.stats == whole.stats  # integer stats summed over shards, nested ones too


@pytest.mark.slow  # a real Prefect server (~25 s to start here) and worker processes
def test_process_runner_filter_equals_one_apply_filters(prefect_api, world_docs, tmp_path):
    from fluxforge.data.filters import apply_filters, filter_in_shards

    cfg = FilterConfig()
    kept0, rejected0, stats0 = apply_filters(world_docs, cfg)
    assert len(kept0) and len(rejected0)  # the planted defects make both tables non-trivial
    runner = RunnerConfig(kind="process", workers=2, shard_docs=len(world_docs) // 3)
    kept, rejected, stats, run = filter_in_shards(world_docs, cfg, runner.shard_docs, shard_runner(runner), work_root=tmp_path / "work")
    assert run.shards == 4 and run.ran == 4
    pd.testing.assert_frame_equal(kept, kept0, check_dtype=False)  # parquet gives str where pandas had object
    pd.testing.assert_frame_equal(rejected, rejected0, check_dtype=False)
    assert stats == stats0


@pytest.mark.slow  # a real Prefect server (~25 s to start here) and worker processes
def test_crash_in_one_shard_then_rerun_redoes_only_that_shard(prefect_api, tmp_path):
    df = synthetic(50)
    df.loc[27, "text"] = "BOOM " + df.loc[27, "text"]  # shard 2 of 5 (rows 24..35)
    logs, work = tmp_path / "logs", tmp_path / "work"
    logs.mkdir()
    runner = shard_runner(RunnerConfig(kind="process", workers=2))

    with pytest.raises(ShardFailed, match=r"(?s)1 of 5 shards failed \(number 2\); the first, shard 2 \(rows 24..35\).*planted crash.*4 finished shards are kept"):
        run_sharded(partial(tagging_step, log_dir=str(logs), crash_on="BOOM"), df, stage="crash", shard_docs=12, runner=runner,
                    config={"v": 1}, work_root=work)
    assert executions(logs) == ["d0000", "d0012", "d0024", "d0036", "d0048"]
    assert len([d for d in (work / "crash").iterdir() if (d / "done.json").exists()]) == 4

    for f in logs.iterdir():
        f.unlink()
    run = run_sharded(partial(tagging_step, log_dir=str(logs)), df, stage="crash", shard_docs=12, runner=runner,
                      config={"v": 1}, work_root=work)
    assert executions(logs) == ["d0024"]  # only the shard that crashed ran again
    assert run.ran == 1 and run.shards == 5
    whole = tagging_step(df, str(tmp_path))
    pd.testing.assert_frame_equal(run.tables["kept"], whole.tables["kept"], check_dtype=False)
    pd.testing.assert_frame_equal(run.tables["rejected"], whole.tables["rejected"], check_dtype=False)

    # another config gives other keys: everything runs again and the old shards are pruned (the dir stays bounded)
    for f in logs.iterdir():
        f.unlink()
    again = run_sharded(partial(tagging_step, log_dir=str(logs)), df, stage="crash", shard_docs=12,
                        runner=shard_runner(RunnerConfig(kind="serial")), config={"v": 2}, work_root=work)
    assert len(executions(logs)) == 5 and again.ran == 5
    assert len(list((work / "crash").iterdir())) == 5


def test_merge_stats_refuses_what_cannot_be_summed():
    assert merge_stats([{"a": 1, "b": {"c": 2}}, {"a": 3, "b": {"c": 4}, "d": 5}]) == {"a": 4, "b": {"c": 6}, "d": 5}
    with pytest.raises(ShardFailed, match="stat 'b.ratio'"):
        merge_stats([{"b": {"ratio": 0.5}}, {"b": {"ratio": 0.25}}])


def test_ray_is_not_a_prefect_task_runner_and_dask_is_gone():
    from pydantic import ValidationError

    from fluxforge.orchestrate.ray_cluster import RayRunner

    assert isinstance(shard_runner(RunnerConfig(kind="ray")), RayRunner)
    with pytest.raises(RunnerUnavailable, match="has no Prefect task runner"):
        task_runner(RunnerConfig(kind="ray"))
    with pytest.raises(ValidationError, match="'process', 'thread', 'serial' or 'ray'"):
        RunnerConfig(kind="dask")


def test_address_only_for_ray():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="address is used by kind ray only"):
        RunnerConfig(kind="process", address="auto")
    assert RunnerConfig(kind="ray", address="ray://head:10001").address


@pytest.mark.slow  # a real Prefect server (~25 s to start here) and worker processes
def test_filter_stage_writes_the_same_tables_sharded_or_not(prefect_api, world_docs, tiny_params, in_tmp):
    """The DVC stage itself: 4 shards on a process pool give byte-for-byte the tables of one in-process shard."""
    from stages.filter import main as filter_stage

    from fluxforge import paths as P
    from fluxforge.data.documents import read_docs, write_docs

    write_docs(world_docs, P.RAW / "world.parquet")

    def run(runner: RunnerConfig) -> dict[str, bytes]:
        params = tiny_params.model_copy(update={"data": tiny_params.data.model_copy(update={"runner": runner})})
        filter_stage.run(params)
        assert not (P.DATA / ".work" / "filter").exists()  # finished shards are deleted once the outputs exist
        return {f.name: f.read_bytes() for f in sorted(P.FILTERED.iterdir())}

    sharded = run(RunnerConfig(kind="process", workers=2, shard_docs=len(world_docs) // 3))
    single = run(RunnerConfig(kind="serial", shard_docs=10 * len(world_docs)))
    assert set(sharded) == {"kept.parquet", "rejected.parquet"} and sharded == single
    kept, rejected = read_docs(P.FILTERED / "kept.parquet"), read_docs(P.FILTERED / "rejected.parquet")
    assert len(kept) + len(rejected) == len(world_docs) and len(rejected) > 0


def test_editing_listed_code_or_config_changes_every_key(tmp_path):
    from fluxforge.data.shards import code_version, shard_key

    rules = tmp_path / "rules.txt"
    rules.write_text("a\n")
    step = partial(tagging_step, log_dir=str(tmp_path))
    before = code_version(step, [rules])
    shard = synthetic(5)
    assert code_version(step, [rules]) == before  # stable across calls
    rules.write_text("b\n")
    after = code_version(step, [rules])
    assert after != before
    assert shard_key(shard, {"v": 1}, after) != shard_key(shard, {"v": 1}, before)
    assert shard_key(shard, {"v": 1}, after) != shard_key(shard, {"v": 2}, after)
    edited = shard.copy()
    edited.loc[3, "n"] = 99  # any column, not only the text
    assert shard_key(edited, {"v": 1}, after) != shard_key(shard, {"v": 1}, after)
