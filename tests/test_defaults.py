"""Each default is stated once: on its typed field in fluxforge.config. params.yaml repeats every key (DVC reads the file).

The test walks params.yaml and compares each value with the typed default of its key (the default of the section it
sits in, e.g. ``data.contracts.curated`` has its own ``text_chars``). Where params.yaml deliberately differs, the key
(or a glob of keys) is listed in DIFFERS with the reason, here and nowhere else; any other difference fails, and so
does an entry that no longer matches a difference.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fluxforge.config import Params, StreamTrainOverrides, read_params

ROOT = Path(__file__).resolve().parents[1]

DIFFERS: dict[str, str] = {
    # data: the typed defaults are the published values; the generated world needs these four changed
    "data.filters.url_blocklist.domains": "the world's planted mirror hosts (its blocked_url defects)",
    "data.filters.gopher_repetition.top_n_grams": "the world's ~80-word documents repeat a two-word entity name 4-6 "
                                                  "times: the published thresholds drop 2.6% of clean documents",
    "data.filters.gopher_quality.min_alpha_words_ratio": "punctuation tokens count as words (datatrove), so the world's "
                                                         "Q/A documents score 0.77-0.80 against the published ratio",
    "data.filters.c4.min_words_per_line": "the published rule strips the world's titles and one-word answers, and the "
                                          "model lost its Q/A examples (final general accuracy 0.80 -> 0.65)",
    "data.dedup.bands": "datatrove's band count missed 4 of the world's 72 near duplicates (Jaccard 0.82-0.88)",
    # training: the default DAG's recipe, sized for 2 CPU cores in minutes
    "*.steps": "the default DAG's run lengths",
    "*.warmup_steps": "warmup sized to each run's length",
    "*.seed": "each training section its own seed",
    "continual.tasks.*.lr": "per-task rates: higher learns cyber faster but raises general perplexity (BENCHMARKS.md)",
    "continual.tasks.*.kind": "the cyber task is a domain update, not a time slice",
    "continual.tasks.*.replay.*": "each update replays earlier general data against forgetting",
    "*.probe_every": "the default run draws capability curves (probes are off unless asked for)",
    "*.probe_questions": "a smaller probe per domain keeps the curves cheap in the default run",
    "distill.student_layers": "the student keeps teacher layers (from scratch is far weaker here: BENCHMARKS.md)",
    "stream.planner.pilot_steps": "pilots sized to the default stream's shorter tasks (profiles/full.yaml: 40)",
    "mm.stream.methods": "the default image stream runs the two that carry its headline (replay vs none); "
                         "profiles/full.yaml adds lora and ema_merge",
    "stream.replay.slices": "the stream replays the base model's pretraining data",
    "stream.replay.buffer_tokens": "and a buffer of earlier tasks' documents",
    "stream.merge.method": "the default stream evaluates an EMA merge across tasks",
    "register.gate.min_student_acc_fraction": "the default gate also wants a useful student (off unless asked for)",
    "register.gate.reference": "the default run has a multi-seed reference (benchmarks/evidence.json); another "
                               "profile or scale has none, so the typed default leaves the rule off",
}

NO_DEFAULT = object()  # a required key (a source's name) or a stream.train override: nothing to compare with


def _model(annotation: Any) -> type[BaseModel] | None:
    """The params section type inside ``annotation`` (``StreamConfig | None`` -> StreamConfig), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in typing.get_args(annotation) if (m := _model(a))), None)


def walk(model: type[BaseModel], default: BaseModel | None, raw: dict, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, value in ``raw``, typed default) for every leaf; ``default``: the section's own default instance."""
    names = {info.alias or name: name for name, info in model.model_fields.items()}
    for key, value in raw.items():
        info = model.model_fields[names[key]]
        here = f"{path}.{key}" if path else str(key)
        if info.is_required() or model is StreamTrainOverrides:
            typed = NO_DEFAULT
        elif default is not None:
            typed = getattr(default, names[key])
        else:
            typed = info.get_default(call_default_factory=True)
        origin, args = typing.get_origin(info.annotation), typing.get_args(info.annotation)
        if origin is list and args and (item := _model(args[0])):  # data.sources, stream.tasks
            for i, entry in enumerate(value):
                yield from walk(item, None, entry, f"{here}.{i}")
        elif origin is dict and args and (item := _model(args[1])):  # continual.tasks
            for name, entry in value.items():
                yield from walk(item, None, entry, f"{here}.{name}")
        elif isinstance(value, dict) and (section := _model(info.annotation)):
            yield from walk(section, typed if isinstance(typed, section) else None, value, here)
        else:
            yield here, value, typed


def differences(raw: dict) -> dict[str, tuple[Any, Any]]:
    return {key: (value, typed) for key, value, typed in walk(Params, None, raw)
            if typed is not NO_DEFAULT and value != typed}


def test_params_yaml_states_the_typed_defaults_or_says_why_not():
    diffs = differences(read_params(ROOT / "params.yaml"))
    unexplained = {k: v for k, v in diffs.items() if not any(fnmatchcase(k, pat) for pat in DIFFERS)}
    assert not unexplained, ("params.yaml differs from the typed default (value, default) without a reason in DIFFERS: "
                             f"{unexplained}")
    stale = [pat for pat in DIFFERS if not any(fnmatchcase(k, pat) for k in diffs)]
    assert not stale, f"DIFFERS lists keys where params.yaml no longer differs from the typed default: {stale}"


def test_the_walk_reaches_every_kind_of_key():
    """A changed leaf is seen wherever it sits: a section, a nested section, a list of sources, a dict of tasks."""
    raw = read_params(ROOT / "params.yaml")
    keys = {key for key, _, _ in walk(Params, None, raw)}
    assert {"world.defects.pii", "data.sources.0.licence", "continual.tasks.cyber.grad_clip", "stream.train.lr",
            "register.gate.must_beat_champion", "data.contracts.curated.text_chars"} <= keys
    planted = copy.deepcopy(raw)
    planted["data"]["filters"]["fineweb"]["line_punct_thr"] = 0.5
    planted["data"]["sources"][0]["licence"] = "other"
    planted["continual"]["tasks"]["cyber"]["grad_clip"] = 2.0
    planted["data"]["contracts"]["curated"]["text_chars"] = [1, 5000000]  # the raw contract's default, not curated's
    new = set(differences(planted)) - set(differences(raw))
    assert new == {"data.filters.fineweb.line_punct_thr", "data.sources.0.licence", "continual.tasks.cyber.grad_clip",
                   "data.contracts.curated.text_chars"}
