"""A real MLflow tracking server process with its artifacts in a real (moto) S3 server process.

The model goes through the same path as ``registry.py``: our pyfunc "from code" with the HF
directory as the ``hf`` artifact, registered, then moved between aliases. Two versions with
different weights make "load by alias" mean something: each alias must give back its own weights.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch

from fluxforge.track.promotion import history, promote, rollback
from fluxforge.track.registry import PYFUNC
from servers import MlflowServer, S3Server, use_tracking_uri

PROMPT = "Zorvex Gateway is"


@dataclass(frozen=True)
class Registered:
    name: str
    experiment_id: str
    run_ids: list[str]
    hf_dirs: dict[str, Path]  # version -> the HF directory that was logged
    weights: dict[str, dict[str, torch.Tensor]]  # version -> its original state dict


def _tiny_hf(out: Path, seed: int) -> dict[str, torch.Tensor]:
    from fluxforge.config import ModelConfig
    from fluxforge.data.tokenize import train_tokenizer
    from fluxforge.train.model import build_model, save_model

    tok = train_tokenizer(["Zorvex Gateway is affected by SQL injection."] * 20, 300)
    cfg = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=32, init_seed=seed)
    model = build_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id)
    save_model(model, tok, out, {"parent": "pretrain", "seed": seed})
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def registered(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """v1 becomes challenger then champion (a promotion); v2 is the newer challenger only."""
    tag = uuid.uuid4().hex[:8]  # the server is shared by the session: our own names
    name, root = f"server-test-{tag}", tmp_path_factory.mktemp("server-models")
    with use_tracking_uri(mlflow_server.tracking_uri):
        client = mlflow.MlflowClient()
        exp = client.create_experiment(f"server-test-{tag}")
        run_ids, hf_dirs, weights = [], {}, {}
        for seed in (0, 1):
            hf = root / f"seed{seed}" / "hf"  # MLflow names the artifact after the directory, as in registry.py
            state = _tiny_hf(hf, seed)
            with mlflow.start_run(experiment_id=exp) as run:
                mlflow.log_params({"seed": seed, "hidden_size": 16})
                mlflow.set_tags({"fluxforge.stage": "register", "fluxforge.parent": "pretrain"})
                info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC), artifacts={"hf": str(hf)},
                                               registered_model_name=name,
                                               pip_requirements=["torch", "transformers", "safetensors"])
            version = str(info.registered_model_version)
            client.set_registered_model_alias(name, "challenger", version)
            if seed == 0:
                promote(name, version, reason="first champion")  # FluxForge's promotion: lock, alias, history
            run_ids.append(run.info.run_id)
            hf_dirs[version], weights[version] = hf, state
        yield Registered(name, exp, run_ids, hf_dirs, weights)


@pytest.mark.slow  # the first test to ask starts both servers (about 12 s)
def test_aliases_load_through_the_server_as_pyfunc_and_as_hf_dir(registered, mlflow_server, tmp_path, monkeypatch):
    import fluxforge.track.resolve as resolve
    from fluxforge.train.model import load_model

    monkeypatch.setattr(resolve, "CACHE", tmp_path / "cache")
    name = registered.name
    with use_tracking_uri(mlflow_server.tracking_uri):
        client = mlflow.MlflowClient()
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"

        out = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict([PROMPT, PROMPT + " not"])
        assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)

        for alias, version, other in (("champion", "1", "2"), ("challenger", "2", "1")):
            local = resolve.local_model_path(f"models:/{name}@{alias}")
            assert local.is_relative_to(tmp_path / "cache") and (local / "model.safetensors").exists()
            model, tok = load_model(local)
            state = model.state_dict()
            assert state.keys() == registered.weights[version].keys()
            assert all(torch.equal(state[k], registered.weights[version][k]) for k in state), f"{alias}: weights changed"
            assert not all(torch.equal(state[k], registered.weights[other][k]) for k in state)
            assert tok.eos_token_id == model.config.eos_token_id


@pytest.mark.slow
def test_artifacts_are_in_the_s3_bucket_and_metadata_in_the_backend_db(registered, mlflow_server, s3_server: S3Server):
    with use_tracking_uri(mlflow_server.tracking_uri):
        client = mlflow.MlflowClient()
        location = client.get_experiment(registered.experiment_id).artifact_location
        model_ids = {v: client.get_model_version(registered.name, v).source.removeprefix("models:/")
                     for v in registered.hf_dirs}
    assert location.startswith("mlflow-artifacts:"), "artifacts should be proxied by the server, not written by clients"

    prefix = mlflow_server.artifacts_uri.removeprefix(f"s3://{s3_server.bucket}/")
    keys = s3_server.keys(f"{prefix}/{registered.experiment_id}/")
    s3 = s3_server.client()
    for version, model_id in model_ids.items():
        base = f"{prefix}/{registered.experiment_id}/models/{model_id}/artifacts"
        assert f"{base}/MLmodel" in keys, f"v{version}: no MLmodel in the bucket under {base}"
        weights = f"{base}/artifacts/hf/model.safetensors"
        assert weights in keys, f"v{version}: model.safetensors not in the bucket; found {sorted(keys)[:20]}"
        body = s3.get_object(Bucket=s3_server.bucket, Key=weights)["Body"].read()
        assert body == (registered.hf_dirs[version] / "model.safetensors").read_bytes()

    db = mlflow_server.backend_db
    assert db.is_file() and db.stat().st_size > 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        versions = con.execute("SELECT version FROM model_versions WHERE name = ? ORDER BY version", (registered.name,)).fetchall()
        aliases = dict(con.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (registered.name,)).fetchall())
    assert [v for (v,) in versions] == [1, 2]
    assert aliases == {"champion": 1, "challenger": 2}


@pytest.mark.slow
def test_no_s3_secret_in_runs_models_logs_or_stores(registered, mlflow_server, s3_server: S3Server):
    import os

    secret = s3_server.env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in os.environ.values(), "clients must not need S3 credentials: the server proxies artifacts"
    with use_tracking_uri(mlflow_server.tracking_uri):
        client = mlflow.MlflowClient()
        seen = []
        for run_id in registered.run_ids:
            run = client.get_run(run_id)
            seen += [run.data.params, run.data.tags]
            for out in run.outputs.model_outputs:
                logged = mlflow.get_logged_model(out.model_id)
                seen += [logged.params, logged.tags]
        for version in registered.hf_dirs:
            seen.append(client.get_model_version(registered.name, version).tags)
        seen.append(client.get_registered_model(registered.name).tags)
    assert any(p.get("seed") == "0" for p in seen), "the run params were not read back"
    assert secret not in json.dumps(seen)

    assert secret.encode() not in mlflow_server.backend_db.read_bytes()
    assert secret not in mlflow_server.log.read_text(errors="replace")
    s3 = s3_server.client()
    for key in s3_server.keys():
        if not key.endswith(".safetensors"):
            assert secret.encode() not in s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read(), key


def _gone(pid: int, within: float) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init to reap it counts): SIGKILL lands asynchronously."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


def test_a_server_that_dies_or_hangs_is_reported_with_its_masked_log_and_stopped(tmp_path):
    import sys

    from fluxforge.track.servers import ServerStartError, spawn

    env = {"PATH": "/usr/bin:/bin", "AWS_SECRET_ACCESS_KEY": "hunter2-secret"}
    dies = [sys.executable, "-c", "import os; print('bad backend postgresql://u:pw@db/x', os.environ['AWS_SECRET_ACCESS_KEY']); "
            "raise SystemExit(3)"]
    with pytest.raises(ServerStartError, match="exited with code 3") as err:
        spawn("dying server", dies, "http://127.0.0.1:9", "/health", env=env, log=tmp_path / "dies.log", timeout=30)
    assert "bad backend postgresql://u:***@db/x ***" in str(err.value)
    assert "hunter2" not in str(err.value) and ":pw@" not in str(err.value)

    hangs = [sys.executable, "-c", "import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(60)']); print('worker', w.pid, flush=True); time.sleep(60)"]
    with pytest.raises(ServerStartError, match=r"did not answer .* within 3 s(.|\n)*worker \d+"):
        spawn("hanging server", hangs, "http://127.0.0.1:9", "/health", env=env, log=tmp_path / "hangs.log", timeout=3)
    worker = int((tmp_path / "hangs.log").read_text().split("worker ")[1].split()[0])
    assert _gone(worker, within=5.0), "the server's own child was left running"

def test_use_tracking_uri_restores_the_previous_uri(monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.is_tracking_uri_set()
    previous = mlflow.get_tracking_uri()
    with use_tracking_uri("http://127.0.0.1:9"):
        assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
    assert mlflow.is_tracking_uri_set() == before and mlflow.get_tracking_uri() == previous
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_cli_help_says_how_to_run_and_point_clients(capsys):
    from fluxforge.track.servers import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "MLFLOW_TRACKING_URI" in text and "--artifacts s3://" in text


@pytest.mark.slow
def test_promote_and_rollback_through_the_server(registered, mlflow_server):
    with use_tracking_uri(mlflow_server.tracking_uri):
        client = mlflow.MlflowClient()
        promote(registered.name, "2", reason="better")
        assert str(client.get_model_version_by_alias(registered.name, "champion").version) == "2"
        rollback(registered.name)
        assert str(client.get_model_version_by_alias(registered.name, "champion").version) == "1"
        assert [(e["version"], e["action"]) for e in history(registered.name)] == [("1", "promote"), ("2", "promote"), ("1", "rollback")]


@pytest.mark.slow
def test_credentials_in_a_tracking_uri_are_masked_everywhere(mlflow_server, monkeypatch, capsys):
    """A password inside the tracking URI reaches neither MLflow's own "View run" line nor FluxForge's messages."""
    from urllib.parse import urlsplit

    from fluxforge.track.resolve import ModelURIError, version_of
    from fluxforge.track.runs import use_store

    password = "uri-pw-4Kq9"
    with_creds = mlflow_server.tracking_uri.replace("http://", f"http://ci:{password}@")
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    with use_tracking_uri(mlflow_server.tracking_uri):
        bare = use_store(with_creds)  # what every stage and registry command does with the URI it is given
        assert bare == mlflow_server.tracking_uri == mlflow.get_tracking_uri()
        assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ci", password)
        mlflow.set_experiment(f"creds-{uuid.uuid4().hex[:8]}")
        with mlflow.start_run():
            mlflow.log_param("x", 1)
        printed = capsys.readouterr().out
        assert "View run" in printed and password not in printed  # MLflow printed its URL, without the password ...
        mlflow.set_tracking_uri(with_creds)  # ... and a URI someone set by hand is masked in our messages
        with pytest.raises(ModelURIError) as err:
            version_of("models:/no-such-model@champion")
    assert password not in str(err.value) and f"ci:***@{urlsplit(mlflow_server.tracking_uri).netloc}" in str(err.value)
