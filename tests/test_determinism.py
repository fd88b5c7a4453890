"""Determinism where it is possible (issue 21 item 4): the same stage, params and machine give bitwise identical weights.

The tiny profile's `pretrain` stage (``python -m stages.pretrain``, the DAG's own command) runs on the same packed
tokens in a fresh process and in a process forked from the warm stage runner (fluxforge.warm, how `make run` starts
stages): the safetensors digests must be equal, and a run with another seed must differ (so equal digests are not a
digest that ignores the weights). Across CPU types weights do differ:
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
from fluxforge.warm import warm_stages

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


def stage_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "FLUXFORGE_THREADS": "1",
           "FLUXFORGE_PROGRESS": "0"}
    for name in ("MLFLOW_TRACKING_URI", "FLUXFORGE_WARM"):
        env.pop(name, None)
    return env


def pretrain_digest(root: Path, warm: str | None = None) -> str:
    """Run the pretrain stage in ``root``, in a fresh process or (``warm``: a server's socket) forked from a warm
    stage runner; the sha256 of the weights it wrote."""
    command = [sys.executable, "-m", "stages.pretrain"]
    env = stage_env()
    if warm:  # what stages/python runs when FLUXFORGE_WARM is set
        command = [sys.executable, "-I", "-S", str(ROOT / "src" / "fluxforge" / "warm.py"), *command[1:]]
        env.update(FLUXFORGE_WARM=warm, FLUXFORGE_WARM_VERBOSE="1")
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not warm or "fluxforge.warm: warm start" in proc.stderr, proc.stderr[-3000:]
    return hashlib.sha256((root / "models" / "pretrain" / "model.safetensors").read_bytes()).hexdigest()


def test_pretrain_gives_bitwise_identical_weights_in_a_fresh_process_and_one_forked_from_the_warm_runner(tmp_path):
    first = tmp_path / "first"
    packed_tokens(first)
    params_file(first, seed=0)
    second, other_seed = tmp_path / "second", tmp_path / "other_seed"
    shutil.copytree(first, second)
    shutil.copytree(first, other_seed)
    params_file(other_seed, seed=1)
    assert yaml.safe_load((first / "params.yaml").read_text())["pretrain"]["steps"] > 0
    # break-checked: a server whose imports leave torch's state changed (its default dtype) fails the first assert
    with warm_stages(ROOT, env=stage_env(), export=False) as socket:
        digests = [pretrain_digest(first), pretrain_digest(second, wait_for(socket)),
                   pretrain_digest(other_seed, socket)]
    assert digests[0] == digests[1], "same commit, params and machine, started cold or forked warm: bitwise the same"
    assert digests[2] != digests[0], "another seed must give other weights (else the digest proves nothing)"


def wait_for(socket: str | None, timeout: float = 300) -> str:
    """The warm server's socket once it listens (its imports done)."""
    import time

    assert socket is not None, "no warm server on this platform"
    end = time.monotonic() + timeout
    while not os.path.exists(socket):
        assert time.monotonic() < end, "the warm server did not start listening"
        time.sleep(0.2)
    return socket
