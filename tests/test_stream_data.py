"""The stream's data for a task: replay shares, the buffer, and the stability-gap strategies, on real token files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from fluxforge import paths as P
from fluxforge.config import parse_params, read_params
from fluxforge.continual.runner import Data, task_config
from fluxforge.data.tokenize import encode_stream, train_tokenizer

TINY = read_params(Path(__file__).parents[1] / "params.yaml", profile="tiny")
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):  # noqa: ANN201
    """A tokenize-stage directory with four slices of real documents."""
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    texts = {s: [" ".join(rng.choice(WORDS, rng.integers(20, 60))) + "." for _ in range(80)]
             for s in ("general-2021", "general-2022", "cyber-2021", "cyber-2022")}
    tok = train_tokenizer([t for ts in texts.values() for t in ts], 300)
    tok.save_pretrained(root)
    index = {"vocab_size": len(tok), "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id, "slices": {}}
    for name, ts in texts.items():
        ids = encode_stream(tok, ts).astype(np.uint16)
        ids.tofile(root / f"{name}.bin")
        index["slices"][name] = {"file": f"{name}.bin", "tokens": int(len(ids)), "docs": len(ts), "dtype": "uint16"}
    (root / "index.json").write_text(json.dumps(index))
    return root, tok


def _setup(tokens, monkeypatch, **stream):  # noqa: ANN001, ANN202
    root, tok = tokens
    monkeypatch.setattr(P, "TOKENS", root)
    raw = copy.deepcopy(TINY)
    raw["stream"].update(stream)
    params = parse_params(raw)
    return params, Data(params, params.stream, tok)


def test_replay_share_goes_to_the_base_data_and_the_buffer(tokens, monkeypatch):
    params, data = _setup(tokens, monkeypatch, replay={**TINY["stream"]["replay"], "ratio": 0.4, "buffer_tokens": 3000})
    task = params.stream.tasks[1]
    cfg = task_config(params.stream_train(), task, 1)
    _, weights = data.sampler(task, cfg, 0.4, seed=0)
    assert "buffer" not in weights  # nothing remembered yet
    assert sum(w for k, w in weights.items() if k.startswith("cyber")) == pytest.approx(0.6)
    data.remember(params.stream.tasks[0])
    assert 0 < data.buffer.tokens <= 3000
    _, weights = data.sampler(task, cfg, 0.4, seed=0)
    assert weights["buffer"] == pytest.approx(0.4 * 0.5) and weights["general-2021"] == pytest.approx(0.2)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_subset_epochs_trains_on_a_subset_of_budget_over_epochs(tokens, monkeypatch):
    params, data = _setup(tokens, monkeypatch, strategy={**TINY["stream"]["strategy"], "kind": "subset_epochs", "epochs": 4})
    task = params.stream.tasks[1]
    (name, stream), = data.new_stream(task, task_config(params.stream_train(), task, 1)).items()
    assert name == "cyber:subset_epochs"
    target = task.budget_tokens / 4
    assert target <= len(stream) < target + 80  # whole documents up to the first one that passes the target


def test_top_k_keeps_the_best_documents(tokens, monkeypatch):
    params, data = _setup(tokens, monkeypatch, strategy={**TINY["stream"]["strategy"], "kind": "top_k", "top_k_fraction": 0.25})
    task = params.stream.tasks[1]
    (_, stream), = data.new_stream(task, task_config(params.stream_train(), task, 1)).items()
    eos = tokens[1].eos_token_id
    assert int((np.asarray(stream) == eos).sum()) == 40  # 25% of the 160 cyber documents


def test_pretrain_mix_mirrors_the_base_mixture_whatever_the_ratio(tokens, monkeypatch):
    params, data = _setup(tokens, monkeypatch, replay={**TINY["stream"]["replay"], "ratio": 0.0},
                          strategy={**TINY["stream"]["strategy"], "kind": "pretrain_mix", "domain_share": 0.7})
    task = params.stream.tasks[1]
    _, weights = data.sampler(task, task_config(params.stream_train(), task, 1), 0.0, seed=0)
    assert sum(w for k, w in weights.items() if k.startswith("cyber")) == pytest.approx(0.7)
    assert weights["general-2021"] == pytest.approx(0.3)
