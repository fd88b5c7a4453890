"""One HTML page a person reads after a run: data funnel, loss curves, technique studies, accuracy, significance,
continual stream, registry decision."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fluxforge import paths as P  # noqa: E402
from fluxforge.config import Params  # noqa: E402
from fluxforge.continual.cmr import PowerLaw  # noqa: E402
from fluxforge.continual.metrics import MetricsError, heatmap_figure  # noqa: E402
from fluxforge.errors import DataError  # noqa: E402
from fluxforge.io import atomic_file  # noqa: E402


def _img(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _funnel(funnel: dict, ledgers: dict) -> str:
    if not funnel:
        return "<p>No data funnel recorded.</p>"
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh(list(funnel)[::-1], list(funnel.values())[::-1], color="#4c72b0")
    for i, v in enumerate(list(funnel.values())[::-1]):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel("documents")
    rows = "".join(f"<tr><td>{s}</td><td>{html.escape(r)}</td><td>{n}</td></tr>"
                   for s, m in ledgers.items() for r, n in m.get("rejected_by_reason", {}).items())
    return _img(fig) + f"<table><tr><th>stage</th><th>reason</th><th>rejected</th></tr>{rows}</table>"


def _quality(quality: dict) -> str:
    """Recall per planted defect, precision per filter, and who caught what (filter x defect)."""
    if not quality:
        return "<p>No planted labels (not a world source).</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in quality.items() if isinstance(v, float))
    conf = quality.get("confusion.filter", {})
    defects = sorted({d for row in conf.values() for d in row})
    head = "".join(f"<th>{html.escape(d)}</th>" for d in defects)
    body = "".join(f"<tr><td>{html.escape(f)}</td>" + "".join(f"<td>{row.get(d, '')}</td>" for d in defects) + "</tr>"
                   for f, row in sorted(conf.items()))
    table = f"<table><tr><th>filter \\ planted defect</th>{head}</tr>{body}</table>" if conf else ""
    alone = _load(P.METRICS / "filter_quality.json")
    alone_rows = "".join(
        f"<tr><td>{html.escape(f)}</td><td>{r['rejected']}</td><td>{r.get('precision', float('nan')):.3f}</td><td>"
        + ", ".join(f"{k.removeprefix('recall.')} {v:.3f}" for k, v in r.items() if k.startswith("recall.")) + "</td></tr>"
        for f, r in alone.items())
    alone_table = (f"<p>Each filter alone on the raw documents:</p><table><tr><th>filter</th><th>rejected</th>"
                   f"<th>precision</th><th>recall of its target defect</th></tr>{alone_rows}</table>") if alone else ""
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table><p>Who caught what in the chain:</p>{table}{alone_table}"


def _curves(params: Params) -> str:
    """Training loss of each model in DAG order, continual tasks placed after the model they start from."""
    order = ["pretrain", *[f"continual_{t}" for t in params.continual.tasks]]
    files = {f.stem: f for f in (P.PLOTS / "train").glob("*.csv")}
    if not files:
        return "<p>No training curves.</p>"
    fig, ax = plt.subplots(figsize=(7, 3.2))
    offset = 0
    for name in order:
        if name in files:
            df = pd.read_csv(files[name])
            ax.plot(df["step"] + offset, df["loss"], label=name.replace("continual_", "continual/"))
            offset += int(df["step"].max())
    if "student" in files:
        df = pd.read_csv(files["student"])
        ax.plot(df["step"], df["loss"], "--", label="student (KD loss, own steps)")
    ax.set_xlabel("step (continual tasks placed end to end)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _img(fig)


def _capability(params: Params) -> str:
    """Probe accuracy and perplexity per domain through pretraining and each continual task, end to end."""
    order = ["pretrain", *[f"continual_{t}" for t in params.continual.tasks]]
    frames = {n: pd.read_csv(P.PLOTS / "capability" / f"{n}.csv") for n in order if (P.PLOTS / "capability" / f"{n}.csv").exists()}
    frames = {n: f for n, f in frames.items() if len(f.columns) > 1}
    if not frames:
        return "<p>No capability probes (set <code>probe_every</code> in params to draw these curves).</p>"
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    offset, colors = 0, {"general": "#4c72b0", "cyber": "#dd8452"}
    for i, (name, df) in enumerate(frames.items()):
        for d, c in colors.items():
            for ax, key in ((axes[0], f"{d}_acc"), (axes[1], f"{d}_ppl")):
                if key in df:
                    ax.plot(df["step"] + offset, df[key], "o-", ms=3, color=c, label=d if i == 0 else None)
        end = offset + int(df["step"].max())
        for ax in axes:
            ax.axvline(end, color="grey", lw=0.6, ls=":")
            ax.text((offset + end) / 2, 1.01, name.replace("continual_", ""), transform=ax.get_xaxis_transform(),
                    ha="center", fontsize=7)
        offset = end
    axes[0].axhline(0.25, color="grey", ls="--", lw=0.8)
    axes[0].set_ylabel("probe accuracy")
    axes[1].set_ylabel("probe held-out perplexity")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step (stages end to end)")
        ax.legend(fontsize=8)
    return (_img(fig) + "<p>Probes score a fixed subset of the questions and held-out documents during training "
            "(<code>probe_every</code>, <code>probe_questions</code>); a dip right after a task starts is the stability gap.</p>")


# ----------------------------------------------------------------------------- shared helpers of the study and stream sections
def _need(d: dict, key: str, where: str) -> Any:
    """``d[key]``, or a :class:`DataError` naming the file and the key (a malformed metrics file is not skipped)."""
    if not isinstance(d, dict) or key not in d:
        raise DataError(f"{where}: missing key '{key}'")
    return d[key]


def _num(x: Any, fmt: str = ".4f") -> str:
    """A number for a table cell; ``None``/NaN (undefined metrics are stored as null) shows as n/a."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt)


def _signed(x: float, lower_is_better: bool, fmt: str = "+.4f") -> str:
    """A signed change, green when it is an improvement and red when it is a regression."""
    better = x < 0 if lower_is_better else x > 0
    color = "#1a7f37" if better else ("#cf222e" if x != 0 else "#222")
    return f'<span style="color:{color}">{format(x, fmt)}</span>'


def _not_run(what: str, stage: str, key: str) -> str:
    return (f"<p>{what} not run: run the <code>{stage}</code> stage "
            f"(params key <code>{key}</code> turns it on).</p>")


# ----------------------------------------------------------------------------- technique studies
# One line per study: what it changes against the baseline and what is held equal (study_stages.py docstring).
STUDY_CHANGES = {
    "baseline": "plain pretraining: shuffled windows, cosine LR to min_lr_ratio, from scratch",
    "meco": "MeCo: URL conditioning + a 10% plain cooldown, at equal tokens (Gao et al. 2025)",
    "curriculum": "quality-ascending data + moderate LR decay + EMA of the last checkpoints vs shuffle + cosine, "
                  "at equal tokens (Luo et al. 2025)",
    "growth": "G_stack: a model of num_layers/g layers grown by stacking, at equal training FLOPs (Du et al. 2024)",
}
STUDY_NAMES = {"meco": "MeCo", "curriculum": "The curriculum", "growth": "G_stack growth"}


def _study_sentence(name: str, v: dict, c: dict, base: dict) -> str:
    """One generated sentence per study: the direction and size of the held-out loss and accuracy changes."""
    d_loss, d_acc = c["heldout_loss_change"], c["acc_change"]
    loss = ("left held-out loss unchanged" if d_loss == 0 else
            f"{'lowered' if d_loss < 0 else 'raised'} held-out loss by {abs(d_loss):.4f} "
            f"({base['heldout_loss']:.4f} to {v['heldout_loss']:.4f}, perplexity {base['heldout_ppl']:.2f} to {v['heldout_ppl']:.2f})")
    acc = ("left accuracy unchanged" if d_acc == 0 else
           f"{'raised' if d_acc > 0 else 'lowered'} accuracy by {abs(d_acc):.3f}")
    n = v.get("questions", 0)
    se = math.sqrt(max(base["acc"] * (1 - base["acc"]), 0.0) / n) if n else math.nan
    noise = f" on {n} questions (binomial standard error of one accuracy about {se:.3f})" if n else ""
    return (f"{STUDY_NAMES.get(name, name)} {loss} and {acc}{noise}, at {c['compute_ratio']:.2f}x the baseline's "
            f"training compute and {c['tokens_ratio']:.2f}x its tokens.")


def _study_curves(path: Path) -> str:
    if not path.exists():
        return f"<p>No training curves ({path} is missing).</p>"
    df = pd.read_csv(path)
    missing = {"variant", "tokens", "loss"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)} (expected variant,tokens,loss)")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, g in df.groupby("variant", sort=False):
        ax.plot(g["tokens"], g["loss"], "--" if name == "baseline" else "-", label=str(name))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("training loss per variant")
    ax.legend(fontsize=8)
    return _img(fig)


def _study_row(name: str, v: dict, c: dict | None, where: str, where_c: str) -> str:
    """A table row; the baseline (``c`` is None) has no change columns and ratios of 1."""
    loss, acc = _need(v, "heldout_loss", where), _need(v, "acc", where)
    if c is None:
        changes = ("", "", "1.00", "1.00")
    else:
        changes = (_signed(_need(c, "heldout_loss_change", where_c), True, "+.4f"),
                   _signed(_need(c, "acc_change", where_c), False, "+.3f"),
                   f"{_need(c, 'compute_ratio', where_c):.2f}", f"{_need(c, 'tokens_ratio', where_c):.2f}")
    cells = (html.escape(name), html.escape(STUDY_CHANGES.get(name, "not described")), f"{loss:.4f}", changes[0],
             f"{acc:.3f}", changes[1], changes[2], changes[3], str(v.get("steps", "")))
    return "<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"


def _study(metrics: Path | None = None, curves: Path | None = None) -> str:
    """Each technique against the plain-pretraining baseline: table, loss curves, one sentence per study."""
    metrics = metrics or P.METRICS / "study.json"
    curves = curves or P.PLOTS / "study" / "curves.csv"
    if not metrics.exists():
        return _not_run("Technique studies", "study", "study.studies")
    data = json.loads(metrics.read_text())
    variants, vs = _need(data, "variants", str(metrics)), data.get("vs_baseline", {})
    base = _need(variants, "baseline", f"{metrics} variants")
    rows, sentences = "", []
    for name, v in variants.items():
        c = vs.get(name)
        if name != "baseline" and c is None:
            raise DataError(f"{metrics}: variant '{name}' has no entry under vs_baseline")
        rows += _study_row(name, v, c, f"{metrics} variants.{name}", f"{metrics} vs_baseline.{name}")
        if c:
            sentences.append(_study_sentence(name, v, c, base))
    table = ("<table><tr><th>variant</th><th>what it changes</th><th>held-out loss</th><th>change vs baseline</th>"
             "<th>accuracy</th><th>change</th><th>compute ratio</th><th>tokens ratio</th><th>steps</th></tr>" + rows + "</table>")
    notes = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    return (table + f"<ul>{notes}</ul><p>Each variant is one run with one seed; green marks an improvement "
            "(lower loss, higher accuracy), and changes within about two standard errors may be noise.</p>"
            + _study_curves(curves))


# ----------------------------------------------------------------------------- continual stream
STREAM_METRICS = (  # (key in ContinualMetrics.to_dict(), label); signs are such that > 0 is what the label says
    ("a_ka", "A_KA: knowledge accumulated over the tasks (final row)"),
    ("a_zs", "A_ZS: retention on the base data"),
    ("geometric_mean", "geometric mean sqrt(A_KA * A_ZS)"),
    ("forgetting", "forgetting (&gt; 0: earlier tasks got worse)"),
    ("bwt", "BWT (&gt; 0: later tasks helped earlier ones)"),
    ("fwt", "FWT (&gt; 0: earlier tasks helped later ones)"),
)
SCORES = {"acc": ("accuracy", "higher is better", ".3f"), "ppl": ("perplexity", "lower is better", ".2f")}


def _stream_heatmaps(data: dict, where: str) -> str:
    """Score matrices (model after each task x evaluation set) of the trunk and, if any, the merged model."""
    rows, cols = _need(data, "rows", where), _need(data, "columns", where)
    out = ""
    for label, key in (("trunk", "matrix"), ("merged", "merged_matrix")):
        for score, m in (data.get(key) or {}).items():
            name, direction, _ = SCORES.get(score, (score, "", ".3g"))
            try:
                fig = heatmap_figure(m, rows, cols, f"{label} model: {name} ({direction})")
            except MetricsError as e:
                raise DataError(f"{where} {key}.{score}: {e}") from None
            out += _img(fig)
    return out or "<p>No score matrix recorded.</p>"


def _stream_metrics(data: dict) -> str:
    """Continual metrics (FoMo A_KA/A_ZS, forgetting, GEM BWT/FWT) of the trunk and merged models side by side."""
    models = [(label, data.get(key) or {}) for label, key in (("trunk", "metrics"), ("merged", "merged_metrics"))]
    cols = [(label, score, m[score]) for label, m in models for score in SCORES if score in m]
    if not cols:
        return "<p>No continual metrics recorded.</p>"
    head = "".join(f"<th>{label} {SCORES[score][0]}</th>" for label, score, _ in cols)
    body = "".join(f"<tr><td>{text}</td>" + "".join(f"<td>{_num(m.get(key), SCORES[score][2])}</td>" for _, score, m in cols)
                   + "</tr>" for key, text in STREAM_METRICS)
    return (f"<table><tr><th>metric</th>{head}</tr>{body}</table><p>A_KA, A_ZS and the geometric mean are plain means "
            "of the score (for perplexity lower is better); n/a marks a metric undefined for this stream (one task: "
            "no forgetting, BWT or FWT).</p>")


def _fit_law(fit: dict, where: str) -> PowerLaw:
    """A :class:`PowerLaw` from its ``to_dict()``; only A, alpha and E are needed to draw it."""
    return PowerLaw(A=float(_need(fit, "A", where)), alpha=float(_need(fit, "alpha", where)), E=float(_need(fit, "E", where)),
                    r2=float(fit.get("r2", math.nan)), n_points=int(fit.get("n_points", 0)),
                    t_min=float(fit.get("t_min", math.nan)), t_max=float(fit.get("t_max", math.nan)))


def _general_fits(plan: dict, where: str) -> dict[float, PowerLaw]:
    """Fitted general-loss law per pilot ratio, from ``general_fits`` (aligned with ``grid``) or ``fits`` (CMRPlan.to_dict)."""
    grid = [float(r) for r in _need(plan, "grid", where)]
    if "general_fits" in plan:
        fits = plan["general_fits"]
        if len(fits) != len(grid):
            raise DataError(f"{where}: {len(fits)} general_fits for a grid of {len(grid)} ratios")
        return {r: _fit_law(f, f"{where} general_fits[{i}]") for i, (r, f) in enumerate(zip(grid, fits))}
    fits = _need(plan, "fits", where)
    return {float(k): _fit_law(_need(f, "general", f"{where} fits.{k}"), f"{where} fits.{k}.general") for k, f in fits.items()}


def _cmr_figure(task: str, plan: dict, where: str) -> str:
    """Pilot points and fitted general-loss curves per ratio vs tokens, the tolerance L_G(0) + eps, the chosen ratio."""
    laws = _general_fits(plan, where)
    pilots = {float(k): np.asarray(v, dtype=float).reshape(-1, 3) for k, v in (plan.get("pilots") or {}).items()}
    chosen, budget = float(_need(plan, "ratio", where)), float(_need(plan, "budget_tokens", where))
    base, eps = float(_need(plan, "baseline_general_loss", where)), float(_need(plan, "epsilon", where))
    lows = [x for x in [*(law.t_min for law in laws.values()), *(p[:, 0].min() for p in pilots.values() if len(p))]
            if math.isfinite(x) and x > 0]
    t = np.geomspace(min(lows) if lows else budget / 100, budget, 200)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, (r, law) in enumerate(sorted(laws.items())):
        best = abs(r - chosen) < 1e-9
        color = f"C{i % 10}"
        ax.plot(t, law(t), color=color, lw=2.8 if best else 1.0, label=f"R={r:g}" + (" (chosen)" if best else ""))
        if r in pilots and len(pilots[r]):
            ax.plot(pilots[r][:, 0], pilots[r][:, 1], "o", color=color, ms=6 if best else 3)
    ax.axhline(base, color="grey", ls=":", lw=0.8, label="L_G(0) before the task")
    if math.isfinite(eps):
        ax.axhline(base + eps, color="#cf222e", ls="--", lw=1.0, label="tolerance L_G(0) + epsilon")
    ax.axvline(budget, color="black", ls=":", lw=0.8, label="task budget")
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("general loss")
    ax.set_title(f"{task}: CMR pilots (points) and fitted general loss (lines)")
    ax.legend(fontsize=7)
    return _img(fig)


def _replay_line(task: str, ratio: Any, plan: dict | None) -> str:
    if plan is None:
        return f"<tr><td>{html.escape(task)}</td><td>{_num(ratio, '.3g')}</td><td>fixed (from params)</td></tr>"
    eps = float(plan.get("epsilon", math.nan))
    how = (f"CMR plan: domain share R={float(plan['ratio']):g} "
           + ("meets" if plan.get("feasible") else "<b>no ratio met</b>")
           + f" the tolerance L_G(0) + epsilon = {float(plan['baseline_general_loss']):.4f} + {eps:g} "
           f"at {float(plan['budget_tokens']):.3g} tokens" + (" (extrapolated beyond the pilots)" if plan.get("extrapolated") else ""))
    notes = "".join(f"; {html.escape(n)}" for n in plan.get("notes", []))
    return f"<tr><td>{html.escape(task)}</td><td>{_num(ratio, '.3g')}</td><td>{how}{notes}</td></tr>"


def _stream_replay(data: dict, where: str) -> str:
    """Replay ratio per task, how it was chosen, and the CMR fit figure of each planned task."""
    replay = data.get("replay")
    if not replay:
        return "<p>No replay record.</p>"
    ratios, plans = replay.get("ratios", {}), replay.get("plans") or {}
    rows = "".join(_replay_line(t, ratios.get(t), plans.get(t)) for t in _need(data, "tasks", where))
    figures = "".join(_cmr_figure(t, p, f"{where} replay.plans.{t}") for t, p in plans.items())
    return (f"<p>Replay mode: <b>{html.escape(str(replay.get('mode', '?')))}</b>. In a CMR plan R is the share of domain "
            "data in the mixture (Gu et al. 2024, arXiv 2407.17467): the largest pilot ratio whose fitted general loss "
            "stays within the tolerance at the budget.</p><table><tr><th>task</th><th>ratio (replay.ratios)</th><th>how chosen</th></tr>"
            + rows + "</table>" + figures)


def _ppl_rise_sentence(rise: dict | None) -> str:
    """Relative rise of base-data perplexity from zero-shot to the end of the stream, with vs without replay."""
    if not rise or rise.get("with_replay") is None:
        return "<p>No base-data perplexity rise recorded.</p>"

    def phrase(x: float) -> str:
        return f"{'rose' if x > 0 else 'fell'} by {abs(x):.1%}" if x else "did not change"

    w, wo = rise["with_replay"], rise.get("without_replay")
    text = f"Base-data perplexity {phrase(w)} from zero-shot to the end of the stream with replay"
    if wo is None:
        return f"<p>{text}; there is no run without replay to compare with.</p>"
    verdict = "replay kept it lower" if w < wo else "replay did not keep it lower" if w > wo else "the same either way"
    return f"<p>{text}, and {phrase(wo)} without replay: {verdict}.</p>"


def _stability_gap(path: Path, tasks: list[str]) -> str:
    """General and domain loss vs step early in each task: the dip (a loss spike) and the recovery."""
    if not path.exists():
        return f"<p>No stability-gap curves ({path} is missing).</p>"
    df = pd.read_csv(path)
    missing = {"task", "step", "general_loss", "domain_loss"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)} (expected task,step,tokens,general_loss,domain_loss)")
    if df.empty:
        return f"<p>No stability-gap curves ({path} has no rows).</p>"
    names = [t for t in tasks if t in set(df["task"])] + [t for t in df["task"].unique() if t not in tasks]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
    rows = ""
    for ax, name in zip(axes[0], names):
        g = df[df["task"] == name].sort_values("step")
        ax.plot(g["step"], g["general_loss"], "o-", ms=3, label="general")
        ax.plot(g["step"], g["domain_loss"], "o-", ms=3, label="domain")
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel("step in the task")
        ax.legend(fontsize=7)
        gl = g["general_loss"].to_numpy()
        peak = int(gl.argmax())
        rows += (f"<tr><td>{html.escape(str(name))}</td><td>{gl[0]:.4f}</td><td>{gl[peak]:.4f} (step {int(g['step'].iloc[peak])})</td>"
                 f"<td>{gl[-1]:.4f}</td><td>{g['domain_loss'].iloc[0]:.4f}</td><td>{g['domain_loss'].iloc[-1]:.4f}</td></tr>")
    axes[0][0].set_ylabel("loss")
    return (_img(fig) + "<table><tr><th>task</th><th>general loss at start</th><th>peak</th><th>last</th>"
            "<th>domain loss at start</th><th>last</th></tr>" + rows + "</table>")


def _stream(metrics: Path | None = None, gap: Path | None = None) -> str:
    """The continual stream: score matrices, forgetting metrics, replay choice, perplexity rise, stability gap."""
    metrics = metrics or P.METRICS / "stream.json"
    gap = gap or P.PLOTS / "stream" / "gap.csv"
    if not metrics.exists():
        return _not_run("Continual stream", "stream", "stream")
    data, where = json.loads(metrics.read_text()), str(metrics)
    if "skipped" in data:  # the stage ran with stream.enabled false or no stream section (e.g. profiles/cyber-dap.yaml)
        return _not_run("Continual stream", "stream", "stream") + f"<p>({html.escape(str(data['skipped']))})</p>"
    tasks = _need(data, "tasks", where)
    merge, strategy = data.get("merge") or {}, data.get("strategy") or {}
    setup = (f"<p>Tasks in training order: {' &rarr; '.join(html.escape(str(t)) for t in tasks)} "
             f"(ordering {html.escape(str(data.get('ordering', '?')))}, schedule {html.escape(str(data.get('schedule', '?')))}); "
             f"merge {html.escape(str(merge.get('method', 'none')))}"
             + (f" with weight {merge['weight']:g}" if merge.get("weight") is not None else "")
             + f"; data strategy {html.escape(str(strategy.get('kind', 'none')))}.</p>")
    return (setup + _stream_heatmaps(data, where) + "<h3>Forgetting and accumulation</h3>" + _stream_metrics(data)
            + "<h3>Replay</h3>" + _stream_replay(data, where) + _ppl_rise_sentence(data.get("general_ppl_rise"))
            + "<h3>Stability gap</h3>" + _stability_gap(gap, [str(t) for t in tasks]))


def _distill(ev: dict) -> str:
    d = ev.get("distill") or {}
    if not d:
        return "<p>No distillation summary (the teacher is not one of the evaluated models).</p>"
    t, s = ev["models"][d["teacher"]], ev["models"][d["student"]]

    def row(name: str, m: dict) -> str:
        return (f"<tr><td>{html.escape(name)}</td><td>{m['parameters']:,}</td><td>{m['tokens_per_s']:,.0f}</td>"
                f"<td>{m['general']['acc']:.3f}</td><td>{m['cyber']['acc']:.3f}</td>"
                f"<td>{m['general']['ppl']:.1f}</td><td>{m['cyber']['ppl']:.1f}</td></tr>")

    return ("<table><tr><th>model</th><th>parameters</th><th>tokens/s (forward)</th><th>general acc</th><th>cyber acc</th>"
            "<th>general ppl</th><th>cyber ppl</th></tr>" + row(f"teacher ({d['teacher']})", t) + row("student", s) + "</table>"
            f"<p>The student has {d['size_ratio']:.2f}x the teacher's parameters and runs {d['speedup']:.2f}x as fast; "
            f"it keeps {d['general_acc_fraction']:.0%} of the teacher's above-chance general accuracy and "
            f"{d['cyber_acc_fraction']:.0%} of its cyber accuracy; held-out perplexity ratio teacher/student "
            f"{d['general_ppl_ratio']:.2f} (general), {d['cyber_ppl_ratio']:.2f} (cyber).</p>")


def _accuracy(ev: dict) -> str:
    models = list(ev.get("models", {}))
    if not models:
        return "<p>No evaluation.</p>"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, title in ((axes[0], "acc", "multiple-choice accuracy"), (axes[1], "ppl", "held-out perplexity")):
        for j, domain in enumerate(("general", "cyber")):
            vals = [ev["models"][m][domain][key] for m in models]
            ax.bar([i + 0.4 * j for i in range(len(models))], vals, width=0.4, label=domain)
        ax.set_xticks([i + 0.2 for i in range(len(models))], [m.replace("continual/", "") for m in models], rotation=30, ha="right")
        ax.set_title(title)
        if key == "acc":
            ax.axhline(0.25, color="grey", ls=":", label="chance")
        else:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    slices = sorted({s for m in models for s in ev["models"][m]["slices"]})
    grid = pd.DataFrame([[ev["models"][m]["slices"].get(s, {}).get("acc", float("nan")) for s in slices] for m in models],
                        index=models, columns=slices)
    fig2, ax2 = plt.subplots(figsize=(8, 0.45 * len(models) + 1))
    im = ax2.imshow(grid.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax2.set_xticks(range(len(slices)), slices, rotation=30, ha="right")
    ax2.set_yticks(range(len(models)), models)
    for i in range(len(models)):
        for k in range(len(slices)):
            ax2.text(k, i, f"{grid.values[i, k]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig2.colorbar(im, ax=ax2, label="accuracy")
    ax2.set_title("accuracy per model and slice (questions about facts new in that slice)")
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{ev['models'][m][d][k]:.3f}</td>" for d in ("general", "cyber") for k in ("acc", "acc_norm", "ppl")) + "</tr>"
        for m in models)
    table = ("<table><tr><th>model</th><th>general acc</th><th>acc_norm</th><th>ppl</th><th>cyber acc</th><th>acc_norm</th><th>ppl</th></tr>"
             + rows + "</table>")
    return _img(fig) + table + _img(fig2)


def _tests(ev: dict) -> str:
    rows = ""
    for d, t in ev.get("tests", {}).items():
        rows += (f"<tr><td>{d}</td><td>{t['n']}</td><td>{t['acc_pretrain']:.3f}</td><td>{t['acc_final']:.3f}</td>"
                 f"<td>{t['gained']} / {t['lost']}</td><td>{t['p_final_vs_pretrain']:.2e}</td><td>{t['p_final_vs_chance']:.2e}</td></tr>")
    return ("<table><tr><th>domain</th><th>questions</th><th>pretrain acc</th><th>final acc</th><th>gained / lost</th>"
            "<th>p (final &gt; pretrain, exact McNemar)</th><th>p (final &gt; chance 0.25, binomial)</th></tr>" + rows + "</table>")


def _registry(reg: dict) -> str:
    if not reg:
        return "<p>The model has not been registered yet (run the <code>register</code> stage).</p>"
    verdict = "promoted to <b>champion</b>" if reg["promoted"] else "<b>not promoted</b>; champion unchanged"
    items = "".join(f"<li>{html.escape(r)}</li>" for r in reg["reasons"])
    return f"<p>{html.escape(reg['model_name'])} version {reg['version']} is <b>challenger</b>, {verdict}.</p><ul>{items}</ul>"


def build_report(params: Params, out: Path) -> Path:
    ev = _load(P.METRICS / "eval.json")
    ledgers = {s: _load(P.METRICS / f"{s}.json") for s in ("ingest", "filter", "dedup")}
    quality = _load(P.METRICS / "data_quality.json")
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>FluxForge run report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f3f3f3}}td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>FluxForge run report</h1>
<p>Final model: <code>{html.escape(ev.get('final', '?'))}</code>; {ev.get('questions', 0)} multiple-choice questions;
experiment <code>{html.escape(params.tracking.experiment)}</code>.</p>
<h2>1. Data funnel</h2>{_funnel(_load(P.METRICS / 'funnel.json'), ledgers)}
<h3>Filters and dedup against the planted labels</h3>{_quality(quality)}
<h2>2. Training</h2>{_curves(params)}
<h3>Capability during training</h3>{_capability(params)}
<h2>3. Technique studies</h2>{_study()}
<h2>4. Evaluation</h2>{_accuracy(ev)}
<h3>Is the cyber update's gain real?</h3>{_tests(ev)}
<h3>Distillation: quality against size</h3>{_distill(ev)}
<h2>5. Continual stream</h2>{_stream()}
<h2>6. Registry decision</h2>{_registry(_load(P.METRICS / 'register.json'))}
</body></html>"""
    with atomic_file(out) as fh:
        fh.write(body)
    return out
