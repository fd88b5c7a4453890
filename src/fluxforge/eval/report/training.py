"""Section 2 of the report: training loss of each model and capability probes during training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from markupsafe import Markup

from fluxforge.eval.report.figures import capability_figure, png, training_curves_figure
from fluxforge.eval.report.render import read_json, render


def chain(tasks: list[str]) -> list[str]:
    """The training stages in DAG order, as their plot files name them: pretraining, then each continual task."""
    return ["pretrain", *[f"continual_{t}" for t in tasks]]


def curves(plots: Path, tasks: list[str], train_metrics: Path | None = None) -> Markup:
    """Training loss of each model (``plots``/<stage>.csv), continual tasks placed after the model they start from,
    and each model's throughput with the MFU and the peak it was measured against (``train_metrics``/<stage>.json)."""
    files = {f.stem: f for f in plots.glob("*.csv")}
    names = [*chain(tasks), "student"]
    rows = [{"model": n.replace("continual_", "continual/"), **read_json(train_metrics / f"{n}.json")}
            for n in names if train_metrics and (train_metrics / f"{n}.json").exists()]
    if not files:
        return render("curves.html.j2", figure=None, speed=rows)
    frames = [(name.replace("continual_", "continual/"), pd.read_csv(files[name])) for name in chain(tasks) if name in files]
    student = pd.read_csv(files["student"]) if "student" in files else None
    return render("curves.html.j2", figure=png(training_curves_figure(frames, student)), speed=rows)


def capability(plots: Path, tasks: list[str]) -> Markup:
    """Probe accuracy and perplexity per domain (``plots``/<stage>.csv) through pretraining and each task, end to end."""
    frames = {n: pd.read_csv(plots / f"{n}.csv") for n in chain(tasks) if (plots / f"{n}.csv").exists()}
    frames = {n: f for n, f in frames.items() if len(f.columns) > 1}
    return render("capability.html.j2", figure=png(capability_figure(frames)) if frames else None)
