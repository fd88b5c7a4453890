"""The update-method comparison (issue 17): the interval and direction arithmetic against hand-computed values, and
the report's section built from benchmarks/results/update_methods.json, the same words BENCHMARKS.md carries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fluxforge.eval.report.methods import update_methods
from fluxforge.eval.update_methods import FOMO, compare, direction, interval

ROOT = Path(__file__).resolve().parents[1]
T_975_2 = 4.30265272975  # Student's t, 97.5th percentile, 2 degrees of freedom (tables; three seeds)


def _run(method: str, seed: int, a_ka: float, a_zs: float, forgetting: float) -> dict:
    return {"method": method, "seed": seed, "a_ka": a_ka, "a_zs": a_zs, "geometric_mean": math.sqrt(a_ka * a_zs),
            "forgetting": forgetting, "base_ppl_rise": 0.1 * seed, "steps": {"t1": 10, "t2": 20},
            "memory_multiplier": 1.0 if method == "finetune" else 0.6, "zero_shot": {"a_zs": 0.7}}


def test_interval_is_the_t_interval_of_the_mean():
    mean, half = interval([1.0, 2.0, 6.0])  # mean 3, sample SD sqrt(7)
    assert mean == 3.0 and half == pytest.approx(T_975_2 * math.sqrt(7) / math.sqrt(3), rel=1e-10)
    assert interval([0.5]) == (0.5, 0.0)


def test_a_direction_is_called_only_when_the_interval_excludes_zero():
    assert direction([0.10, 0.11, 0.12], +1) == "better" and direction([0.10, 0.11, 0.12], -1) == "worse"
    assert direction([-0.10, -0.11, -0.12], +1) == "worse" and direction([-0.10, -0.11, -0.12], -1) == "better"
    # mean +0.1 but SD 0.1: half-width 4.30 * 0.1 / sqrt(3) = 0.248 > 0.1, so no call
    assert direction([0.0, 0.1, 0.2], +1) == "no clear difference"


def test_compare_pairs_each_method_with_finetune_seed_by_seed():
    runs = [_run("finetune", s, 0.30 + 0.1 * s, 0.60, 0.05) for s in range(3)]
    # lora: A_KA exactly 0.05 below finetune's in each seed (seed-to-seed spread cancels in the pairing), A_ZS higher
    runs += [_run("lora", s, 0.25 + 0.1 * s, 0.65 + 0.01 * s, 0.05) for s in range(3)]
    cmp = compare(runs, ["finetune", "lora"])
    assert [r.method for r in cmp.rows] == ["finetune", "lora"]
    assert cmp.rows[1].cells["a_ka"] == pytest.approx(interval([0.25, 0.35, 0.45]))
    assert cmp.rows[1].memory_multiplier == 0.6 and cmp.rows[1].steps == {"t1": 10, "t2": 20}
    vs = cmp.summary["lora"]
    assert vs["vs_finetune_a_ka"]["mean"] == pytest.approx(-0.05) and vs["vs_finetune_a_ka"]["half_width"] == pytest.approx(0, abs=1e-12)
    assert vs["vs_finetune_a_ka"]["direction"] == "worse" and vs["vs_finetune_a_zs"]["direction"] == "better"
    assert vs["vs_finetune_forgetting"]["direction"] == "no clear difference"  # identical: a zero-width interval at 0
    assert cmp.verdicts["lora"].startswith("lora vs finetune, paired by seed: A_KA worse (-0.050 ± 0.000); A_ZS better")
    assert cmp.verdicts["lora"].endswith(FOMO["lora"] + ".")
    with pytest.raises(ValueError, match=r"no runs of \['ewc'\]"):
        compare(runs, ["finetune", "lora", "ewc"])


def test_the_report_section_shows_the_committed_benchmark_with_its_provenance():
    path = ROOT / "benchmarks" / "results" / "update_methods.json"
    record = json.loads(path.read_text())
    html = str(update_methods(path))
    assert record["command"] in html and record["machine"] in html and record["date"] in html
    assert "Not this run&#39;s numbers" in html or "Not this run's numbers" in html
    cmp = compare(record["runs"], list(dict.fromkeys(r["method"] for r in record["runs"])))
    for row in cmp.rows:
        a_ka = row.cells["a_ka"]
        assert f"<td>{row.method}</td>" in html and f"{a_ka[0]:.3f} ± {a_ka[1]:.3f}" in html
    for verdict in cmp.verdicts.values():  # the words BENCHMARKS.md has, from the same function
        assert verdict.replace("'", "&#39;") in html
        assert verdict.split(" vs finetune")[0] in (ROOT / "BENCHMARKS.md").read_text()
    assert html.count("data:image/png;base64,") == 1  # the A_KA / A_ZS plane


def test_a_missing_or_broken_results_file_is_said_naming_the_file(tmp_path):
    missing = tmp_path / "update_methods.json"
    assert f"{missing} is missing: run benchmarks/update_methods.py" in str(update_methods(missing))
    missing.write_text('{"runs": [{"method": "finetune"')
    assert f"{missing} cannot be read (JSONDecodeError" in str(update_methods(missing))
    missing.write_text(json.dumps({"runs": [_run("lora", 0, 0.2, 0.6, 0.0)]}))
    assert "cannot be read (ValueError: the comparison pairs every method with finetune" in str(update_methods(missing))
