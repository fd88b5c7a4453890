"""Evidence over seeds for the language chain: cyber gain, the student, the studies, each over >= 3 training seeds.

Why (issue 21): the README quoted one run's numbers; a fresh run on another CPU moved them, with no way to tell seed
noise from a regression. This reruns the chain (pretrain -> continual -> distill -> evaluate, and the studies) per
seed and reports mean, spread and a 95 % Student-t interval per headline effect. The stream's effects are
benchmarks/evidence.py's (its own section); the image branch's are benchmarks/image_branch.py's and mm_stream.py's.

Seed s sets every training seed of the chain: ``model.init_seed`` and ``distill.student.init_seed`` = s,
``pretrain.seed`` = s, each continual task's and distill's seed = its params.yaml value + 10 s. Seed 0 is therefore
params.yaml as committed. The world and the curated data stay the same (their seeds are the data, not the training).

Usage (from the repo root; the default chain takes about 5 minutes per seed on 2 cores):
    python benchmarks/evidence_chain.py [--seeds 0 1 2] [--profile none|tiny] [-S KEY=VALUE ...] [--work DIR] [--write]
With --write: the "Evidence over seeds: the language chain" section of BENCHMARKS.md, and the effects added to
benchmarks/evidence.json (the reference intervals ``fluxforge summary`` and the report compare a run with).
``-S`` (as `fluxforge run -S`) asks what a candidate default would show, e.g. a smaller model
(``-S model.hidden_size=96 -S model.num_layers=3``): it only prints, since a variant's intervals are no profile's
reference.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from evidence import interval, table, write_effects  # noqa: E402
from report_md import machine, replace_section  # noqa: E402

from fluxforge.config.loader import set_dotted  # noqa: E402
from pipeline_repo import make_repo, run  # noqa: E402

SECTION = "Evidence over seeds: the language chain"
SIGNIFICANT = 0.01  # issue 18/21: the cyber gain must stay significant at this level


def _eval(m: dict) -> dict:
    return m["eval"]


def _study(name: str) -> Callable[[dict], float]:
    return lambda m: m["study"]["vs_baseline"][name]["heldout_loss_change"]


EFFECTS: dict[str, tuple[str, Callable[[dict], float]]] = {  # effect -> (label, how to read it from the seed's metrics)
    "cyber_gain": ("cyber accuracy gain, final vs pretrained", lambda m: _eval(m)["tests"]["cyber"]["gain"]),
    "cyber_log10_p": ("cyber gain, log10 of the one-sided McNemar p", lambda m: math.log10(_eval(m)["tests"]["cyber"]["p_final_vs_pretrain"])),
    "general_ppl_rise_chain": ("general held-out ppl, final vs pretrained (relative rise)",
                               lambda m: _eval(m)["models"][_eval(m)["final"]]["general"]["ppl"]
                               / _eval(m)["models"]["pretrain"]["general"]["ppl"] - 1),
    "student_cyber_acc_fraction": ("student: share of the teacher's above-chance cyber accuracy",
                                   lambda m: _eval(m)["distill"]["cyber_acc_fraction"]),
    "student_general_acc_fraction": ("student: share of the teacher's above-chance general accuracy",
                                     lambda m: _eval(m)["distill"]["general_acc_fraction"]),
}


def seeded(params: dict, seed: int) -> dict:
    """params with every training seed of the chain moved by ``seed`` (seed 0: unchanged)."""
    params["model"]["init_seed"] = seed
    params["pretrain"]["seed"] = seed
    for task in params["continual"]["tasks"].values():
        task["seed"] = task.get("seed", 0) + 10 * seed
    params["distill"]["seed"] = params["distill"].get("seed", 0) + 10 * seed
    params["distill"].setdefault("student", {})["init_seed"] = seed
    return params


def chain_at_seed(repo: Path, base: dict, seed: int) -> dict:
    (repo / "params.yaml").write_text(yaml.safe_dump(seeded(copy.deepcopy(base), seed), sort_keys=False))
    t0 = time.perf_counter()
    run(["dvc", "repro", "evaluate", "study"], repo)
    seconds = time.perf_counter() - t0
    read = lambda name: json.loads((repo / "metrics" / f"{name}.json").read_text())  # noqa: E731
    print(f"seed {seed}: {seconds:.0f} s", flush=True)
    return {"eval": read("eval"), "study": read("study"), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="none", help="profile merged over params.yaml ('none': params.yaml as it is)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param for every seed (repeatable; the value is YAML); not with --write")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fluxforge-evidence-chain"))
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md and benchmarks/evidence.json")
    args = ap.parse_args()
    if len(args.seeds) < 3:
        ap.error("evidence needs >= 3 seeds")
    if args.set and args.write:
        ap.error("-S measures a variant; its intervals are no profile's reference, so it does not --write")
    repo = make_repo(args.work / "repo", None if args.profile == "none" else args.profile)
    base = yaml.safe_load((repo / "params.yaml").read_text())
    for override in args.set:
        print(set_dotted(base, override), flush=True)
    runs = {seed: chain_at_seed(repo, base, seed) for seed in args.seeds}
    effects = {k: {"label": label, **interval([get(m) for m in runs.values()])} for k, (label, get) in EFFECTS.items()}
    studies = next(iter(runs.values()))["study"]["vs_baseline"]
    for name in studies:
        effects[f"study_{name}"] = {"label": f"study {name}: held-out loss change vs plain pretraining",
                                    **interval([_study(name)(m) for m in runs.values()])}
    p_values = [m["eval"]["tests"]["cyber"]["p_final_vs_pretrain"] for m in runs.values()]
    command = "python benchmarks/evidence_chain.py " + " ".join(sys.argv[1:])
    held = sum(p < SIGNIFICANT for p in p_values)
    body = (f"Machine: {machine()}. Date: {dt.date.today()}. Command: `{command}` (profile {args.profile}; seed s sets "
            f"`model.init_seed`, `pretrain.seed`, `distill.student.init_seed` = s and each continual task's and "
            f"distill's seed + 10 s, so seed 0 is params.yaml; `dvc repro evaluate study` per seed, "
            f"{sum(m['seconds'] for m in runs.values()) / len(runs):.0f} s a seed).\n\n"
            f"{table(effects, args.seeds)}\n\nThe cyber gain is significant (one-sided exact McNemar p < {SIGNIFICANT}) in {held} of "
            f"{len(p_values)} seeds (p = {', '.join(f'{p:.1e}' for p in p_values)}). Studies: negative = lower held-out "
            f"loss than plain pretraining at the same steps (growth: at equal FLOPs). `fluxforge summary`, the report and "
            f"the registry gate (`register.gate.reference`) hold one run to the last column, the range one run lands in "
            f"(the interval of the mean is for comparing means).\n")
    print(body)
    if args.write:
        write_effects(effects, args.profile, command)
        replace_section(ROOT / "BENCHMARKS.md", SECTION, body)


if __name__ == "__main__":
    main()
