"""Section 5's comparison of update methods at equal compute, from the benchmark (benchmarks/update_methods.py).

A run trains its stream with one ``stream.method``; which method to pick is a question over several methods and
seeds, which is the benchmark's to answer (about an hour of CPU at full budget, so not a DAG stage). Its committed
results (benchmarks/results/update_methods.json) are shown next to the run's own stream, labelled with the command,
machine and date that produced them. Like the reference intervals (benchmarks/evidence.json) the file is read
without being a DVC dependency: a copy of the pipeline without benchmarks/ still reports, and says the comparison is
missing. A file that cannot be read is said in the section, naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from markupsafe import Markup

from fluxforge.eval.report.figures import png, tradeoff_figure
from fluxforge.eval.report.render import render
from fluxforge.eval.update_methods import METRICS, RESULTS, compare


def update_methods(path: Path = RESULTS) -> Markup:
    """The table (mean ± 95% half-width over seeds), the A_KA/A_ZS plane, and each method's verdict against finetune."""
    if not path.exists():
        return render("update_methods.html.j2", missing=f"{path} is missing: run benchmarks/update_methods.py "
                                                          "(it writes the file and BENCHMARKS.md)")
    try:
        record = json.loads(path.read_text())
        runs = record["runs"]
        cmp = compare(runs, list(dict.fromkeys(r["method"] for r in runs)))
        zero_shot = runs[0].get("zero_shot", {}).get("a_zs")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as err:
        return render("update_methods.html.j2", missing=f"{path} cannot be read ({type(err).__name__}: {err})")
    rows = [(r.method, ", ".join(f"{t} {n}" for t, n in r.steps.items()), f"{r.memory_multiplier:.2f}",
             *(f"{mu:.3f} ± {h:.3f}" for mu, h in r.cells.values()), f"{r.ppl_rise[0]:+.1%} ± {r.ppl_rise[1]:.1%}", r.seeds)
            for r in cmp.rows]
    figure = png(tradeoff_figure({r.method: (r.cells["a_ka"], r.cells["a_zs"]) for r in cmp.rows}, zero_shot))
    return render("update_methods.html.j2", missing=None, command=record.get("command", "?"), date=record.get("date", "?"),
                  machine=record.get("machine", "?"), labels=[label for _, label, _ in METRICS], rows=rows,
                  figure=figure, verdicts=list(cmp.verdicts.values()), path=str(path))
