"""One HTML page a person reads after a run: data funnel, loss curves, accuracy, significance, registry decision."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fluxforge import paths as P  # noqa: E402
from fluxforge.config import Params  # noqa: E402
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
<h2>3. Evaluation</h2>{_accuracy(ev)}
<h3>Is the cyber update's gain real?</h3>{_tests(ev)}
<h3>Distillation: quality against size</h3>{_distill(ev)}
<h2>4. Registry decision</h2>{_registry(_load(P.METRICS / 'register.json'))}
</body></html>"""
    with atomic_file(out) as fh:
        fh.write(body)
    return out
