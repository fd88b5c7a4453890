"""Shared fixtures. Tests use the real parts: real MLflow stores, real DVC, real great-expectations."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import mlflow_server, pg_mlflow_server, postgres, prefect_server, s3_server, tracking_uri  # noqa: F401 - session servers for the tests that need them

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

for key, value in {
    "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1", "FLUXFORGE_PROGRESS": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
    # every Ray cluster a test starts or joins authenticates with this session's token (nothing written to ~/.ray)
    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
}.items():
    os.environ.setdefault(key, value)
os.environ.pop("MLFLOW_TRACKING_URI", None)
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    # `make test` runs a worker per core (and the tiny repo's build beside them): torch threads per process are the
    # cores shared out, never more, or the workers' threads wait for each other (issue #18's collapse)
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ.setdefault("FLUXFORGE_THREADS", share)  # the stages' torch threads (runtime.set_threads)
    os.environ.setdefault("OMP_NUM_THREADS", share)  # torch's default in the workers and every child process

TINY_REPO = pytest.StashKey["TinyRepoBuild"]()


@pytest.fixture(autouse=True)
def _mlflow_store_restored() -> Iterator[None]:
    """Each test starts on the store it was given: none. ``mlflow.set_tracking_uri`` (which every in-process stage run
    calls) also exports MLFLOW_TRACKING_URI, so a later test's subprocesses - a refresh's stages - wrote to a deleted
    test's store (CI, stop 25: the flow registered its model somewhere else)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = None  # the module global set_tracking_uri keeps beside the variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session", autouse=True)
def _warm_stages() -> Iterator[None]:
    """Every stage a test starts through stages/python forks from this worker's warm server, as under `make run`
    (fluxforge.warm); a test that gives its stages another load-time environment (HF_HOME, OpenMP) runs them cold.
    tests/test_warm.py holds a warm stage to a cold one."""
    from fluxforge.warm import warm_stages

    with warm_stages(ROOT):
        yield


@pytest.fixture
def tiny_raw() -> dict:
    """The tiny profile merged over params.yaml, as a plain dict (tests mutate copies of it)."""
    from fluxforge.config import read_params

    return read_params(ROOT / "params.yaml", profile="tiny")


@pytest.fixture
def tiny_params(tiny_raw):  # noqa: ANN001, ANN201
    from fluxforge.config import parse_params

    return parse_params(tiny_raw)


@pytest.fixture
def tiny_lm():  # noqa: ANN201 - a PreTrainedModel
    """A fresh tiny causal LM (tests/tiny.py: width 32, two layers, vocabulary 64, EOS 0, PAD 1)."""
    from tiny import tiny_model

    return tiny_model()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from an empty directory (stages write relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TinyRepoBuild:
    """The session's tiny repo, reproduced once by `dvc repro` (as `make run` does, through the warm stage runner) in a background process.

    It starts as soon as collection shows a test that needs it, so the five-minute build runs beside the unit
    tests instead of in front of the end-to-end ones; under pytest-xdist the first worker starts it in a folder
    every worker shares (a file lock decides who) and all of them wait on the same result file.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.build: subprocess.Popen | None = None  # in the process that started it

    @property
    def folder(self) -> Path:
        base = self.config._tmp_path_factory.getbasetemp()  # noqa: SLF001 - pytest's own, usable before any fixture
        return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-repo"

    def start(self) -> None:
        from filelock import FileLock

        self.repo, self.result, self.log = self.folder / "repo", self.folder / "result.json", self.folder / "build.log"
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / "start.lock")):
            if (self.folder / "pid").exists():
                return
            with self.log.open("w") as log:
                # through a warm stage runner (fluxforge.warm), as `make run` reproduces: its 23 stages start in a
                # fraction of a second each instead of importing torch and the rest anew
                self.build = subprocess.Popen([str(Path(sys.executable).with_name("fluxforge")), "warm", "--root", str(ROOT),
                                               sys.executable, str(Path(__file__).with_name("pipeline_repo.py")),
                                               str(self.repo), str(self.result)], stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)  # its own process group: stop() ends dvc and stages too
            (self.folder / "pid").write_text(str(self.build.pid))

    def wait(self) -> tuple[Path, dict[str, str]]:
        self.start()  # no-op unless collection missed it (a test asking for the fixture by name at run time)
        pid = int((self.folder / "pid").read_text())
        while not self.result.exists():
            gone = self.build.poll() is not None if self.build is not None else not _alive(pid)
            if gone and not self.result.exists():
                pytest.fail(f"the tiny repo's build (pid {pid}) died without a result; its log: {self.log}")
            time.sleep(2)
        outcome = json.loads(self.result.read_text())
        if "error" in outcome:
            pytest.fail(f"building the tiny repo failed (log: {self.log}):\n{outcome['error']}", pytrace=False)
        return self.repo, outcome["hashes"]

    def stop(self) -> None:
        """A build still running when the run ends (interrupted, or its tests deselected) is stopped. Only by the
        process that outlives every test: the xdist controller (whose temp folder holds the workers') or a plain
        pytest; a worker that runs out of tests early would otherwise kill a build the other one waits for."""
        if os.environ.get("PYTEST_XDIST_WORKER") or not (self.folder / "pid").exists():
            return
        pid = int((self.folder / "pid").read_text())
        if not (self.folder / "result.json").exists() and _alive(pid):
            os.killpg(pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TINY_REPO] = TinyRepoBuild(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("tiny_repo" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[TINY_REPO].start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[TINY_REPO].stop()


@pytest.fixture(scope="session")
def tiny_repo(request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    """A git+DVC repo of the pipeline on the tiny profile, reproduced once by `dvc repro` (as `make run` does).

    Returns (path, {cached output: md5}). Every test and every xdist worker shares it: read it, or change a
    copy (``pipeline_repo.copy_repo``).
    """
    return request.config.stash[TINY_REPO].wait()
