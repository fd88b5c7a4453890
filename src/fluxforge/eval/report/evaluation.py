"""Section 4 of the report: accuracy and perplexity of every model, the significance tests, distillation."""

from __future__ import annotations

from markupsafe import Markup

from fluxforge.eval.report.figures import accuracy_figure, png, slice_accuracy_figure
from fluxforge.eval.report.render import render


def accuracy(ev: dict) -> Markup:
    """Accuracy and perplexity per model and domain (figure and table), and accuracy per model and slice."""
    models = ev.get("models", {})
    if not models:
        return render("accuracy.html.j2", models=None)
    return render("accuracy.html.j2", models=models, figure=png(accuracy_figure(models)),
                  slices=png(slice_accuracy_figure(models)))


def tests(ev: dict) -> Markup:
    """Is the cyber update's gain real? Exact McNemar against the pretrained model, binomial against chance."""
    return render("tests.html.j2", tests=ev.get("tests", {}))


def distill(ev: dict) -> Markup:
    """The student against its teacher: size, speed, and how much of the teacher's quality it keeps."""
    d = ev.get("distill") or {}
    if not d:
        return render("distill.html.j2", d=None)
    rows = [(f"teacher ({d['teacher']})", ev["models"][d["teacher"]]), ("student", ev["models"][d["student"]])]
    return render("distill.html.j2", d=d, rows=rows)
