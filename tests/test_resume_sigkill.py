"""A training process killed with SIGKILL resumes to weights bitwise identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from resume_proof import assert_resumed

SCRIPT = r'''
import json, sys, numpy as np, torch
from pathlib import Path
from safetensors.torch import save_file
from fluxforge.config import ModelConfig, TrainConfig
from fluxforge.train.loop import train
from fluxforge.train.model import build_model
from fluxforge.train.sampler import MixtureSampler
from resume_proof import RecordingSampler

ckpt, out = Path(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
stream = np.tile(np.arange(5, 60, dtype=np.uint16), 300)
sampler = RecordingSampler(MixtureSampler({"a": stream}, {"a": 1.0}, seq_len=16, batch_size=4, seed=0))
cfg = TrainConfig(slices=["x"], steps=250, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=5, log_every=10)
model = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                max_position_embeddings=32), 64, 0, 1)
history = train(model, sampler, cfg, checkpoint_dir=ckpt, checkpoint_every=7)
save_file({k: v.contiguous() for k, v in model.state_dict().items() if "lm_head" not in k}, out)
Path(out).with_suffix(".json").write_text(json.dumps({"asked": sampler.asked, "history": history}))
'''


def _start(tmp: Path, name: str) -> subprocess.Popen:
    tests = str(Path(__file__).parent)
    env = {**os.environ, "FLUXFORGE_PROGRESS": "0", "FLUXFORGE_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp / f"ckpt-{name}"), str(tmp / f"{name}.safetensors")], env=env)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    ref = _start(tmp_path, "ref")
    victim = _start(tmp_path, "victim")
    ckpt = tmp_path / "ckpt-victim"
    deadline = time.time() + 120
    while not list(ckpt.glob("state-*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere past the first checkpoint, probably mid-way to the next
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "victim.safetensors").exists(), "the victim must die before finishing"
    at = max(int(re.findall(r"\d+", p.name)[0]) for p in ckpt.glob("state-*.pt"))  # the newest complete checkpoint
    resumed = _start(tmp_path, "victim")
    assert resumed.wait(timeout=300) == 0 and ref.wait(timeout=300) == 0
    a, b = load_file(tmp_path / "ref.safetensors"), load_file(tmp_path / "victim.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_run, resumed_run = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ref", "victim"))
    assert ref_run["asked"] == list(range(250)) and {r["resumed_from"] for r in ref_run["history"]} == {0}
    assert_resumed(resumed_run["history"], resumed_run["asked"], at=at, steps=250)
