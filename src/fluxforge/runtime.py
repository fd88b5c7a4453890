"""How a FluxForge process runs: quiet offline defaults, readable logs, CPU threads, and one stage's exit code.

Every DVC stage is a recipe in ``stages/<name>.py`` whose ``main`` is wrapped by :func:`stage`; dvc.yaml's
``cmd`` (``python -m stages.<name> [args]``) is the only registry of stages. The wrapper loads and validates
the whole params file before any work (a typo fails the first stage, naming the key), turns a FluxForge
error into its message and exit code 1 (bad params: 2), and keeps the traceback only for the unexpected.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

QUIET_ENV = {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# libgomp (torch's OpenMP on Linux x86) lets an idle pool thread spin 300,000 times before it sleeps. When another
# process holds one of the cores, the thread sharing that core spins away the time slices its peers wait for, and
# a step took 3.2x its quiet time (BENCHMARKS.md "Contended CPU"). 1000 spins cost 3 % when the machine is quiet
# and keep the contended step at 2.1x; a passive policy costs 23 % quiet. libgomp reads this when torch loads.
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "1000"}


def openmp_defaults() -> None:
    """Set :data:`OPENMP_DEFAULTS` unless the caller chose a wait policy or spin count of their own.

    Called when ``fluxforge`` is imported, before anything imports torch: the OpenMP runtime reads its settings
    once, when torch loads it, so a later call changes nothing for this process (its children still inherit it).
    """
    if "OMP_WAIT_POLICY" in os.environ:  # ACTIVE or PASSIVE chosen on purpose: libgomp derives its spin count
        return
    for key, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def quiet_env() -> None:
    """Offline, telemetry-free defaults for every tool a stage touches (the caller's settings win)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("FLUXFORGE_LOG", "INFO"), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "great_expectations", "urllib3", "httpx", "filelock", "dvc", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def is_main_rank() -> bool:
    """Rank 0 of a launched job (torchrun / deepspeed set ``RANK``), or the only process: it writes and logs."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may really use: its affinity mask and its cgroup CPU quota (in cores)."""

    affinity: int
    quota: float | None  # None: no quota

    @property
    def usable(self) -> int:
        """Whole cores: the fewer of the affinity mask and the quota (a 1.5-core quota gives 1), at least 1."""
        cores = self.affinity if self.quota is None else min(self.affinity, math.floor(self.quota))
        return max(1, cores)


def cgroup_quota(proc: Path = Path("/proc/self"), fs: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup and its ancestors, in cores (cgroup v2 ``cpu.max`` or v1 CFS).

    A container with ``--cpus 2`` on a 64-core node sees 64 CPUs in its affinity mask but may only use two;
    the tightest limit on the way to the root counts. None when no limit is set (or nothing is readable).
    """
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max = "<quota|max> <period>"
            base, read = fs, _v2_limit
        elif "cpu" in controllers.split(","):  # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us
            base, read = fs / controllers, _v1_limit
            if not base.exists():
                base = fs / "cpu"
        else:
            continue
        node = base / path.lstrip("/")
        while True:
            if (limit := read(node)) is not None:
                limits.append(limit)
            if node == base or base not in node.parents:
                break
            node = node.parent
    return min(limits) if limits else None


def _v2_limit(node: Path) -> float | None:
    try:
        quota, period = (node / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(node: Path) -> float | None:
    try:
        quota, period = int((node / "cpu.cfs_quota_us").read_text()), int((node / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_budget() -> CpuBudget:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuBudget(affinity, cgroup_quota())


def choose_threads(budget: CpuBudget, override: int | None = None) -> int:
    """Compute threads for torch: ``override`` (params ``runtime.threads`` / ``FLUXFORGE_THREADS``), else every
    usable core. Never more than the budget: threads beyond the cores a process may use only wait for each other."""
    if override:
        return override
    return budget.usable


def set_threads(override: int | None = None) -> int:
    """Set torch's intra-op threads for this process (see :func:`choose_threads`); returns the number."""
    import torch

    env = int(os.environ.get("FLUXFORGE_THREADS", "0") or 0)
    n = choose_threads(cpu_budget(), override or env or None)
    torch.set_num_threads(n)
    return n


def deterministic() -> bool:
    """Ask torch for its deterministic kernels (``FLUXFORGE_DETERMINISTIC=0`` turns this off); returns whether it did.

    Same commit, params and machine give bitwise identical weights (tests/test_determinism.py). On CPU torch's
    training kernels are deterministic already and this costs nothing measurable; on CUDA it pins cuBLAS to a fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS starts, hence set here, before any training) and
    turns off cuDNN autotuning, which can cost speed. ``warn_only``: an op without a deterministic kernel warns
    (naming the op) rather than stopping a run. Across CPU types weights still differ (floating point).
    """
    if os.environ.get("FLUXFORGE_DETERMINISTIC", "1") == "0":
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return True


def run_stage(name: str, fn: Callable[..., None], *args: str, params_path: str | None = None) -> int:
    """Run stage ``name`` (``fn(params, *args)``); return a process exit code (0 ok, 2 bad params, 1 failure).

    The params file is ``params_path``, else ``$FLUXFORGE_PARAMS`` (``fluxforge stage --params``), else params.yaml.
    """
    params_path = params_path or os.environ.get("FLUXFORGE_PARAMS", "params.yaml")
    quiet_env()
    setup_logging()
    log = logging.getLogger(f"fluxforge.stage.{name}")
    from fluxforge.config import ParamsError, load_params
    from fluxforge.errors import FluxForgeError

    try:
        params = load_params(params_path)
    except ParamsError as err:
        print(f"fluxforge: stage '{name}' not started:\n{err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        fn(params, *args)
    except FluxForgeError as err:
        print(f"fluxforge: stage '{name}' failed:\n{err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - last resort: keep the traceback, but say what failed first
        traceback.print_exc()
        print(f"\nfluxforge: stage '{name}' failed with an unexpected {type(err).__name__}: {err}\n"
              f"(traceback above; please report it with the stage name and params.yaml)", file=sys.stderr)
        return 1
    log.info("stage '%s' done in %.1f s", name + (f"@{args[0]}" if args else ""), time.perf_counter() - t0)
    return 0


def stage(fn: Callable[..., None]) -> Callable[[], NoReturn]:
    """Make ``fn(params, *argv)`` the ``main()`` of a stage script: ``python -m stages.<name> [args]``.

    The stage's name is its module's name, so dvc.yaml's ``cmd`` is the only place it is written.
    """
    module = fn.__module__
    if module == "__main__":  # `python -m stages.x`: the module runs as __main__, its spec keeps the name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else os.path.splitext(os.path.basename(sys.argv[0]))[0]
    name = module.rsplit(".", 1)[-1]

    @functools.wraps(fn)
    def main() -> NoReturn:
        sys.exit(run_stage(name, fn, *sys.argv[1:]))

    main.run = fn  # the recipe itself, for in-process callers (tests)
    return main
