"""Section 1 of the report: the data funnel, rejections by reason, and filters scored against the planted labels."""

from __future__ import annotations

from markupsafe import Markup

from fluxforge.eval.report.figures import funnel_figure, png
from fluxforge.eval.report.render import render


def funnel(counts: dict[str, int], ledgers: dict[str, dict]) -> Markup:
    """Documents left after each data stage (figure), and every rejection reason of each stage with its count."""
    rejected = [(stage, reason, n) for stage, ledger in ledgers.items() for reason, n in ledger.get("rejected_by_reason", {}).items()]
    return render("funnel.html.j2", figure=png(funnel_figure(counts)) if counts else None, rejected=rejected)


def quality(scores: dict, alone: dict[str, dict]) -> Markup:
    """Recall per planted defect, precision per filter, who caught what (filter x defect), and each filter alone."""
    confusion = scores.get("confusion.filter", {})
    defects = sorted({d for row in confusion.values() for d in row})
    return render("quality.html.j2", scores=scores, defects=defects,
                  confusion=[(f, [row.get(d, "") for d in defects]) for f, row in sorted(confusion.items())],
                  alone=[(f, r["rejected"], r.get("precision", float("nan")),
                          ", ".join(f"{k.removeprefix('recall.')} {v:.3f}" for k, v in r.items() if k.startswith("recall.")))
                         for f, r in alone.items()])
