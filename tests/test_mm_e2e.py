"""The image branch inside the session's tiny pipeline (`dvc repro` once, tests/conftest.py `tiny_repo`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_repo import copy_repo, ran
from pipeline_repo import run as _run

pytestmark = pytest.mark.slow
IMAGE_STAGES = {"mm_world", "mm_curate", "mae@mae", "mae@cmae", "clip_pretrain", "mm_stream", "mm_eval", "mm_register"}


@pytest.fixture(scope="module")
def repo(tiny_repo) -> Path:
    return tiny_repo[0]


def _metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def test_the_image_stages_run_in_the_dag_and_balance_their_books(repo):
    assert IMAGE_STAGES <= set(re.findall(r"Running stage '([^']+)'", (repo / "first_run.log").read_text()))
    world, curate = _metrics(repo, "mm_world"), _metrics(repo, "mm_curate")
    for step in ("contract", "dedup"):
        for source, books in curate[step]["by_source"].items():
            assert books["ingested"] == books["kept"] + sum(books["rejected"].values()), (step, source)
    assert curate["funnel"]["ingested"] == world["images"] + world["masks"] + world["digits"]
    assert curate["contract"]["by_source"]["shapes"]["rejected"]["undecodable"] >= 1
    assert all(v == 1.0 for k, v in curate["planted"].items() if k.startswith("recall."))  # every planted defect caught


def test_each_training_stage_logged_its_run_and_the_clip_model_is_registered_through_the_gate(repo):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fluxforge").experiment_id])
    assert IMAGE_STAGES <= {r.data.tags["fluxforge.stage"] for r in runs}
    mae = next(r for r in runs if r.data.tags["fluxforge.stage"] == "mae@mae")
    assert {"heldout_loss_before", "heldout_loss_after"} <= set(mae.data.metrics)
    champ = client.get_model_version_by_alias("fluxforge-clip", "champion")
    assert champ.tags["gate"] == "passed" and len(champ.tags["git_commit"]) == 40
    chain = json.loads(champ.tags["fluxforge.lineage"])  # the stream's CLIP, then the pretrained one it started from
    assert [c["stage"] for c in chain[:2]] == ["mm_stream", "clip_pretrain"]
    assert float(champ.tags["eval.zero_shot"]) == _metrics(repo, "mm_eval")["stream"]["zero_shot.heldout"]["accuracy"]
    assert _metrics(repo, "mm_register")["version"] == str(champ.version)
    # the compute along the chain counts the stream's training and the CLIP's it started from
    stream = json.loads((repo / "metrics" / "train" / "mm_stream.json").read_text())
    clip = json.loads((repo / "metrics" / "train" / "clip.json").read_text())
    assert stream["train_seconds"] > 0 and stream["method"] == _metrics(repo, "mm_stream")["deploy"]
    assert float(champ.tags["fluxforge.train_seconds"]) == pytest.approx(stream["train_seconds"] + clip["train_seconds"], abs=0.06)


def test_the_report_shows_probes_reconstructions_and_the_confusion_matrix(repo):
    ev = _metrics(repo, "mm_eval")
    assert set(ev["probes"]) == {"raw_pixels", "random_init", "mae", "cmae"}
    assert all(p["low"] <= p["accuracy"] <= p["high"] for p in ev["probes"].values())
    html = (repo / "reports" / "report.html").read_text()
    section = html[html.index("7. Image branch"):]
    runs = _metrics(repo, "mm_stream")["runs"]
    # two reconstruction grids, one confusion matrix, one score matrix per stream run
    assert "fluxforge-clip" in section and section.count("<img") == 3 + len(runs)
    assert "CLIP continual stream (FoMo-in-Flux)" in section and all(f"<td>{run}</td>" in section for run in runs)
    assert "Raw pixels probe higher" in section or ev["probes"]["raw_pixels"]["accuracy"] <= ev["probes"]["mae"]["accuracy"]
    out = _run(["fluxforge", "summary"], repo).stdout
    assert re.search(r"images +: digits probe raw_pixels \d\.\d{3}.*CLIP zero-shot", out) and "fluxforge-clip v" in out
    assert re.search(r"image stream : 3 tasks, A_KA/A_ZS finetune \d\.\d{3}/\d\.\d{3}; no_replay .*deployed finetune", out)
    # the cyber gain and each study against the multi-seed reference (the committed benchmarks/evidence.json; the tiny
    # profile's numbers land anywhere against params.yaml's range, which is why its gate has no reference rule)
    rng = r"(inside|OUTSIDE) the reference interval \[[+-]\d+\.\d{3}, [+-]\d+\.\d{3}\] \(one run's 95 % range over 3 seeds"
    assert re.search(r"gain [+-]\d\.\d{3} " + rng + ", profile none", out), out
    assert re.search(r"meco " + rng, out), out
    # and the image branch's (benchmarks/image_branch.py and mm_stream.py --evidence)
    assert re.search(r"zero-shot \d+\.\dx " + rng + ", profile none", out), out
    assert re.search(r"replay - no replay [+-]\d\.\d{3} " + rng, out), out


def test_the_stream_trains_every_method_on_fomo_tasks_and_saves_the_deployed_clip(repo):
    s = _metrics(repo, "mm_stream")
    assert set(s["runs"]) == {"finetune", "no_replay", "lora", "ema_merge"} and s["deploy"] == "finetune"
    items = [i for t in s["tasks"].values() for i in t]
    assert len(s["tasks"]) == 3 and len(items) == len(set(items)) and all("+++" in i for i in items)
    assert s["columns"] == ["task1", "task2", "task3", "base", "digits"]
    for name, r in s["runs"].items():
        m = np.array(r["matrix"])
        assert m.shape == (4, 5) and np.isfinite(m).all() and ((m >= 0) & (m <= 1)).all(), name
    budget = s["budget"]["methods"]
    assert budget["lora"]["memory_multiplier"] < 1 and min(budget["lora"]["steps"].values()) > min(budget["finetune"]["steps"].values())
    info = json.loads((repo / "models" / "mm_stream" / "training_state" / "info.json").read_text())
    assert info["parent"] == "clip" and info["method"]["method"] == "finetune" and info["a_ka"] == s["runs"]["finetune"]["metrics"]["a_ka"]
    assert (repo / "plots" / "mm_stream" / "matrix.csv").read_text().count("\n") == 1 + 4 * 4 * 5


def test_changing_stream_params_reruns_only_the_stream_and_what_reads_it(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo[0], tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mm"]["stream"]["ordering"] = "reverse"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = ran(_run(["dvc", "repro", "--dry"], repo))
    assert "mm_stream" in planned and not planned & {"mm_world", "mm_curate", "mae@mae", "mae@cmae", "clip_pretrain"}


def test_changing_clip_params_leaves_the_mae_stages_and_the_data_alone(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo[0], tmp_path / "repo")  # the session's repo is shared: change a copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mm"]["clip"]["train"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = ran(_run(["dvc", "repro", "--dry"], repo))  # --dry lists the changed stage; the rest follow its outs
    assert "clip_pretrain" in planned and not planned & {"mm_world", "mm_curate", "mae@mae", "mae@cmae"}


def test_fluxforge_eval_scores_the_registered_clip_on_an_image_table_as_mm_eval_did(repo, tmp_path):
    out = tmp_path / "eval.json"
    proc = _run(["fluxforge", "eval", "--model", "models:/fluxforge-clip@champion", "--tracking-uri",
                 f"sqlite:///{repo / 'mlflow.db'}", "--task", "data/mm/curated/shapes.parquet", "--out", str(out)], repo)
    assert "zero-shot accuracy" in proc.stdout
    got = json.loads(out.read_text())
    stream = _metrics(repo, "mm_eval")["stream"]  # the stream trained every slice: its held-out set is the test split
    assert got["zero_shot"]["accuracy"] == pytest.approx(stream["zero_shot.heldout"]["accuracy"], abs=1e-12)
    assert got["images"] == stream["zero_shot.heldout"]["n"]
    bad = _run(["fluxforge", "eval", "--model", "models/mae/mae", "--task", "data/mm/curated/digits.parquet"], repo, check=False)
    assert bad.returncode == 2 and "models/mae/mae: not a CLIP model" in bad.stderr and "Traceback" not in bad.stderr
