"""The fluxforge-clip gate and the image branch's report section, on hand-written metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluxforge.config import MMGate
from fluxforge.eval.report.images import images
from fluxforge.track.gate import Unreadable
from fluxforge.track.registry_clip import ClipScores, clip_gate, clip_scores, clip_tags


def evaluation(zero_shot: float = 0.5, recall5: float = 0.6, digest: str = "set-a") -> dict:
    return {"clip": {"zero_shot.heldout": {"accuracy": zero_shot, "chance": 1 / 32, "n": 64, "over_chance": zero_shot * 32},
                     "zero_shot.unseen": {"accuracy": 0.2, "chance": 1 / 32, "n": 16, "over_chance": 6.4},
                     "retrieval.heldout": {"image_to_text.R1": 0.3, "image_to_text.R1_chance": 0.02,
                                           "image_to_text.R5": recall5, "image_to_text.R5_chance": 0.1,
                                           "text_to_image.R1": 0.2, "text_to_image.R1_chance": 0.02,
                                           "text_to_image.R5": 0.5, "text_to_image.R5_chance": 0.1},
                     "eval_set_digest": digest},
            "probes": {"raw_pixels": {"accuracy": 0.95, "low": 0.93, "high": 0.97, "n": 592, "features": 256},
                       "random_init": {"accuracy": 0.78, "low": 0.74, "high": 0.81, "n": 592, "features": 128},
                       "mae": {"accuracy": 0.81, "low": 0.78, "high": 0.84, "n": 592, "features": 128, "over_random_init": 0.03}},
            "mae": {"mae": {"heldout_loss_before": 1.0, "heldout_loss_after": 0.6, "heldout_drop": 0.4, "steps": 10,
                            "final_loss": 0.6}}}


def test_the_gate_wants_both_scores_over_chance():
    ok, reasons = clip_gate(evaluation()["clip"], MMGate(), None)
    assert ok and reasons[-1] == "PASS no champion yet"
    ok, reasons = clip_gate(evaluation(zero_shot=4.9 / 32)["clip"], MMGate(), None)
    assert not ok and reasons[0].startswith("FAIL held-out zero-shot accuracy 0.153 = 4.9x chance")
    ok, reasons = clip_gate(evaluation(recall5=0.49)["clip"], MMGate(), None)
    assert not ok and reasons[1].startswith("FAIL held-out image->text R@5")


def test_a_tie_an_unreadable_or_an_other_set_champion_keeps_the_champion():
    cfg = MMGate(champion_margin=0.01)
    assert clip_gate(evaluation(0.52)["clip"], cfg, ClipScores("1", "set-a", 0.5))[0]
    ok, reasons = clip_gate(evaluation(0.5)["clip"], cfg, ClipScores("1", "set-a", 0.5))
    assert not ok and "a tie keeps the champion" in reasons[-1]
    ok, reasons = clip_gate(evaluation(0.9)["clip"], cfg, ClipScores("1", "set-b", 0.5))
    assert not ok and "another held-out set" in reasons[-1]
    ok, reasons = clip_gate(evaluation(0.9)["clip"], cfg, Unreadable("1", "its evaluation tag eval.zero_shot is missing"))
    assert not ok and "cannot be compared" in reasons[-1]
    assert clip_gate(evaluation(0.4)["clip"], MMGate(must_beat_champion=False), ClipScores("1", "set-a", 0.5))[0]


def test_tags_read_back_as_the_scores_they_record():
    tags = clip_tags(evaluation(0.3125)["clip"])
    assert clip_scores("3", tags) == ClipScores("3", "set-a", 0.3125)
    assert isinstance(clip_scores("3", {**tags, "eval.zero_shot": "high"}), Unreadable)
    assert isinstance(clip_scores("3", {**tags, "eval.zero_shot": "nan"}), Unreadable)
    assert isinstance(clip_scores("3", {**tags, "eval.set_digest": ""}), Unreadable)


def test_the_section_shows_probes_with_intervals_grids_confusion_and_the_decision(tmp_path):
    (tmp_path / "mm_eval.json").write_text(json.dumps(evaluation()))
    (tmp_path / "mm_register.json").write_text(json.dumps({"model_name": "fluxforge-clip", "version": "4", "promoted": False,
                                                           "reasons": ["FAIL zero-shot 0.500 vs champion v3"]}))
    arrays = tmp_path / "mm"
    arrays.mkdir()
    grid = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(arrays / "recon_mae.npz", original=grid, masked=grid, reconstructed=grid)
    (arrays / "confusion.json").write_text(json.dumps({"rows": ["a"], "columns": ["a", "b"], "counts": [[2, 1]]}))
    html = str(images(tmp_path / "mm_eval.json", tmp_path / "mm_register.json", arrays))
    assert "<td>mae</td><td>0.810</td><td>[0.780, 0.840]</td>" in html and "+0.030" in html
    assert "Raw pixels probe higher (0.950)" in html and "40.0 %" in html
    assert html.count("<img") == 2 and "version 4 is <b>challenger</b>" in html and "FAIL zero-shot" in html
    assert "not run" in str(images(tmp_path / "missing.json", tmp_path / "r.json", arrays))


def test_a_malformed_metrics_file_is_an_error_naming_it(tmp_path):
    from fluxforge.errors import DataError

    bad = evaluation()
    del bad["probes"]["mae"]["high"]
    (tmp_path / "mm_eval.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"mm_eval\.json: probes\.mae: missing key 'high'"):
        images(tmp_path / "mm_eval.json", tmp_path / "r.json", tmp_path)




def stream_metrics() -> dict:
    run = {"method": {"method": "finetune", "replay": True}, "steps": {"task1": 10, "task2": 10},
           "matrix": [[0.1, 0.0, 0.4, 0.1], [0.6, 0.1, 0.4, 0.1], [0.5, 0.7, 0.38, 0.1]],
           "metrics": {"a_ka": 0.6, "a_zs": 0.24, "geometric_mean": 0.379, "forgetting": 0.1, "bwt": -0.1, "fwt": 0.05}}
    plain = {**run, "method": {"method": "finetune", "replay": False}, "metrics": {**run["metrics"], "a_ka": 0.2}}
    return {"tasks": {"task1": ["shapes-s2+++red star"], "task2": ["shapes-s3+++cyan star"]},
            "columns": ["task1", "task2", "base", "digits"], "rows": ["zero-shot", "task1", "task2"],
            "mixture": {"replay": 0.33, "update": 0.34, "buffer": 0.33}, "deploy": "finetune",
            "budget": {"kind": "maf", "methods": {"finetune": {"step_flops": 1e9, "memory_multiplier": 1.0, "maf": 1e9,
                                                                "trainable": 100, "steps": {"task1": 10, "task2": 10}}}},
            "runs": {"finetune": run, "no_replay": plain},
            "claims": {"replay_beats_no_replay": {"gap": 0.2, "holds": True}}}


def test_the_section_shows_the_stream_methods_budget_claims_and_a_matrix_per_run(tmp_path):
    (tmp_path / "mm_eval.json").write_text(json.dumps(evaluation()))
    (tmp_path / "mm_stream.json").write_text(json.dumps(stream_metrics()))
    html = str(images(tmp_path / "mm_eval.json", tmp_path / "r.json", tmp_path, tmp_path / "mm_stream.json"))
    assert "CLIP continual stream (FoMo-in-Flux)" in html and "0.33 / 0.34 / 0.33" in html
    assert "<td>no_replay</td><td>finetune</td><td>no</td><td>20</td><td>0.200</td>" in html
    assert "<td>1e+09</td><td>1.000</td>" in html and "replay beats no replay: holds (gap +0.200)" in html
    assert html.count("<img") == 2  # one score matrix per run (no grids or confusion written here)
    bad = stream_metrics()
    del bad["runs"]["no_replay"]["metrics"]["a_zs"]
    (tmp_path / "mm_stream.json").write_text(json.dumps(bad))
    from fluxforge.errors import DataError

    with pytest.raises(DataError, match=r"mm_stream\.json: runs\.no_replay\.metrics: missing key 'a_zs'"):
        images(tmp_path / "mm_eval.json", tmp_path / "r.json", tmp_path, tmp_path / "mm_stream.json")
