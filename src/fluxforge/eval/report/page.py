"""The whole report: every section in order, on one page (reports/report.html)."""

from __future__ import annotations

from pathlib import Path

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.eval.reference import reference_file
from fluxforge.eval.report.evaluation import accuracy, distill, tests
from fluxforge.eval.report.funnel import funnel, quality
from fluxforge.eval.report.images import images
from fluxforge.eval.report.methods import update_methods
from fluxforge.eval.report.registry import registry
from fluxforge.eval.report.render import read_json, render
from fluxforge.eval.report.stream import stream
from fluxforge.eval.report.studies import study
from fluxforge.eval.report.training import capability, curves
from fluxforge.io import atomic_file


def build_report(params: Params, out: Path) -> Path:
    """Write the report of the run in the current directory's metrics/ and plots/ to ``out``; return ``out``."""
    ev = read_json(P.METRICS / "eval.json")
    tasks = list(params.continual.tasks)
    sections = {
        "funnel": funnel(read_json(P.METRICS / "funnel.json"), {s: read_json(P.METRICS / f"{s}.json") for s in ("ingest", "filter", "dedup")}),
        "quality": quality(read_json(P.METRICS / "data_quality.json"), read_json(P.METRICS / "filter_quality.json")),
        "curves": curves(P.PLOTS / "train", tasks, P.METRICS / "train"),
        "capability": capability(P.PLOTS / "capability", tasks),
        "study": study(P.METRICS / "study.json", P.PLOTS / "study" / "curves.csv"),
        "accuracy": accuracy(ev), "tests": tests(ev), "distill": distill(ev),
        "stream": stream(P.METRICS / "stream.json", P.PLOTS / "stream" / "gap.csv",
                         reference_file(params.registry.gate.reference)),
        "update_methods": update_methods(),
        "registry": registry(read_json(P.METRICS / "register.json")),
        "images": images(P.METRICS / "mm_eval.json", P.METRICS / "mm_register.json", P.REPORTS / "mm",
                         P.METRICS / "mm_stream.json"),
    }
    page = render("report.html.j2", final=ev.get("final", "?"), questions=ev.get("questions", 0),
                  experiment=params.tracking.experiment, **sections)
    with atomic_file(out) as fh:
        fh.write(page)
    return out
