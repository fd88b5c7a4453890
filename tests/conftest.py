"""Shared fixtures. Tests use the real parts: real MLflow stores, real DVC, real great-expectations."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):  # noqa: ANN201
    """A git+DVC repo of the pipeline on the tiny profile, reproduced once by plain `dvc repro`.

    Returns (path, {cached output: md5} right after that first run). Tests may change the repo
    afterwards; the hashes stay those of the first, untouched run.
    """
    from pipeline_repo import cached_out_hashes, make_repo, run

    root = make_repo(tmp_path_factory.mktemp("e2e") / "repo")
    first = run(["dvc", "repro"], root)
    (root / "first_run.log").write_text(first.stdout + first.stderr)
    return root, cached_out_hashes(yaml.safe_load((root / "dvc.lock").read_text()))
