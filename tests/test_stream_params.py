"""A continual stream that cannot run fails when params are read, with the task, slice or key named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fluxforge.config import ParamsError, parse_params, read_params

TINY = read_params(Path(__file__).parents[1] / "params.yaml", profile="tiny")


def _with(**changes) -> dict:
    raw = copy.deepcopy(TINY)
    for path, value in changes.items():
        node = raw["stream"]
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[leaf] = value
    return raw


def test_the_tiny_stream_is_valid_and_its_tasks_train_with_pretrains_keys_plus_overrides():
    p = parse_params(copy.deepcopy(TINY))
    cfg = p.stream_train()
    assert cfg.schedule == "infinite" and cfg.lr == TINY["stream"]["train"]["lr"]
    assert cfg.batch_size == TINY["pretrain"]["batch_size"]


def test_a_stream_naming_an_unknown_slice_is_refused():
    with pytest.raises(ParamsError, match=r"(?s)general-2022.*general-2099"):
        parse_params(_with(tasks__0__slices=["general-2099"]))


@pytest.mark.parametrize("ratio", [1.5, -0.1])
def test_a_replay_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ParamsError, match=r"stream\.replay\.ratio"):
        parse_params(_with(replay__ratio=ratio))


def test_a_budget_below_one_batch_is_refused():
    one_batch = TINY["pretrain"]["batch_size"] * TINY["pretrain"]["seq_len"]
    with pytest.raises(ParamsError, match=r"(?s)cyber.*budget"):
        parse_params(_with(tasks__1__budget_tokens=one_batch - 1))


def test_training_keys_a_task_cannot_set_are_refused():
    with pytest.raises(ParamsError, match=r"stream\.train\.steps"):
        parse_params(_with(train={"steps": 10}))
    with pytest.raises(ParamsError, match=r"stream\.train\.learning_rate"):
        parse_params(_with(train={"learning_rate": 0.1}))


def test_meta_cosine_task_peaks_are_non_increasing_and_start_near_the_peak():
    """methods.md section 8 test 6: the autoregressive meta-schedule's per-task peak is non-increasing in t."""
    from fluxforge.train.schedule import meta_cosine_peak

    peaks = [meta_cosine_peak(1e-3, 1e-4, t, steps=100, warmup=10) for t in range(6)]
    assert all(a >= b for a, b in zip(peaks, peaks[1:]))
    assert peaks[0] == pytest.approx(1e-3, rel=1e-3) and peaks[1] == pytest.approx(1e-4 + 0.5 * 9e-4, rel=0.05)
    assert all(p > 1e-4 for p in peaks)
    with pytest.raises(ParamsError, match="meta_cosine"):
        parse_params(_with(task_peak="meta_cosine"))  # the tiny stream trains on an infinite schedule


def test_a_meta_schedule_sets_each_tasks_peak_in_the_stream():
    """stream.task_peak reaches each task's config: meta_rsqrt on rsqrt tasks gives non-increasing peaks from lr."""
    from fluxforge.continual.runner import task_config

    p = parse_params(_with(task_peak="meta_rsqrt", train={"lr": 0.003, "schedule": "rsqrt", "warmup_steps": 2}))
    base, task = p.stream_train(), p.stream.tasks[0]
    peaks = [task_config(base, task, i, p.stream.task_peak).lr for i in range(4)]
    assert peaks[0] == 0.003 and all(a > b for a, b in zip(peaks, peaks[1:]))
    assert task_config(base, task, 2, "constant").lr == 0.003


def test_stream_train_is_typed_derived_once_and_kept_as_written():
    p = parse_params(copy.deepcopy(TINY))
    assert p.stream_train() is p.stream_train()  # derived when the params were validated, not on each call
    assert p.stream.model_dump()["train"] == TINY["stream"]["train"]  # only the keys written are overrides
    with pytest.raises(ParamsError, match=r"stream\.train\.lr: Input should be greater than 0 \(got -0\.1\)"):
        parse_params(_with(train={"lr": -0.1}))
    with pytest.raises(ParamsError, match=r"stream\.train\.schedule: Input should be 'cosine', 'wsd', 'infinite', 'constant' or 'rsqrt'"):
        parse_params(_with(train={"schedule": "linear"}))
