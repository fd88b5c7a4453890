"""Report sections "Technique studies" and "Continual stream", built from synthetic metrics files; the page's
escaping, its figures, and its templates as installed package data.

The files follow the schemas the stages write (the study stage's study.json/curves.csv; the stream stage's
stream.json/gap.csv); the continual metrics and the CMR plan in them are computed by the real library code,
and every expected string is derived from the input here, not typed in.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fluxforge import paths as P
from fluxforge.continual.cmr import plan_ratio
from fluxforge.continual.metrics import ContinualMetrics
from fluxforge.continual.promise import Promise, promise_record
from fluxforge.errors import DataError
from fluxforge.eval.report import build_report
from fluxforge.eval.report.figures import heatmap_figure
from fluxforge.eval.report.stream import cmr_figure, promise, stream
from fluxforge.eval.report.studies import study
from fluxforge.io import write_json

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
    page = study()
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
    assert f"MeCo raised held-out loss by {abs(data['vs_baseline']['meco']['heldout_loss_change']):.4f}" in study()


def test_study_not_run_and_malformed(paths):
    page = study()
    assert "Technique studies not run" in page and "<code>study</code>" in page and "study.studies" in page
    data = _study_files(paths)
    del data["variants"]["meco"]["heldout_loss"]
    (paths / "metrics" / "study.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"study\.json variants\.meco: missing key 'heldout_loss'"):
        study()


def test_study_without_curves_still_renders(paths):
    _study_files(paths)
    (paths / "plots" / "study" / "curves.csv").unlink()
    page = study()
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
            "schedule": "infinite", "ordering": "given", "method": {"method": "lora", "rank": 4, "alpha": 4.0},
            "budget": {"kind": "maf", "reference": "finetune", "method": "lora", "methods": {
                "finetune": {"step_flops": 2.56e7, "task_flops": 0.0, "flops": 2.56e7, "memory_bytes": 1389684,
                             "memory_multiplier": 1.0, "maf": 2.56e7, "trainable": 33440, "steps": {"general-2024": 12, "cyber": 12}},
                "lora": {"step_flops": 1.95e7, "task_flops": 0.0, "flops": 1.95e7, "memory_bytes": 970000,
                         "memory_multiplier": 0.698, "maf": 1.3611e7, "trainable": 4352, "steps": {"general-2024": 22, "cyber": 22}}}}}
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
    page = stream()
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
    gap = pd.read_csv(paths / "plots" / "stream" / "gap.csv")
    for _, g in gap.groupby("task"):
        peak = g.loc[g["general_loss"].idxmax()]
        assert f"{peak['general_loss']:.4f} (step {int(peak['step'])})" in page
    assert "general-2024 &rarr; cyber" in page and "merge ema with weight 0.5" in page


def test_stream_section_tables_the_planners_promise_and_flags_a_broken_one(paths):
    data = _stream_files(paths)
    assert promise(None, "stream.json") is None, "no promise recorded (a stream from before issue 21): no table"
    data["replay"]["promise"] = promise_record([Promise("general-2024", 0.5, 0.031, 0.012, 0.05),
                                                Promise("cyber", 0.1, 0.048, 0.23, 0.05, margin=0.0123)])
    (paths / "metrics" / "stream.json").write_text(json.dumps(data))
    page = stream()
    assert "Held in <b>1 of 2</b> planned tasks" in page
    assert "<tr><td>general-2024</td><td>0.5</td><td>+3.1%</td><td>+1.2%</td><td>+5.0%</td><td>0.0000</td><td>yes</td></tr>" in page
    assert "<tr><td>cyber</td><td>0.1</td><td>+4.8%</td><td>+23.0%</td><td>+5.0%</td><td>0.0123</td><td><b" in page
    assert "no: promise broken" in page
    del data["replay"]["promise"]["tasks"]["cyber"]["realised"]
    with pytest.raises(DataError, match=r"replay\.promise\.tasks\.cyber: missing key 'realised'"):
        promise(data["replay"]["promise"], "stream.json replay.promise")


def test_stream_section_shows_the_update_method_and_its_budget_table(paths):
    data = _stream_files(paths)
    page = stream()
    assert "Update method: <b>lora (rank 4, alpha 4.0)</b>" in page and "Budget: <b>maf</b>" in page
    table = page.split("<th>steps per task</th>")[1].split("</table>")[0]
    assert table.count("<tr>") == 2
    assert "<td>lora</td><td>4,352</td><td>1.95e+07</td><td>0</td><td>0.93</td><td>0.698</td><td>0.532</td>" in table
    assert "<td>general-2024 22, cyber 22</td>" in table and "<td>general-2024 12, cyber 12</td>" in table
    del data["budget"]["methods"]["lora"]["steps"]
    (paths / "metrics" / "stream.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"stream\.json budget\.methods\.lora: missing key 'steps'"):
        stream()
    del data["budget"], data["method"]  # a stream.json from before update methods
    (paths / "metrics" / "stream.json").write_text(json.dumps(data))
    page = stream()
    assert "finetune (no method recorded" in page and "No budget recorded." in page


def test_cmr_figure_highlights_the_chosen_ratio_and_draws_the_tolerance(paths):
    data = _stream_files(paths)
    plan = data["replay"]["plans"]["cyber"]
    ax = cmr_figure("cyber", plan, "stream.json").axes[0]
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
    page = stream()
    assert page.count(PNG) == 2 + 1 + 1 and "merged" not in page.split("Forgetting and accumulation")[1].split("</table>")[0]
    assert "there is no run without replay to compare with" in page


def test_stream_not_run_and_malformed(paths):
    page = stream()
    assert "Continual stream not run" in page and "<code>stream</code>" in page
    data = _stream_files(paths)
    data["matrix"]["acc"] = data["matrix"]["acc"][:2]  # 2 rows but 3 row labels
    (paths / "metrics" / "stream.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"stream\.json matrix\.acc: matrix is 2x3 but 3 row labels"):
        stream()


def test_build_report_places_both_sections_and_survives_their_absence(tiny_params, in_tmp):
    empty = build_report(tiny_params, P.REPORTS / "report.html").read_text()
    assert "Technique studies not run" in empty and "Continual stream not run" in empty
    _study_files(in_tmp)
    _stream_files(in_tmp)
    page = build_report(tiny_params, P.REPORTS / "report.html").read_text()
    order = [page.index(h) for h in ("2. Training", "3. Technique studies", "4. Evaluation", "5. Continual stream",
                                     "6. Registry decision")]
    assert order == sorted(order)
    assert "Technique studies not run" not in page and "Continual stream not run" not in page
    assert page.count("not run") == 1 and "branch not run" in page  # only the image branch, whose files are absent
    assert page.count(PNG) >= 1 + 6


def test_a_skipped_stream_says_so_instead_of_failing(tmp_path):
    skipped = tmp_path / "stream.json"
    skipped.write_text('{"skipped": "params has no stream section (or stream.enabled: false)"}')
    out = stream(skipped, tmp_path / "gap.csv")
    assert "Continual stream not run" in out and "no stream section" in out


# ----------------------------------------------------------------------------- the page: escaping, figures, package data
EVIL = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"


def test_names_from_the_data_are_escaped_everywhere_on_the_page(tiny_params, in_tmp):
    """A source, model, task, variant or reason is whatever a user named it: on the page it is text, never markup."""
    scores = {"general": {"acc": 0.5, "acc_norm": 0.5, "ppl": 20.0}, "cyber": {"acc": 0.4, "acc_norm": 0.4, "ppl": 30.0},
              "slices": {EVIL: {"acc": 0.5, "ppl": 20.0}}, "parameters": 1000, "tokens_per_s": 10.0}
    test = {"n": 10, "acc_pretrain": 0.3, "acc_final": 0.5, "gained": 3, "lost": 1, "p_final_vs_pretrain": 0.3,
            "p_final_vs_chance": 0.02}
    distill = {"teacher": EVIL, "student": "student", "size_ratio": 1.0, "speedup": 1.0, "general_acc_fraction": 1.0,
               "cyber_acc_fraction": 1.0, "general_ppl_ratio": 1.0, "cyber_ppl_ratio": 1.0}
    write_json(P.METRICS / "eval.json", {"final": EVIL, "questions": 10, "models": {EVIL: scores, "student": scores},
                                         "tests": {EVIL: test}, "distill": distill})
    write_json(P.METRICS / "funnel.json", {EVIL: 3})
    write_json(P.METRICS / "filter.json", {"rejected_by_reason": {EVIL: 2}})
    write_json(P.METRICS / "data_quality.json", {EVIL: 0.5, "confusion.filter": {EVIL: {EVIL: 1}}})
    write_json(P.METRICS / "filter_quality.json", {EVIL: {"rejected": 1, "precision": 1.0, f"recall.{EVIL}": 1.0}})
    write_json(P.METRICS / "register.json", {"model_name": EVIL, "version": EVIL, "promoted": False, "reasons": [f"FAIL {EVIL}"]})
    study_data = _study_files(in_tmp)
    study_data["variants"][EVIL] = study_data["variants"].pop("meco")
    study_data["vs_baseline"][EVIL] = study_data["vs_baseline"].pop("meco")
    write_json(P.METRICS / "study.json", study_data)
    stream_data = _stream_files(in_tmp)
    stream_data["replay"]["plans"]["cyber"]["notes"] = [EVIL]
    stream_data.update(ordering=EVIL, schedule=EVIL, merge={"method": EVIL}, strategy={"kind": EVIL},
                       replay={**stream_data["replay"], "mode": EVIL}, method={"method": EVIL, EVIL: EVIL})
    stream_data["budget"]["methods"][EVIL] = stream_data["budget"]["methods"].pop("lora")
    write_json(P.METRICS / "stream.json", stream_data)
    params = tiny_params.model_copy(update={"tracking": tiny_params.tracking.model_copy(update={"experiment": EVIL})})

    page = build_report(params, P.REPORTS / "report.html").read_text()
    assert "<script" not in page and "alert('x')" not in page
    for shown in (f"<code>{ESCAPED}</code>; 10 multiple-choice", f"experiment <code>{ESCAPED}</code>",  # header
                  f"<td>filter</td><td>{ESCAPED}</td><td>2</td>", f"<tr><td>{ESCAPED}</td><td>0.500</td></tr>",  # data
                  f"<th>{ESCAPED}</th>", f"<td>{ESCAPED}</td><td>1</td><td>1.000</td><td>{ESCAPED} 1.000</td>",
                  f"<tr><td>{ESCAPED}</td><td>0.500</td><td>0.500</td><td>20.000</td>",  # evaluation
                  f"<tr><td>{ESCAPED}</td><td>10</td>", f"<td>teacher ({ESCAPED})</td>",
                  f"<tr><td>{ESCAPED}</td><td>", f"<li>{ESCAPED} lowered held-out loss",  # study
                  f"(ordering {ESCAPED}, schedule {ESCAPED}); merge {ESCAPED}; data strategy {ESCAPED}.",  # stream
                  f"Replay mode: <b>{ESCAPED}</b>", f"(extrapolated beyond the pilots); {ESCAPED}</td>",
                  f"<p>{ESCAPED} version {ESCAPED} is <b>challenger</b>", f"<li>FAIL {ESCAPED}</li>"):  # registry
        assert shown in page, shown


def test_heatmap_figure_draws_the_matrix():
    rows, cols = ["zero-shot", "after t1", "after t2"], ["t1", "t2", "held-out"]
    fig = heatmap_figure(ACC, rows, cols, "accuracy")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), np.array(ACC))
    assert [t.get_text() for t in ax.get_xticklabels()] == cols and [t.get_text() for t in ax.get_yticklabels()] == rows
    assert ax.get_title() == "accuracy"
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.3g}" for r in ACC for v in r)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match=r"matrix is 3x3 but 2 row labels and 3 column labels"):
        heatmap_figure(ACC, rows[:2], cols, "accuracy")
    with pytest.raises(DataError, match=r"not a rectangular table"):
        heatmap_figure([[0.1, 0.2, 0.3], [0.1]], rows[:2], cols, "accuracy")
    with pytest.raises(DataError, match=r"NaN/infinite cells at \(row, col\) \[\(1, 2\)\]"):
        heatmap_figure([ACC[0], [0.1, 0.2, None]], rows[:2], cols, "accuracy")


def test_templates_ship_in_the_wheel(tmp_path):
    """pyproject's package-data puts every template into the installed package: a wheel built from this tree holds them."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / name)
    build = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"
    wheel = subprocess.run([sys.executable, "-c", build], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()[-1]
    shipped = set(zipfile.ZipFile(tmp_path / "dist" / wheel).namelist())
    templates = [t.name for t in files("fluxforge.eval.report").joinpath("templates").iterdir()]
    assert "report.html.j2" in templates and "stream.html.j2" in templates
    assert {f"fluxforge/eval/report/templates/{t}" for t in templates} <= shipped


def test_training_section_names_the_peak_each_mfu_is_measured_against(tmp_path):
    from fluxforge.eval.report.training import curves
    from fluxforge.io import write_json

    write_json(tmp_path / "train" / "pretrain.json", {"tokens_per_s": 12345.6, "mfu": 0.42, "mfu_peak_flops": 8.0e10,
                                                      "mfu_peak_source": "measured Some CPU float32 matmul, best of 5 trials"})
    write_json(tmp_path / "train" / "continual_cyber.json", {"tokens_per_s": 1000.0, "mfu": 0.0})
    html = str(curves(tmp_path / "plots", ["cyber"], tmp_path / "train"))
    assert "12,346" in html and "42.0%" in html and "80.0" in html and "measured Some CPU float32 matmul" in html
    assert "continual/cyber" in html and "n/a (MFU off)" in html
