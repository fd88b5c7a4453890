"""The report's figures: matplotlib drawings of numbers the sections have read and checked, embedded as PNG.

Each function draws one figure from plain data (frames, arrays, dicts) and returns it; :func:`png` turns it
into a data URI, so the page carries its images and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fluxforge.errors import DataError  # noqa: E402

CHANCE = 0.25  # four options per question
DOMAIN_COLORS = {"general": "#4c72b0", "cyber": "#dd8452"}


def png(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def funnel_figure(funnel: Mapping[str, int]) -> Figure:
    """Documents left after each data stage, first stage on top."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh(list(funnel)[::-1], list(funnel.values())[::-1], color="#4c72b0")
    for i, v in enumerate(list(funnel.values())[::-1]):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel("documents")
    return fig


def training_curves_figure(chain: Sequence[tuple[str, pd.DataFrame]], student: pd.DataFrame | None) -> Figure:
    """Training loss of each model of the chain placed end to end; the student on its own steps."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    offset = 0
    for label, df in chain:
        ax.plot(df["step"] + offset, df["loss"], label=label)
        offset += int(df["step"].max())
    if student is not None:
        ax.plot(student["step"], student["loss"], "--", label="student (KD loss, own steps)")
    ax.set_xlabel("step (continual tasks placed end to end)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def capability_figure(frames: Mapping[str, pd.DataFrame]) -> Figure:
    """Probe accuracy and perplexity per domain, the stages end to end, each stage's span marked and named."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    offset = 0
    for i, (name, df) in enumerate(frames.items()):
        for d, c in DOMAIN_COLORS.items():
            for ax, key in ((axes[0], f"{d}_acc"), (axes[1], f"{d}_ppl")):
                if key in df:
                    ax.plot(df["step"] + offset, df[key], "o-", ms=3, color=c, label=d if i == 0 else None)
        end = offset + int(df["step"].max())
        for ax in axes:
            ax.axvline(end, color="grey", lw=0.6, ls=":")
            ax.text((offset + end) / 2, 1.01, name.replace("continual_", ""), transform=ax.get_xaxis_transform(),
                    ha="center", fontsize=7)
        offset = end
    axes[0].axhline(CHANCE, color="grey", ls="--", lw=0.8)
    axes[0].set_ylabel("probe accuracy")
    axes[1].set_ylabel("probe held-out perplexity")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step (stages end to end)")
        ax.legend(fontsize=8)
    return fig


def study_curves_figure(curves: pd.DataFrame) -> Figure:
    """Training loss against tokens per study variant (columns variant, tokens, loss); the baseline dashed."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, g in curves.groupby("variant", sort=False):
        ax.plot(g["tokens"], g["loss"], "--" if name == "baseline" else "-", label=str(name))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("training loss per variant")
    ax.legend(fontsize=8)
    return fig


def accuracy_figure(models: Mapping[str, dict]) -> Figure:
    """Multiple-choice accuracy and held-out perplexity per model, the two domains side by side."""
    names = list(models)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, title in ((axes[0], "acc", "multiple-choice accuracy"), (axes[1], "ppl", "held-out perplexity")):
        for j, domain in enumerate(("general", "cyber")):
            vals = [models[m][domain][key] for m in names]
            ax.bar([i + 0.4 * j for i in range(len(names))], vals, width=0.4, label=domain)
        ax.set_xticks([i + 0.2 for i in range(len(names))], [m.replace("continual/", "") for m in names], rotation=30, ha="right")
        ax.set_title(title)
        if key == "acc":
            ax.axhline(CHANCE, color="grey", ls=":", label="chance")
        else:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    return fig


def slice_accuracy_figure(models: Mapping[str, dict]) -> Figure:
    """Accuracy per model (rows) and slice (columns): does each update learn the facts new in its slice?"""
    names = list(models)
    slices = sorted({s for m in names for s in models[m]["slices"]})
    grid = pd.DataFrame([[models[m]["slices"].get(s, {}).get("acc", float("nan")) for s in slices] for m in names],
                        index=names, columns=slices)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1))
    im = ax.imshow(grid.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(slices)), slices, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for k in range(len(slices)):
            ax.text(k, i, f"{grid.values[i, k]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title("accuracy per model and slice (questions about facts new in that slice)")
    return fig


def heatmap_figure(matrix: Any, row_labels: Sequence[str], col_labels: Sequence[str], title: str) -> Figure:
    """A matplotlib Figure of the matrix with each cell's value written in it (Agg canvas, no pyplot global state).

    The matrix must be rectangular, finite and match the labels: a :class:`DataError` says what is wrong.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    try:
        m = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("the matrix is not a rectangular table of numbers (ragged rows or non-numbers)") from None
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        shape = "x".join(map(str, m.shape))
        raise DataError(f"matrix is {shape} but {len(row_labels)} row labels and {len(col_labels)} column labels were given")
    if not np.isfinite(m).all():
        raise DataError(f"the matrix has NaN/infinite cells at (row, col) {[tuple(map(int, c)) for c in np.argwhere(~np.isfinite(m))[:5]]}")
    fig = Figure(figsize=(1.2 + 0.9 * m.shape[1], 1.0 + 0.6 * m.shape[0]), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set_xticks(range(m.shape[1]), labels=list(col_labels), rotation=45, ha="right")
    ax.set_yticks(range(m.shape[0]), labels=list(row_labels))
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after training")
    ax.set_title(title)
    mid = (np.nanmax(m) + np.nanmin(m)) / 2
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="black" if v > mid else "white", fontsize=8)
    fig.colorbar(im, ax=ax)
    return fig


def cmr_figure(task: str, tokens: np.ndarray, curves: Mapping[float, np.ndarray], pilots: Mapping[float, np.ndarray],
               chosen: float, budget: float, baseline: float, epsilon: float) -> Figure:
    """Fitted general loss per pilot ratio over ``tokens`` (the chosen ratio bold), pilot points (tokens, loss, ...),
    the loss before the task, the tolerance ``baseline + epsilon`` and the task budget."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, (r, curve) in enumerate(sorted(curves.items())):
        best = abs(r - chosen) < 1e-9
        color = f"C{i % 10}"
        ax.plot(tokens, curve, color=color, lw=2.8 if best else 1.0, label=f"R={r:g}" + (" (chosen)" if best else ""))
        if r in pilots and len(pilots[r]):
            ax.plot(pilots[r][:, 0], pilots[r][:, 1], "o", color=color, ms=6 if best else 3)
    ax.axhline(baseline, color="grey", ls=":", lw=0.8, label="L_G(0) before the task")
    if np.isfinite(epsilon):
        ax.axhline(baseline + epsilon, color="#cf222e", ls="--", lw=1.0, label="tolerance L_G(0) + epsilon")
    ax.axvline(budget, color="black", ls=":", lw=0.8, label="task budget")
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("general loss")
    ax.set_title(f"{task}: CMR pilots (points) and fitted general loss (lines)")
    ax.legend(fontsize=7)
    return fig


def stability_gap_figure(gap: pd.DataFrame, tasks: Sequence[str]) -> Figure:
    """General and domain loss against the step in each task, one panel per task."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.0), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        g = gap[gap["task"] == name].sort_values("step")
        ax.plot(g["step"], g["general_loss"], "o-", ms=3, label="general")
        ax.plot(g["step"], g["domain_loss"], "o-", ms=3, label="domain")
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel("step in the task")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    return fig


def reconstruction_figure(rows: Mapping[str, np.ndarray]) -> Figure:
    """MAE's figure: one row per entry (original / visible patches / reconstruction), uint8 ``(N, S, S, 3)`` each."""
    n = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.2 * len(rows)), squeeze=False)
    for i, (label, images) in enumerate(rows.items()):
        for j in range(n):
            axes[i, j].imshow(images[j], interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=8)
    return fig


def confusion_figure(counts: Sequence[Sequence[int]], rows: Sequence[str], columns: Sequence[str], title: str) -> Figure:
    """Counts of (true, predicted) as an image: true concepts down, every predictable concept across."""
    m = np.asarray(counts, dtype=float)
    if m.shape != (len(rows), len(columns)):
        raise DataError(f"confusion matrix is {m.shape} but {len(rows)} rows and {len(columns)} columns are named")
    fig, ax = plt.subplots(figsize=(2 + 0.28 * len(columns), 1.5 + 0.28 * len(rows)))
    im = ax.imshow(m, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=7)
    ax.set_xlabel("predicted concept")
    ax.set_ylabel("true concept")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="images")
    return fig


def tradeoff_figure(points: Mapping[str, tuple[tuple[float, float], tuple[float, float]]], zero_shot: float | None) -> Figure:
    """FoMo-in-Flux's accumulation/retention plane: A_KA against A_ZS per method, each with its 95% interval bars.

    ``points``: {method: ((A_KA mean, half-width), (A_ZS mean, half-width))}; ``zero_shot``: the starting model's
    A_ZS (a dashed line: what retention would be with no update at all)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for method, ((ka, ka_h), (zs, zs_h)) in points.items():
        ax.errorbar(ka, zs, xerr=ka_h, yerr=zs_h, fmt="o", capsize=3, label=method)
    if zero_shot is not None:
        ax.axhline(zero_shot, ls="--", color="#888", lw=1, label="zero-shot A_ZS")
    ax.set_xlabel("A_KA: knowledge accumulated (higher is better)")
    ax.set_ylabel("A_ZS: base-data retention (higher is better)")
    ax.legend(fontsize=7)
    return fig
