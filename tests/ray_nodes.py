"""A real multi-process Ray cluster on loopback for tests: ``ray start --head`` plus ``ray start --address`` nodes.

Each node is a ``ray start --block`` process in its own process group, so stopping one stops its raylet,
object store and workers, and killing a node's processes is what a lost machine looks like to Ray.
Every process binds 127.0.0.1 and authenticates with the session's token (conftest sets RAY_AUTH_*).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fluxforge.orchestrate.ray_cluster import NODE_IP
from fluxforge.track.servers import free_port

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this interpreter


@dataclass
class Node:
    process: subprocess.Popen
    log: Path

    def group(self) -> list[psutil.Process]:
        """The node's own processes: its raylet and agents (its process group; a scan of every process)."""
        group = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.process.pid:
                    group.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return group

    def processes(self, group: list[psutil.Process] | None = None) -> list[psutil.Process]:
        """The node's processes: its raylet and agents (``group``, scanned when not given) and the workers its raylet
        forked (Ray gives each worker a process group of its own)."""
        group = self.group() if group is None else group
        found = {p.pid: p for p in group}
        for p in group:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def kill(self) -> None:
        """SIGKILL every process of the node at once: what the loss of its machine looks like to the cluster."""
        for p in self.processes():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass

    def task_workers(self, function: str, group: list[psutil.Process] | None = None) -> list[psutil.Process]:
        """Worker processes of this node running ``function`` now (Ray titles them ``ray::<function>``)."""
        out = []
        for p in self.processes(group):
            try:
                if p.cmdline()[:1] and p.cmdline()[0].startswith(f"ray::{function}"):
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        workers = [p for p in self.processes() if p.pid != self.process.pid]
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
        for p in workers:  # workers outlive a killed raylet for a moment; never leave one behind
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


@dataclass
class Cluster:
    address: str  # HOST:PORT of the head's GCS
    head: Node
    workers: list[Node] = field(default_factory=list)


def _start(args: list[str], log: Path, env: dict[str, str]) -> Node:
    with log.open("ab") as out:
        proc = subprocess.Popen([*RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", NODE_IP, *args],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Node(proc, log)


def _wait_for_nodes(address: str, count: int, nodes: list[Node], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    probe = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    while time.monotonic() < deadline:
        for node in nodes:
            if node.process.poll() is not None:
                raise RuntimeError(f"a Ray node exited with {node.process.returncode}:\n{node.log.read_text()[-3000:]}")
        try:  # ray.init waits for a GCS that is not there (a head that died starting) without end: bound it
            out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            continue  # the loop's next turn sees a dead node, or probes again
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes in {timeout:.0f} s:\n"
                       + "\n".join(n.log.read_text()[-2000:] for n in nodes))


@contextmanager
def ray_cluster(tmp: Path, workers: int = 1, cpus: int = 1, timeout: float = 180) -> Iterator[Cluster]:
    """A head and ``workers`` worker nodes of ``cpus`` CPUs each on loopback; everything stopped on exit."""
    port = free_port()
    address = f"{NODE_IP}:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # workers import fluxforge as this process does
    # the head's session files (sockets, logs) in a short folder of their own: a unix socket's path may not exceed
    # 107 bytes, and pytest's folders under xdist (/tmp/pytest-of-USER/pytest-N/popen-gwK/...) are longer
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    head = _start(["--head", "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard", "false",
                   "--temp-dir", str(temp)], tmp / "head.log", env)
    cluster = Cluster(address, head)
    try:
        for i in range(workers):
            cluster.workers.append(_start(["--address", address, "--num-cpus", str(cpus)], tmp / f"worker{i}.log", env))
        _wait_for_nodes(address, 1 + workers, [head, *cluster.workers], timeout)
        yield cluster
    finally:
        for node in [*cluster.workers, head]:
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
