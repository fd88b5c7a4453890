"""Evidence over seeds: the stream's headline effects over several seeds, with mean, spread and 95 % interval.

Usage (from the repo root):  python benchmarks/evidence.py --profile tiny --seeds 0 1 2 [--repo DIR]
A repository of the pipeline with ``--profile`` merged over params.yaml is reproduced up to the ``stream`` stage
once (or ``--repo``, one already reproduced, is reused); then per seed ``stream.seed`` and ``stream.train.seed``
are set and ``dvc repro stream`` reruns the stream alone. Per effect: mean, sample standard deviation and the
95 % Student-t interval of the mean. Writes benchmarks/evidence.json (the reference intervals) and the
"Evidence over seeds" section of BENCHMARKS.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from report_md import machine, replace_section  # noqa: E402

from pipeline_repo import make_repo, run  # noqa: E402

EFFECTS = {  # effect -> (label, how to read it from metrics/stream.json)
    "stream_rise_planned": ("stream: base-data ppl rise with CMR-planned replay", lambda m: m["general_ppl_rise"]["with_replay"]),
    "stream_rise_no_replay": ("stream: base-data ppl rise without replay", lambda m: m["general_ppl_rise"]["without_replay"]),
    "stream_promises_held": ("stream: planned tasks whose promise held (fraction)",
                             lambda m: m["replay"]["promise"]["held"] / m["replay"]["promise"]["planned"]),
}


def interval(values: list[float]) -> dict:
    """Mean, sample sd, the two-sided 95 % Student-t interval of the mean (``ci95``: where the effect's true mean
    lies) and the 95 % prediction interval of one more run (``pi95``: where a single new run's number falls; wider
    by sqrt(n + 1)). A run is compared with ``pi95``: measured against the interval of the mean, one run in three
    seeds' worth of noise would be called "outside" far more often than 5 % of the time."""
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    t = float(stats.t.ppf(0.975, n - 1)) if n > 1 else 0.0
    half, spread = float(t * sd / np.sqrt(n)), float(t * sd * np.sqrt(1 + 1 / n))
    return {"values": x.tolist(), "n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half],
            "pi95": [mean - spread, mean + spread]}


def table(effects: dict, seeds: list[int]) -> str:
    """The Markdown table BENCHMARKS.md shows: per-seed values, mean, sd, and both intervals."""
    head = (f"| effect | per seed ({', '.join(map(str, seeds))}) | mean | sd | 95 % interval of the mean (t) | "
            "one run's 95 % range |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {e['label']} | {', '.join(f'{v:+.3f}' for v in e['values'])} | {e['mean']:+.3f} | {e['sd']:.3f} | "
        f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] | [{e['pi95'][0]:+.3f}, {e['pi95'][1]:+.3f}] |" for e in effects.values())


def evidence_file(profile: str) -> Path:
    """Where a profile's intervals are kept: the file its ``register.gate.reference`` names (params.yaml:
    benchmarks/evidence.json; profiles/full.yaml: benchmarks/evidence-full.json), which is the file its gate, summary
    and report read. A profile without one (tiny) writes benchmarks/results/evidence-<profile>.json, so a smoke run
    never replaces a reference."""
    from fluxforge.config import read_params

    params = read_params(ROOT / "params.yaml", profile=None if profile == "none" else profile)
    ref = params.get("register", {}).get("gate", {}).get("reference")
    return ROOT / ref if ref else ROOT / "benchmarks" / "results" / f"evidence-{profile}.json"


def write_effects(effects: dict, profile: str, command: str, top: dict | None = None, path: Path | None = None) -> None:
    """Merge ``effects`` into the profile's evidence file (:func:`evidence_file`), each naming its profile, command,
    machine and date; the other benchmarks' effects stay (the stream's, the chain's and the image branch's come from
    four scripts). ``top``: fields of the record itself (the stream benchmark's seeds and planner promises)."""
    path = path or evidence_file(profile)
    record = json.loads(path.read_text()) if path.exists() else {"effects": {}}
    today = dt.date.today().isoformat()
    for k, e in effects.items():
        record["effects"][k] = {**e, "profile": profile, "command": command, "machine": machine(), "date": today}
    record.update(top or {})
    path.write_text(json.dumps(record, indent=2) + "\n")


def stream_at_seed(repo: Path, seed: int, overrides: list[list[str]]) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides:
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    params["stream"]["seed"] = seed
    params["stream"].setdefault("train", {})["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "stream"], repo)
    return json.loads((repo / "metrics" / "stream.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="profile merged over params.yaml ('none': params.yaml as it is)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repo", type=Path, help="a pipeline repository to reuse (else one is built under --work)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fluxforge-evidence"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="a params override for every seed, e.g. stream.planner.pilot_steps=20 (a reduced scale)")
    args = ap.parse_args()
    if len(args.seeds) < 3:
        ap.error("evidence needs >= 3 seeds")
    repo = args.repo or make_repo(args.work / "repo", None if args.profile == "none" else args.profile)
    overrides = [kv.split("=", 1) for kv in args.set]
    runs = {seed: stream_at_seed(repo, seed, overrides) for seed in args.seeds}
    effects = {k: {"label": label, **interval([get(m) for m in runs.values()])} for k, (label, get) in EFFECTS.items()}
    command = "python benchmarks/evidence.py " + " ".join(sys.argv[1:])
    write_effects(effects, args.profile, command, top={
        "date": dt.date.today().isoformat(), "machine": machine(), "command": command, "profile": args.profile,
        "seeds": args.seeds, "promises": {str(s): m["replay"]["promise"] for s, m in runs.items()}})
    body = (f"Machine: {machine()}. Date: {dt.date.today()}. Command: `{command}` (profile {args.profile}; per seed, "
            f"`stream.seed` and `stream.train.seed` are set and `dvc repro stream` reruns the stream alone).\n\n"
            f"{table(effects, args.seeds)}\n\nThe intervals are kept in benchmarks/evidence.json (the reference the report "
            "compares a run with: one run against the range one run lands in).")
    replace_section(ROOT / "BENCHMARKS.md", "Evidence over seeds", body)
    print(body)


if __name__ == "__main__":
    main()
