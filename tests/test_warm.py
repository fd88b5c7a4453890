"""The warm stage runner (fluxforge.warm): a stage forked from a server that imported the libraries once behaves as
the same stage started cold: the same weights, the code on disk, its own environment, exit code and signals, and a
client killed outright takes its stage with it. What the server cannot take runs cold. That a warm pretrain writes
the weights a cold one does, bit for bit: tests/test_determinism.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxforge.warm import load_time_difference, warm_stages
from test_determinism import wait_for

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "src" / "fluxforge" / "warm.py"

TOY = '''import os, sys, time
VERSION = 1


def main():
    print(f"toy v{VERSION} ppid={os.getppid()} cwd={os.getcwd()} x={os.environ.get('TOY_X')} args={sys.argv[1:]}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "sleep":
        open("pid", "w").write(str(os.getpid()))
        time.sleep(60)
    if what == "thread":  # a worker that is not a daemon: the interpreter waits for it before it exits
        import threading
        threading.Thread(target=lambda: (time.sleep(0.5), open("late", "w").write("written"))).start()
    if what == "boom":
        raise RuntimeError("the toy stage broke")
    sys.exit(int(what) if what.isdigit() else 0)


if __name__ == "__main__":
    main()
'''


RNG = '''import numpy
import torch

if __name__ == "__main__":
    print(numpy.random.randint(1 << 62), float(torch.rand(1)))
'''


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory: pytest.TempPathFactory):
    """A server whose preload imported a toy ``stages`` package (version 1 of ``stages.toy``)."""
    root = tmp_path_factory.mktemp("toy")
    (root / "stages").mkdir()
    (root / "stages" / "__init__.py").write_text("")
    (root / "stages" / "toy.py").write_text(TOY)
    (root / "stages" / "rng.py").write_text(RNG)
    env = {k: v for k, v in os.environ.items() if k != "FLUXFORGE_WARM"}
    with warm_stages(root, env=env, export=False) as path:
        wait_for(path)
        yield root, path, env


def _client(root: Path, path: str, env: dict[str, str], *args: str, module: str = "stages.toy", **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-I", "-S", str(CLIENT), "-m", module, *args], cwd=root,
                            env={**env, "FLUXFORGE_WARM": path, "FLUXFORGE_WARM_VERBOSE": "1", **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _server_pid(path: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"fluxforge.warm serve {path}"], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_forked_stages_draw_their_own_random_numbers_as_new_processes_do(toy_server):
    """numpy's and torch's global generators are seeded anew in each stage (a new process seeds both from the OS),
    not copied from the server: two stages forked from it draw different numbers."""
    root, path, env = toy_server
    draws = []
    for _ in range(2):
        proc = _client(root, path, env, module="stages.rng")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "warm start" in err, err
        draws.append(out.split())
    numpy_draws, torch_draws = zip(*draws, strict=True)
    assert len(set(numpy_draws)) == 2 and len(set(torch_draws)) == 2, draws


def test_a_stage_runs_forked_from_the_server_with_its_own_directory_environment_arguments_and_exit_code(toy_server, tmp_path):
    root, path, env = toy_server
    work = tmp_path / "elsewhere"
    shutil.copytree(root / "stages", work / "stages")
    proc = _client(work, path, env, "3", TOY_X="seen")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert f"ppid={_server_pid(path)}" in out, out  # forked by the server, not started cold
    assert f"cwd={work} x=seen args=['3']" in out
    assert "to stderr" in err and "fluxforge.warm: warm start" in err

    proc = _client(work, path, env, "boom")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "RuntimeError: the toy stage broke" in err and "Traceback" in err


def test_a_stage_ends_as_the_interpreter_would_waiting_for_its_threads(toy_server, tmp_path):
    root, path, env = toy_server
    work = tmp_path / "threads"
    shutil.copytree(root / "stages", work / "stages")
    proc = _client(work, path, env, "thread")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"ppid={_server_pid(path)}" in out, err
    assert (work / "late").read_text() == "written", "the stage exited before its thread finished"


def test_the_stage_runs_the_code_on_disk_not_the_code_the_server_imported(toy_server, tmp_path):
    root, path, env = toy_server
    work = tmp_path / "edited"
    shutil.copytree(root / "stages", work / "stages")
    (work / "stages" / "toy.py").write_text(TOY.replace("VERSION = 1", "VERSION = 2"))
    proc = _client(work, path, env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "toy v2" in out and f"ppid={_server_pid(path)}" in out, out


def test_a_client_killed_outright_takes_its_stage_with_it_and_a_signal_reaches_the_stage(toy_server, tmp_path):
    root, path, env = toy_server
    for sig, code in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, -signal.SIGTERM)):
        work = tmp_path / sig.name
        shutil.copytree(root / "stages", work / "stages")
        proc = _client(work, path, env, "sleep")
        end = time.monotonic() + 120
        while not (work / "pid").exists():
            assert time.monotonic() < end and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        stage = int((work / "pid").read_text())
        proc.send_signal(sig)
        proc.wait(timeout=60)  # not communicate(): a stage left running would hold the client's pipes open
        assert proc.returncode == code
        end = time.monotonic() + 10
        while _alive(stage):
            assert time.monotonic() < end, f"the stage outlived its client ({sig.name})"
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_a_stage_whose_libraries_would_load_differently_runs_cold(toy_server):
    root, path, env = toy_server
    proc = _client(root, path, env, GOMP_SPINCOUNT="5")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "cold start: GOMP_SPINCOUNT differs from the warm server's" in err
    assert f"ppid={_server_pid(path)}" not in out and "toy v1" in out


def test_only_variables_the_libraries_read_as_they_load_count():
    base = {"PATH": "/bin", "HOME": "/root"}
    assert load_time_difference(base, {**base, "MLFLOW_TRACKING_URI": "sqlite:///x.db", "FLUXFORGE_THREADS": "1",
                                       "PYTHONUNBUFFERED": "1"}) is None
    assert load_time_difference(base, {**base, "GOMP_SPINCOUNT": "1000"}) is None  # FluxForge's own default
    assert load_time_difference(base, {**base, "OMP_WAIT_POLICY": "PASSIVE"}) == "GOMP_SPINCOUNT"
    assert load_time_difference(base, {**base, "PYTHONPATH": "/elsewhere"}) == "PYTHONPATH"
    assert load_time_difference(base, {**base, "HF_HOME": "/cache"}) == "HF_HOME"


def test_fluxforge_warm_runs_the_command_with_a_server_and_stops_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLUXFORGE_WARM"}
    proc = subprocess.run([str(Path(sys.executable).parent / "fluxforge"), "warm", "--root", str(ROOT), "--",
                           "sh", "-c", 'echo "$FLUXFORGE_WARM"; exit 4'], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 4, proc.stderr
    path = proc.stdout.strip()
    assert path.endswith("socket") and not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    left = subprocess.run(["pgrep", "-f", f"fluxforge.warm serve {path}"], capture_output=True, text=True).stdout
    assert left == "", "the server outlived its command"
