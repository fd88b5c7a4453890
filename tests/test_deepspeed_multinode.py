"""DeepSpeed on two "nodes" of loopback: ``infra/deepspeed/launch.sh`` with a two-host hostfile, one launcher process per
node (``deepspeed --no_ssh --node_rank``, each in its own checkout), gloo between them, the tiny profile's ``pretrain``.

What it proves: the ranks of the two launchers form one world of two; node 0's rank 0 writes one consolidated HF
directory and `dvc commit` records it; node 1 writes no model; the result equals, bit for bit, the same world of two
started by one launcher on one node, and follows the one-process run within bf16 rounding. Not bit for bit: two ranks
add their half-batch gradients in another order than one process adding the whole batch (a one-process ZeRO run
differed from this by 5e-3 at most per weight, in bf16; tests/test_deepspeed.py ties one-process ZeRO to the plain loop).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fluxforge.track.servers import free_port
from pipeline_repo import BIN, ROOT, copy_repo, repo_env

pytestmark = pytest.mark.slow  # two DeepSpeed launches of the tiny pretrain (~30 s each on 2 cores)

MODEL = Path("models") / "pretrain" / "model.safetensors"


def _checkout(tiny_repo: tuple[Path, dict], dest: Path) -> Path:
    """A node's own checkout: the reproduced tiny repo plus the launcher and its ZeRO configs, without the model."""
    repo = copy_repo(tiny_repo[0], dest)
    shutil.copytree(ROOT / "infra" / "deepspeed", repo / "infra" / "deepspeed")
    (repo / MODEL).unlink()
    return repo


def _launch(repo: Path, hostfile: Path, node_rank: int, port: int) -> subprocess.Popen:
    env = {**repo_env(), "HOSTFILE": str(hostfile), "NODE_RANK": str(node_rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "ZERO": "2", "DS_ACCELERATOR": "cpu", "FLUXFORGE_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "FLUXFORGE_DEEPSPEED_CONFIG", "NUM_GPUS", "LAUNCHER", "NNODES"):
        env.pop(key, None)
    return subprocess.Popen(["bash", "infra/deepspeed/launch.sh", "pretrain"], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(*procs: subprocess.Popen) -> list[str]:
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"launch.sh failed ({p.returncode}):\n{log[-4000:]}"
    return logs


def _hostfile(path: Path, slots: list[int]) -> Path:
    path.write_text("".join(f"node-{chr(97 + i)} slots={n}\n" for i, n in enumerate(slots)))
    return path


def _weights(repo: Path) -> dict[str, torch.Tensor]:
    return load_file(repo / MODEL)


def _curve(repo: Path) -> list[dict]:
    with (repo / "plots" / "train" / "pretrain.csv").open() as f:
        return [{"step": int(r["step"]), "loss": float(r["loss"])} for r in csv.DictReader(f)]


def _lock_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["pretrain"]["outs"] if o["path"] == "models/pretrain")


def test_launch_sh_on_two_loopback_nodes_equals_one_node_and_follows_one_process(tiny_repo, tmp_path):
    plain_md5 = _lock_md5(tiny_repo[0])
    # two nodes of one slot each: two launchers, two checkouts, one world
    node0, node1 = _checkout(tiny_repo, tmp_path / "node0"), _checkout(tiny_repo, tmp_path / "node1")
    hosts = _hostfile(tmp_path / "hostfile", [1, 1])
    port = free_port()
    logs = _finish(_launch(node0, hosts, 0, port), _launch(node1, hosts, 1, port))
    assert (node0 / MODEL).exists(), logs[0][-3000:]
    assert not (node1 / MODEL).exists(), "rank 1 (node 1) wrote the model: only the global rank 0 writes outputs"
    info = json.loads((node0 / "models" / "pretrain" / "training_state" / "info.json").read_text())
    assert info["steps"] == yaml.safe_load((node0 / "params.yaml").read_text())["pretrain"]["steps"]

    # node 0 recorded what it wrote: dvc.lock names the new model and the stage is up to date
    status = subprocess.run([str(BIN / "dvc"), "status", "pretrain"], cwd=node0, env=repo_env(), capture_output=True,
                            text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert _lock_md5(node0) != plain_md5, "dvc.lock still names the plain run's model"

    # the same world of two, started by one launcher on one node: the same weights, bit for bit
    one_node = _checkout(tiny_repo, tmp_path / "one-node")
    _finish(_launch(one_node, _hostfile(tmp_path / "hostfile-1x2", [2]), 0, free_port()))
    two, one = _weights(node0), _weights(one_node)
    assert two.keys() == one.keys()
    for name in two:
        assert torch.equal(two[name], one[name]), name
    assert _lock_md5(node0) == _lock_md5(one_node)

    # and it follows the plain one-process run of the same stage (the tiny repo's) within bf16 rounding: ZeRO's
    # bf16 config against fp32, two half-batches against one batch (tests/test_deepspeed.py: one-process ZeRO = plain)
    two_ranks, plain = _curve(node0), _curve(tiny_repo[0])
    assert [r["step"] for r in two_ranks] == [r["step"] for r in plain]
    assert plain[-1]["loss"] < plain[0]["loss"] - 0.05, "the run must learn, or equal curves prove nothing"
    assert max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(two_ranks, plain)) < 2e-3
