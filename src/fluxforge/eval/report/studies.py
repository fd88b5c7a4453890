"""Section 3 of the report: each technique study against the plain-pretraining baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from fluxforge import paths as P
from fluxforge.errors import DataError
from fluxforge.eval.report.figures import png, study_curves_figure
from fluxforge.eval.report.render import need, not_run, render, signed

# One line per study: what it changes against the baseline and what is held equal (the study stage's docstring).
STUDY_CHANGES = {
    "baseline": "plain pretraining: shuffled windows, cosine LR to min_lr_ratio, from scratch",
    "meco": "MeCo: URL conditioning + a 10% plain cooldown, at equal tokens (Gao et al. 2025)",
    "curriculum": "quality-ascending data + moderate LR decay + EMA of the last checkpoints vs shuffle + cosine, "
                  "at equal tokens (Luo et al. 2025)",
    "growth": "G_stack: a model of num_layers/g layers grown by stacking, at equal training FLOPs (Du et al. 2024)",
}
STUDY_NAMES = {"meco": "MeCo", "curriculum": "The curriculum", "growth": "G_stack growth"}


def study_sentence(name: str, v: dict, c: dict, base: dict) -> str:
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


def study_row(name: str, v: dict, c: dict | None, where: str, where_c: str) -> list:
    """The cells of a table row; the baseline (``c`` is None) has no change columns and ratios of 1."""
    loss, acc = need(v, "heldout_loss", where), need(v, "acc", where)
    if c is None:
        changes = ("", "", "1.00", "1.00")
    else:
        changes = (signed(need(c, "heldout_loss_change", where_c), True, "+.4f"),
                   signed(need(c, "acc_change", where_c), False, "+.3f"),
                   f"{need(c, 'compute_ratio', where_c):.2f}", f"{need(c, 'tokens_ratio', where_c):.2f}")
    return [name, STUDY_CHANGES.get(name, "not described"), f"{loss:.4f}", changes[0], f"{acc:.3f}", changes[1],
            changes[2], changes[3], str(v.get("steps", ""))]


def study_curves(path: Path) -> str | None:
    """The loss curves figure (a data URI), or None when the stage wrote no curves file."""
    if not path.exists():
        return None
    df = pd.read_csv(path)
    missing = {"variant", "tokens", "loss"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)} (expected variant,tokens,loss)")
    return png(study_curves_figure(df))


def study(metrics: Path | None = None, curves: Path | None = None) -> Markup:
    """Each technique against the plain-pretraining baseline: table, loss curves, one sentence per study."""
    metrics = metrics or P.METRICS / "study.json"
    curves = curves or P.PLOTS / "study" / "curves.csv"
    if not metrics.exists():
        return not_run("Technique studies", "study", "study.studies")
    data = json.loads(metrics.read_text())
    variants, vs = need(data, "variants", str(metrics)), data.get("vs_baseline", {})
    base = need(variants, "baseline", f"{metrics} variants")
    rows, sentences = [], []
    for name, v in variants.items():
        c = vs.get(name)
        if name != "baseline" and c is None:
            raise DataError(f"{metrics}: variant '{name}' has no entry under vs_baseline")
        rows.append(study_row(name, v, c, f"{metrics} variants.{name}", f"{metrics} vs_baseline.{name}"))
        if c:
            sentences.append(study_sentence(name, v, c, base))
    return render("study.html.j2", rows=rows, sentences=sentences, figure=study_curves(curves), curves=curves)
