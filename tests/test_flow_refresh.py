"""The Prefect refresh flow runs the same DAG as `dvc repro`, with the same results."""

from __future__ import annotations

import os

import pytest
import yaml

from pipeline_repo import cached_out_hashes, make_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect_home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_runs_every_stage_in_order_and_matches_plain_repro(prefect_api, tmp_path, tiny_repo):
    from flows.refresh import dag_stages, refresh

    flow_repo = make_repo(tmp_path / "flow")
    stages = dag_stages(flow_repo)
    assert stages[0] == "world" and stages[-1] == "report"
    assert stages.index("continual@slice2022") < stages.index("continual@cyber") < stages.index("distill")

    result = refresh(str(flow_repo))
    assert list(result) == stages and set(result.values()) == {"ran"}
    flow_hashes = cached_out_hashes(yaml.safe_load((flow_repo / "dvc.lock").read_text()))
    _, plain_hashes = tiny_repo  # the same pipeline and params, reproduced by plain `dvc repro`
    assert flow_hashes == plain_hashes
    assert {"data/world", "data/tokens", "models/pretrain", "models/continual/cyber", "models/student"} <= set(flow_hashes)

    again = refresh(str(flow_repo))
    assert set(again.values()) == {"up to date"}


def test_a_failing_stage_stops_the_flow_with_its_message(prefect_api, tmp_path):
    from flows.refresh import refresh

    repo = make_repo(tmp_path / "bad")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["world"]["years"] = [2022, 2021]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(Exception, match="years must be strictly increasing"):
        refresh(str(repo))
