"""Determinism where it is possible (issue 21 item 4): the same stage, params and machine give bitwise identical weights.

The tiny profile's `pretrain` stage (``python -m stages.pretrain``, the DAG's own command) runs in fresh
processes on the same packed tokens; the safetensors digests must be equal, and a run with another seed must
differ (so equal digests are not a digest that ignores the weights). Across CPU types weights do differ:
BENCHMARKS.md "Evidence over seeds" says by how much the headline numbers move.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fluxforge.config import dump_params, read_params
from fluxforge.data.tokenize import pack_corpus, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the vendor patched a flaw in the router firmware after a report from the security team".split()


def packed_tokens(root: Path) -> None:
    """data/tokens of the tiny profile's pretraining slice (general-2021): 120 seeded documents, a tiny BPE."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=40)) + "." for _ in range(120)]
    docs = pd.DataFrame({"id": [f"d{i:03d}" for i in range(120)], "text": texts, "domain": "general",
                         "timestamp": pd.Timestamp("2021-03-01"), "url": "https://news.example/a"})
    pack_corpus(docs, train_tokenizer(texts, 400), root / "data" / "tokens")


def params_file(root: Path, seed: int) -> None:
    raw = read_params(ROOT / "params.yaml", profile="tiny")
    raw["pretrain"].update(seed=seed, probe_every=0)  # no probe: it needs the world's questions
    (root / "params.yaml").write_text(dump_params(raw))


def pretrain_digest(root: Path) -> str:
    """Run the pretrain stage in a fresh process in ``root``; the sha256 of the weights it wrote."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "FLUXFORGE_THREADS": "1",
           "FLUXFORGE_PROGRESS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return hashlib.sha256((root / "models" / "pretrain" / "model.safetensors").read_bytes()).hexdigest()


def test_pretrain_gives_bitwise_identical_weights_in_two_fresh_processes(tmp_path):
    first = tmp_path / "first"
    packed_tokens(first)
    params_file(first, seed=0)
    second, other_seed = tmp_path / "second", tmp_path / "other_seed"
    shutil.copytree(first, second)
    shutil.copytree(first, other_seed)
    params_file(other_seed, seed=1)
    assert yaml.safe_load((first / "params.yaml").read_text())["pretrain"]["steps"] > 0
    digests = [pretrain_digest(d) for d in (first, second, other_seed)]
    assert digests[0] == digests[1], "same commit, params and machine: the weights must be bitwise identical"
    assert digests[2] != digests[0], "another seed must give other weights (else the digest proves nothing)"
