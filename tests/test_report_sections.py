"""Report sections "Technique studies" and "Continual stream", built from synthetic metrics files.

The files follow the schemas the stages write (study_stages.py; the stream stage's stream.json/gap.csv);
the continual metrics and the CMR plan in them are computed by the real library code, and every
expected string is derived from the input here, not typed in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fluxforge import paths as P
from fluxforge.continual.cmr import plan_ratio
from fluxforge.continual.metrics import ContinualMetrics
from fluxforge.errors import DataError
from fluxforge.eval import report as R

PNG = "data:image/png;base64,"


# ----------------------------------------------------------------------------- synthetic study files
def _variant(loss: float, acc: float, steps: int, flops: float) -> dict:
    return {"heldout_loss": loss, "heldout_ppl": math.exp(loss), "acc": acc, "questions": 120, "heldout_docs": 40,
            "steps": steps, "tokens": steps * 8 * 64, "train_flops": flops, "parameters": 100_000,
            "final_train_loss": loss - 0.1, "train_seconds": 1.0}


def _study_files(root: Path) -> dict:
    variants = {"baseline": _variant(3.2100, 0.300, 200, 1e12), "meco": _variant(3.1765, 0.325, 200, 1e12),
                "curriculum": _variant(3.2412, 0.290, 200, 1e12), "growth": _variant(3.2050, 0.300, 230, 0.99e12)}
    base = variants["baseline"]
    vs = {n: {"heldout_loss_change": v["heldout_loss"] - base["heldout_loss"], "acc_change": v["acc"] - base["acc"],
              "compute_ratio": v["train_flops"] / base["train_flops"], "tokens_ratio": v["tokens"] / base["tokens"]}
          for n, v in variants.items() if n != "baseline"}
    data = {"variants": variants, "vs_baseline": vs, "steps": 200}
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "study.json").write_text(json.dumps(data))
    (root / "plots" / "study").mkdir(parents=True, exist_ok=True)
    lines = ["variant,tokens,loss"] + [f"{n},{t * 512},{5.0 / (1 + t) + v['heldout_loss']}"
                                       for n, v in variants.items() for t in range(1, 11)]
    (root / "plots" / "study" / "curves.csv").write_text("\n".join(lines) + "\n")
    return data


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the report's metrics and plots folders at an empty tmp dir."""
    monkeypatch.setattr(P, "METRICS", tmp_path / "metrics")
    monkeypatch.setattr(P, "PLOTS", tmp_path / "plots")
    return tmp_path


def test_study_section_shows_the_changes_of_each_variant(paths):
    data = _study_files(paths)
    page = R._study()
    for c in data["vs_baseline"].values():
        assert f"{c['heldout_loss_change']:+.4f}" in page and f"{c['acc_change']:+.3f}" in page
        assert f"{c['compute_ratio']:.2f}" in page
    for v in data["variants"].values():
        assert f"<td>{v['heldout_loss']:.4f}</td>" in page
    meco, cur = data["vs_baseline"]["meco"], data["vs_baseline"]["curriculum"]
    # the sentences follow the sign of the numbers: MeCo's loss fell, the curriculum's rose
    assert f"MeCo lowered held-out loss by {abs(meco['heldout_loss_change']):.4f}" in page
    assert f"The curriculum raised held-out loss by {abs(cur['heldout_loss_change']):.4f}" in page
    assert f"lowered accuracy by {abs(cur['acc_change']):.3f}" in page
    # green for the better (lower) loss, red for the worse one
    assert f'<span style="color:#1a7f37">{meco["heldout_loss_change"]:+.4f}</span>' in page
    assert f'<span style="color:#cf222e">{cur["heldout_loss_change"]:+.4f}</span>' in page
    assert "URL conditioning" in page and "G_stack" in page and "EMA" in page
    assert page.count(PNG) == 1


def test_study_sentence_flips_with_the_sign(paths):
    data = _study_files(paths)
    data["vs_baseline"]["meco"]["heldout_loss_change"] *= -1
    (paths / "metrics" / "study.json").write_text(json.dumps(data))
    assert f"MeCo raised held-out loss by {abs(data['vs_baseline']['meco']['heldout_loss_change']):.4f}" in R._study()


def test_study_not_run_and_malformed(paths):
    page = R._study()
    assert "Technique studies not run" in page and "<code>study</code>" in page and "study.studies" in page
    data = _study_files(paths)
    del data["variants"]["meco"]["heldout_loss"]
    (paths / "metrics" / "study.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"study\.json variants\.meco: missing key 'heldout_loss'"):
        R._study()


def test_study_without_curves_still_renders(paths):
    _study_files(paths)
    (paths / "plots" / "study" / "curves.csv").unlink()
    page = R._study()
    assert PNG not in page and "curves.csv is missing" in page and "MeCo" in page


# ----------------------------------------------------------------------------- synthetic stream files
ROWS, COLS, TASKS = ["zero-shot", "general-2024", "cyber"], ["general-2024", "cyber", "base"], ["general-2024", "cyber"]
ACC = [[0.30, 0.26, 0.41], [0.38, 0.27, 0.40], [0.35, 0.44, 0.37]]
PPL = [[40.0, 90.0, 30.0], [31.0, 85.0, 30.5], [34.0, 42.0, 33.0]]
MERGED_ACC = [[0.30, 0.26, 0.41], [0.36, 0.27, 0.41], [0.36, 0.40, 0.39]]
MERGED_PPL = [[40.0, 90.0, 30.0], [33.0, 86.0, 30.2], [33.5, 50.0, 31.0]]


def _pilots() -> dict[float, list[tuple[float, float, float]]]:
    """General loss rising towards 2 + 0.4 R, domain loss falling: a larger domain share costs more general loss."""
    ts = np.geomspace(1e3, 3e4, 6)
    return {r: [(float(t), 2.0 + 0.4 * r - 20.0 * t**-0.5, 3.0 + 50.0 * t**-0.5 - 0.5 * r) for t in ts]
            for r in (0.1, 0.3, 0.5, 0.7)}


def _stream_files(root: Path, merged: bool = True, without_replay: float | None = 0.21) -> dict:
    pilots = _pilots()
    plan = plan_ratio(pilots, baseline_general_loss=2.0, epsilon=0.15, budget_tokens=1e5).to_dict()
    plan["pilots"] = {f"{r:g}": [list(p) for p in pts] for r, pts in pilots.items()}
    metrics = {k: ContinualMetrics.compute(m, higher_is_better=k == "acc").to_dict() for k, m in (("acc", ACC), ("ppl", PPL))}
    mmetrics = {k: ContinualMetrics.compute(m, higher_is_better=k == "acc").to_dict()
                for k, m in (("acc", MERGED_ACC), ("ppl", MERGED_PPL))}
    rise = {"with_replay": PPL[-1][-1] / PPL[0][-1] - 1}
    if without_replay is not None:
        rise["without_replay"] = without_replay
    data = {"tasks": TASKS, "columns": COLS, "rows": ROWS, "matrix": {"acc": ACC, "ppl": PPL},
            "merged_matrix": {"acc": MERGED_ACC, "ppl": MERGED_PPL} if merged else None,
            "metrics": metrics, "merged_metrics": mmetrics if merged else None,
            "replay": {"mode": "planned", "ratios": {"general-2024": 0.25, "cyber": plan["ratio"]}, "plans": {"cyber": plan}},
            "general_ppl_rise": rise, "merge": {"method": "ema", "weight": 0.5}, "strategy": {"kind": "none"},
            "schedule": "infinite", "ordering": "given"}
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "stream.json").write_text(json.dumps(data))
    (root / "plots" / "stream").mkdir(parents=True, exist_ok=True)
    lines = ["task,step,tokens,general_loss,domain_loss"]
    for k, task in enumerate(TASKS):  # a spike in the general loss at step 2, then recovery
        lines += [f"{task},{s},{s * 512},{2.0 + k + 0.3 * math.exp(-((s - 2) ** 2))},{4.0 - 0.1 * s}" for s in range(8)]
    (root / "plots" / "stream" / "gap.csv").write_text("\n".join(lines) + "\n")
    return data


def test_stream_section_shows_matrices_metrics_replay_and_gap(paths):
    data = _stream_files(paths)
    page = R._stream()
    assert page.count(PNG) == 4 + 1 + 1  # acc/ppl heatmaps of trunk and merged, one CMR figure, the gap curves
    for key in ("metrics", "merged_metrics"):
        m = data[key]
        assert f"<td>{m['acc']['a_ka']:.3f}</td>" in page and f"<td>{m['ppl']['a_zs']:.2f}</td>" in page
        assert f"<td>{m['acc']['forgetting']:.3f}</td>" in page and f"<td>{m['acc']['bwt']:.3f}</td>" in page
    assert page.count("<th>trunk accuracy</th>") == 1 and page.count("<th>merged perplexity</th>") == 1
    plan = data["replay"]["plans"]["cyber"]
    assert f"domain share R={plan['ratio']:g} meets" in page and f"{plan['baseline_general_loss']:.4f} + 0.15" in page
    rise = data["general_ppl_rise"]
    assert f"rose by {rise['with_replay']:.1%}" in page and f"rose by {rise['without_replay']:.1%} without replay" in page
    assert "replay kept it lower" in page
    gap = R.pd.read_csv(paths / "plots" / "stream" / "gap.csv")
    for _, g in gap.groupby("task"):
        peak = g.loc[g["general_loss"].idxmax()]
        assert f"{peak['general_loss']:.4f} (step {int(peak['step'])})" in page
    assert "general-2024 &rarr; cyber" in page and "merge ema with weight 0.5" in page


def test_cmr_figure_highlights_the_chosen_ratio_and_draws_the_tolerance(paths, monkeypatch):
    data = _stream_files(paths)
    plan = data["replay"]["plans"]["cyber"]
    figs = []
    monkeypatch.setattr(R, "_img", lambda fig: figs.append(fig) or "")
    R._cmr_figure("cyber", plan, "stream.json")
    ax = figs[0].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    chosen = lines[f"R={plan['ratio']:g} (chosen)"]
    others = [ln for lab, ln in lines.items() if lab.startswith("R=") and "chosen" not in lab]
    assert len(others) == len(plan["grid"]) - 1 and all(ln.get_linewidth() < chosen.get_linewidth() for ln in others)
    tol = lines["tolerance L_G(0) + epsilon"].get_ydata()
    assert tol[0] == pytest.approx(plan["baseline_general_loss"] + plan["epsilon"])
    # the fitted curve drawn for the chosen ratio is the plan's law: at the budget it equals the recorded value
    assert chosen.get_ydata()[-1] == pytest.approx(plan["fits"][f"{plan['ratio']:g}"]["general_loss_at_budget"], rel=1e-9)
    assert chosen.get_xdata()[-1] == pytest.approx(plan["budget_tokens"])
    pilot_points = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None"]
    assert sum(len(ln.get_xdata()) for ln in pilot_points) == sum(len(v) for v in plan["pilots"].values())


def test_stream_without_merge_or_no_replay_run(paths):
    _stream_files(paths, merged=False, without_replay=None)
    page = R._stream()
    assert page.count(PNG) == 2 + 1 + 1 and "merged" not in page.split("Forgetting and accumulation")[1].split("</table>")[0]
    assert "there is no run without replay to compare with" in page


def test_stream_not_run_and_malformed(paths):
    page = R._stream()
    assert "Continual stream not run" in page and "<code>stream</code>" in page
    data = _stream_files(paths)
    data["matrix"]["acc"] = data["matrix"]["acc"][:2]  # 2 rows but 3 row labels
    (paths / "metrics" / "stream.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"stream\.json matrix\.acc: matrix is 2x3 but 3 row labels"):
        R._stream()


def test_build_report_places_both_sections_and_survives_their_absence(tiny_params, in_tmp):
    empty = R.build_report(tiny_params, P.REPORTS / "report.html").read_text()
    assert "Technique studies not run" in empty and "Continual stream not run" in empty
    _study_files(in_tmp)
    _stream_files(in_tmp)
    page = R.build_report(tiny_params, P.REPORTS / "report.html").read_text()
    order = [page.index(h) for h in ("2. Training", "3. Technique studies", "4. Evaluation", "5. Continual stream",
                                     "6. Registry decision")]
    assert order == sorted(order)
    assert "not run" not in page and page.count(PNG) >= 1 + 6


def test_a_skipped_stream_says_so_instead_of_failing(tmp_path):
    from fluxforge.eval.report import _stream

    skipped = tmp_path / "stream.json"
    skipped.write_text('{"skipped": "params has no stream section (or stream.enabled: false)"}')
    out = _stream(skipped, tmp_path / "gap.csv")
    assert "Continual stream not run" in out and "no stream section" in out
