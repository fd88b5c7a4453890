"""Section 5 of the report: the continual stream (update method and budget, score matrices, forgetting metrics, replay
choice, stability gap).

It reads what the stream stage wrote (metrics/stream.json, plots/stream/gap.csv) and checks it: a missing key
is a :class:`DataError` naming the file and the key, never a silently empty table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure

from fluxforge import paths as P
from fluxforge.errors import DataError
from fluxforge.eval.reference import REFERENCE, against_reference
from fluxforge.eval.report.figures import cmr_figure as draw_cmr
from fluxforge.eval.report.figures import heatmap_figure, png, stability_gap_figure
from fluxforge.eval.report.render import need, not_run, num, render

STREAM_METRICS = (  # (key in ContinualMetrics.to_dict(), label); signs are such that > 0 is what the label says
    ("a_ka", "A_KA: knowledge accumulated over the tasks (final row)"),
    ("a_zs", "A_ZS: retention on the base data"),
    ("geometric_mean", "geometric mean sqrt(A_KA * A_ZS)"),
    ("forgetting", "forgetting (> 0: earlier tasks got worse)"),
    ("bwt", "BWT (> 0: later tasks helped earlier ones)"),
    ("fwt", "FWT (> 0: earlier tasks helped later ones)"),
)
SCORES = {"acc": ("accuracy", "higher is better", ".3f"), "ppl": ("perplexity", "lower is better", ".2f")}


class GeneralLaw(NamedTuple):
    """A fitted ``L(T) = A * T^(-alpha) + E`` as stream.json stores it (``continual.cmr.PowerLaw.to_dict``)."""

    A: float
    alpha: float
    E: float
    t_min: float

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        # PowerLaw's log form, so the drawn curve is the planned one: T^-alpha under- or overflows for T ~ 1e12
        return np.sign(self.A) * np.exp(np.log(abs(self.A) + 1e-300) - self.alpha * np.log(tokens)) + self.E


def heatmaps(data: dict, where: str) -> list[str]:
    """Score matrices (model after each task x evaluation set) of the trunk and, if any, the merged model."""
    rows, cols = need(data, "rows", where), need(data, "columns", where)
    out = []
    for label, key in (("trunk", "matrix"), ("merged", "merged_matrix")):
        for score, m in (data.get(key) or {}).items():
            name, direction, _ = SCORES.get(score, (score, "", ".3g"))
            try:
                fig = heatmap_figure(m, rows, cols, f"{label} model: {name} ({direction})")
            except DataError as e:
                raise DataError(f"{where} {key}.{score}: {e}") from None
            out.append(png(fig))
    return out


def metrics_table(data: dict) -> dict[str, list] | None:
    """Continual metrics (FoMo A_KA/A_ZS, forgetting, GEM BWT/FWT) of the trunk and merged models side by side."""
    models = [(label, data.get(key) or {}) for label, key in (("trunk", "metrics"), ("merged", "merged_metrics"))]
    cols = [(label, score, m[score]) for label, m in models for score in SCORES if score in m]
    if not cols:
        return None
    return {"head": [f"{label} {SCORES[score][0]}" for label, score, _ in cols],
            "rows": [(text, [num(m.get(key), SCORES[score][2]) for _, score, m in cols]) for key, text in STREAM_METRICS]}


def fit_law(fit: dict, where: str) -> GeneralLaw:
    """The law of one fit; only A, alpha and E are needed to draw it (t_min widens the token axis)."""
    return GeneralLaw(A=float(need(fit, "A", where)), alpha=float(need(fit, "alpha", where)), E=float(need(fit, "E", where)),
                      t_min=float(fit.get("t_min", math.nan)))


def general_fits(plan: dict, where: str) -> dict[float, GeneralLaw]:
    """Fitted general-loss law per pilot ratio, from ``general_fits`` (aligned with ``grid``) or ``fits`` (CMRPlan.to_dict)."""
    grid = [float(r) for r in need(plan, "grid", where)]
    if "general_fits" in plan:
        fits = plan["general_fits"]
        if len(fits) != len(grid):
            raise DataError(f"{where}: {len(fits)} general_fits for a grid of {len(grid)} ratios")
        return {r: fit_law(f, f"{where} general_fits[{i}]") for i, (r, f) in enumerate(zip(grid, fits))}
    fits = need(plan, "fits", where)
    return {float(k): fit_law(need(f, "general", f"{where} fits.{k}"), f"{where} fits.{k}.general") for k, f in fits.items()}


def cmr_figure(task: str, plan: dict, where: str) -> Figure:
    """Pilot points and fitted general-loss curves per ratio vs tokens, the tolerance L_G(0) + eps, the chosen ratio."""
    laws = general_fits(plan, where)
    pilots = {float(k): np.asarray(v, dtype=float).reshape(-1, 3) for k, v in (plan.get("pilots") or {}).items()}
    chosen, budget = float(need(plan, "ratio", where)), float(need(plan, "budget_tokens", where))
    base, eps = float(need(plan, "baseline_general_loss", where)), float(need(plan, "epsilon", where))
    lows = [x for x in [*(law.t_min for law in laws.values()), *(p[:, 0].min() for p in pilots.values() if len(p))]
            if math.isfinite(x) and x > 0]
    t = np.geomspace(min(lows) if lows else budget / 100, budget, 200)
    return draw_cmr(task, t, {r: law(t) for r, law in laws.items()}, pilots, chosen, budget, base, eps)


def replay_plan(plan: dict | None, where: str) -> dict[str, Any] | None:
    """How a CMR plan chose a task's ratio, as the numbers the sentence shows; None for a ratio fixed in params."""
    if plan is None:
        return None
    return {"ratio": f"{float(need(plan, 'ratio', where)):g}", "feasible": bool(plan.get("feasible")),
            "baseline": f"{float(need(plan, 'baseline_general_loss', where)):.4f}",
            "epsilon": f"{float(plan.get('epsilon', math.nan)):g}", "budget": f"{float(need(plan, 'budget_tokens', where)):.3g}",
            "extrapolated": bool(plan.get("extrapolated")), "notes": [str(n) for n in plan.get("notes", [])]}


def replay(data: dict, where: str) -> dict[str, Any] | None:
    """Replay ratio per task, how it was chosen, and the CMR fit figure of each planned task."""
    record = data.get("replay")
    if not record:
        return None
    ratios, plans = record.get("ratios", {}), record.get("plans") or {}
    rows = [(t, num(ratios.get(t), ".3g"), replay_plan(plans.get(t), f"{where} replay.plans.{t}")) for t in need(data, "tasks", where)]
    figures = [png(cmr_figure(t, p, f"{where} replay.plans.{t}")) for t, p in plans.items()]
    return {"mode": str(record.get("mode", "?")), "rows": rows, "figures": figures,
            "promise": promise(record.get("promise"), f"{where} replay.promise")}


def promise(record: dict | None, where: str) -> dict[str, Any] | None:
    """The planner's promise per planned task: replay ratio, predicted and realised rise, the bound, held or broken."""
    if not record:
        return None
    rows = []
    for task, p in need(record, "tasks", where).items():
        at = f"{where}.tasks.{task}"
        rows.append((str(task), num(float(need(p, "replay_ratio", at)), "g"), num(float(need(p, "predicted", at)), "+.1%"),
                     num(float(need(p, "realised", at)), "+.1%"), num(float(need(p, "bound", at)), "+.1%"),
                     num(float(p.get("margin", 0.0)), ".4f"), bool(need(p, "held", at))))
    return {"rows": rows, "held": sum(r[-1] for r in rows), "planned": len(rows)}


def method_line(method: dict | None) -> str:
    """``lora (rank 4, alpha 4.0, ...)``: the update method and its settings as the stream recorded them."""
    if not method:
        return "finetune (no method recorded: a stream from before update methods)"
    rest = ", ".join(f"{k} {v}" for k, v in method.items() if k != "method")
    return f"{method.get('method', '?')}" + (f" ({rest})" if rest else "")


def budget(data: dict, where: str) -> dict[str, Any] | None:
    """The budget table (FoMo-in-Flux's table 4 measured on this model): FLOPs, memory, MAF and steps per method."""
    record = data.get("budget")
    if not record:
        return None
    methods = need(record, "methods", f"{where} budget")
    ref = float(need(need(methods, need(record, "reference", f"{where} budget"), f"{where} budget.methods"), "maf",
                     f"{where} budget.methods.{record['reference']}"))
    out = []
    for name, r in methods.items():
        at = f"{where} budget.methods.{name}"
        steps = need(r, "steps", at)
        out.append((str(name), f"{int(r.get('trainable', 0)):,}", num(float(need(r, "step_flops", at)), ".3g"),
                    num(float(r.get("task_flops", 0.0)), ".3g"), f"{int(need(r, 'memory_bytes', at)) / 2**20:.2f}",
                    num(float(need(r, "memory_multiplier", at)), ".3f"), num(float(need(r, "maf", at)) / ref, ".3f"),
                    ", ".join(f"{t} {n}" for t, n in steps.items())))
    return {"kind": str(record.get("kind", "?")), "rows": out}


def ppl_rise_sentence(rise: dict | None) -> str:
    """Relative rise of base-data perplexity from zero-shot to the end of the stream, with vs without replay."""
    if not rise or rise.get("with_replay") is None:
        return "No base-data perplexity rise recorded."

    def phrase(x: float) -> str:
        return f"{'rose' if x > 0 else 'fell'} by {abs(x):.1%}" if x else "did not change"

    w, wo = rise["with_replay"], rise.get("without_replay")
    text = f"Base-data perplexity {phrase(w)} from zero-shot to the end of the stream with replay"
    if wo is None:
        return f"{text}; there is no run without replay to compare with."
    verdict = "replay kept it lower" if w < wo else "replay did not keep it lower" if w > wo else "the same either way"
    return f"{text}, and {phrase(wo)} without replay: {verdict}."


def reference_note(rise: dict | None, path: Path = REFERENCE) -> str:
    """Where the run's rise with replay lies against the multi-seed reference of the run's profile."""
    if not rise or rise.get("with_replay") is None:
        return ""
    return f" The rise with replay is {against_reference('stream_rise_planned', float(rise['with_replay']), path)}."


def stability_gap(path: Path, tasks: list[str]) -> dict[str, Any]:
    """General and domain loss vs step early in each task: the dip (a loss spike) and the recovery, per task."""
    if not path.exists():
        return {"missing": f"{path} is missing"}
    df = pd.read_csv(path)
    missing = {"task", "step", "general_loss", "domain_loss"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)} (expected task,step,tokens,general_loss,domain_loss)")
    if df.empty:
        return {"missing": f"{path} has no rows"}
    names = [t for t in tasks if t in set(df["task"])] + [t for t in df["task"].unique() if t not in tasks]
    rows = []
    for name in names:
        g = df[df["task"] == name].sort_values("step")
        gl = g["general_loss"].to_numpy()
        peak = int(gl.argmax())
        rows.append((str(name), f"{gl[0]:.4f}", f"{gl[peak]:.4f} (step {int(g['step'].iloc[peak])})", f"{gl[-1]:.4f}",
                     f"{g['domain_loss'].iloc[0]:.4f}", f"{g['domain_loss'].iloc[-1]:.4f}"))
    return {"figure": png(stability_gap_figure(df, names)), "rows": rows}


def stream(metrics: Path | None = None, gap: Path | None = None, reference: Path = REFERENCE) -> Markup:
    """The continual stream: score matrices, forgetting metrics, replay choice, perplexity rise, stability gap."""
    metrics = metrics or P.METRICS / "stream.json"
    gap = gap or P.PLOTS / "stream" / "gap.csv"
    if not metrics.exists():
        return not_run("Continual stream", "stream", "stream")
    data, where = json.loads(metrics.read_text()), str(metrics)
    if "skipped" in data:  # the stage ran with stream.enabled false or no stream section (e.g. profiles/cyber-dap.yaml)
        return not_run("Continual stream", "stream", "stream", reason=str(data["skipped"]))
    tasks = [str(t) for t in need(data, "tasks", where)]
    merge, strategy = data.get("merge") or {}, data.get("strategy") or {}
    return render("stream.html.j2", tasks=tasks, ordering=str(data.get("ordering", "?")), schedule=str(data.get("schedule", "?")),
                  method=method_line(data.get("method")), budget=budget(data, where),
                  merge=str(merge.get("method", "none")), merge_weight=merge.get("weight"), strategy=str(strategy.get("kind", "none")),
                  heatmaps=heatmaps(data, where), metrics=metrics_table(data), replay=replay(data, where),
                  rise=ppl_rise_sentence(data.get("general_ppl_rise")) + reference_note(data.get("general_ppl_rise"), reference),
                  gap=stability_gap(gap, tasks))
