"""Section 7 of the report: the image branch (``mm_eval``, ``mm_stream``, ``mm_register``): probes with intervals, MAE
pretraining and its reconstructions, CLIP zero-shot accuracy, retrieval and confusion, the FoMo-in-Flux stream
(A_KA / A_ZS per method, the budget table, the score matrix of every run) and the ``fluxforge-clip`` decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from markupsafe import Markup

from fluxforge.eval.report.figures import confusion_figure, heatmap_figure, png, reconstruction_figure
from fluxforge.eval.report.registry import registry
from fluxforge.eval.report.render import need, not_run, read_json, render, signed

GRID_ROWS = {"original": "original", "masked": "visible", "reconstructed": "reconstruction"}


def probe_rows(probes: dict, where: str) -> list[dict]:
    rows = []
    for name, p in probes.items():
        gain = signed(p["over_random_init"], lower_is_better=False, spec="+.3f") if "over_random_init" in p else ""
        rows.append({"name": name, "gain": gain, **{k: need(p, k, f"{where}: probes.{name}") for k in
                                                    ("accuracy", "low", "high", "n", "features")}})
    return rows


def probe_sentence(probes: dict) -> str:
    """Says which features probe best, and that raw pixels beat the tiny encoders when they do (an honest baseline)."""
    learned = {k: v["accuracy"] for k, v in probes.items() if k not in ("raw_pixels", "random_init")}
    if not learned:
        return "No MAE objective was trained."
    best = max(learned, key=learned.get)
    text = (f"Best pretrained encoder: {best} at {learned[best]:.3f}, "
            f"{learned[best] - probes['random_init']['accuracy']:+.3f} over the same architecture at random init.")
    if probes["raw_pixels"]["accuracy"] > learned[best]:
        text += (f" Raw pixels probe higher ({probes['raw_pixels']['accuracy']:.3f}): at this budget (minutes of CPU, "
                 "a few hundred thousand parameters) pretraining improves on random features but does not yet beat "
                 "the pixels themselves on digits.")
    return text


def grid_figures(arrays: Path, objectives: list[str]) -> dict[str, str]:
    out = {}
    for name in objectives:
        file = arrays / f"recon_{name}.npz"
        if file.exists():
            with np.load(file) as z:
                out[name] = png(reconstruction_figure({label: z[key] for key, label in GRID_ROWS.items()}))
    return out


STREAM_METRICS = ("a_ka", "a_zs", "geometric_mean", "forgetting", "bwt", "fwt")


def clip_stream(path: Path) -> dict | None:
    """The stream's tables and heatmaps from ``metrics/mm_stream.json`` (None before ``mm_stream`` has run)."""
    data = read_json(path)
    if not data:
        return None
    where = str(path)
    runs = need(data, "runs", where)
    rows = [{"run": name, "method": need(r, "method", f"{where}: runs.{name}")["method"],
             "replay": r["method"].get("replay", True), "steps": sum(need(r, "steps", f"{where}: runs.{name}").values()),
             **{k: need(r["metrics"], k, f"{where}: runs.{name}.metrics") for k in STREAM_METRICS}}
            for name, r in runs.items()]
    budget = [{"method": name, "flops": b["step_flops"], "multiplier": b["memory_multiplier"], "maf": b["maf"],
               "trainable": b["trainable"], "steps": b["steps"]} for name, b in need(data, "budget", where)["methods"].items()]
    figures = {name: png(heatmap_figure(r["matrix"], need(data, "rows", where), need(data, "columns", where),
                                        f"zero-shot accuracy: {name}")) for name, r in runs.items()}
    return {"tasks": need(data, "tasks", where), "rows": rows, "budget": budget, "kind": data["budget"]["kind"],
            "figures": figures, "claims": data.get("claims", {}), "deploy": data.get("deploy", ""),
            "mixture": data.get("mixture", {})}


def images(metrics: Path, register: Path, arrays: Path, stream: Path | None = None) -> Markup:
    """The section from ``metrics/mm_eval.json``, ``metrics/mm_register.json``, the arrays in ``reports/mm`` and
    ``metrics/mm_stream.json``."""
    ev = read_json(metrics)
    if not ev:
        return not_run("The image branch", "mm_eval", "mm")
    where = str(metrics)
    clip = need(ev, "clip", where)
    zero_shot = [{"model": model, "name": k.removeprefix("zero_shot."), **v} for model in ("clip", "stream")
                 for k, v in ev.get(model, {}).items() if k.startswith("zero_shot.")]
    ret = need(clip, "retrieval.heldout", where)
    retrieval = [{"name": d.replace("_", " "), **{k: ret[f"{d}.{k}"] for k in ("R1", "R1_chance", "R5", "R5_chance")}}
                 for d in ("image_to_text", "text_to_image")]
    conf = read_json(arrays / "confusion.json")
    confusion = png(confusion_figure(conf["counts"], conf["rows"], conf["columns"],
                                     "CLIP zero-shot on the held-out images of the trained slice")) if conf else None
    mae = ev.get("mae", {})
    return render("images.html.j2", probes=probe_rows(need(ev, "probes", where), where),
                  probe_sentence=probe_sentence(ev["probes"]), mae=mae, grids=grid_figures(arrays, list(mae)),
                  zero_shot=zero_shot, retrieval=retrieval, confusion=confusion, registry=registry(read_json(register)),
                  stream=clip_stream(stream) if stream is not None else None)
