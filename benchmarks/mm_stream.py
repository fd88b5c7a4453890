"""The image-text stream (`mm_stream`) at its default params over several seeds: issue 16's stream thresholds.

Why: the test (tests/test_clip_stream_claims.py) checks the thresholds on one seed of a shorter stream; whether
the default stage meets them (replay raises A_KA by >= 0.15 over the zero-shot row; replay beats no replay on
sqrt(A_KA * A_ZS); ema_merge keeps A_ZS >= finetune's - 0.01) is a question of the defaults, answered here over
seeds with the numbers written down. Each seed sets the pretrained CLIP's init and data order and the stream's
(`mm.clip.init_seed`, `mm.clip.train.seed`, `mm.stream.train.seed`, `mm.stream.seed`). The world and its curation
are generated once in a temporary directory (the stages' own library calls).

Usage (inside .venv):
    python benchmarks/mm_stream.py [--seeds 0 1 2] [--params params.yaml] [-S mm.stream.train.steps=50 ...] [--no-write]
Writes the "Image-text stream (FoMo-in-Flux, mm_stream)" section of BENCHMARKS.md unless --no-write, and the rows
to benchmarks/results/mm_stream.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from evidence import interval, write_effects  # noqa: E402
from report_md import machine, replace_section  # noqa: E402

SEED_KEYS = ("mm.clip.init_seed", "mm.clip.train.seed", "mm.stream.train.seed", "mm.stream.seed")
SECTION = "Image-text stream (FoMo-in-Flux, mm_stream)"
EFFECTS = {  # benchmarks/evidence.json: effect -> (label, the stage's `claims` value); `fluxforge summary` compares a run
    "mm_stream_replay_gap": ("image stream: replay minus no replay, sqrt(A_KA x A_ZS)",
                             lambda c: c["replay_beats_no_replay"]["gap"]),
    "mm_stream_a_ka_rise": ("image stream: A_KA rise over the zero-shot row (finetune with replay)",
                            lambda c: c["replay_raises_a_ka"]["rise"]),
}


def one_seed(params_path: Path, overrides: list[str], seed: int) -> dict:
    """Pretrain CLIP and run every method of the stream at ``seed`` (in the current directory); one row."""
    from fluxforge import paths as P
    from fluxforge.config import load_params
    from fluxforge.continual.clip_stream import run_clip_stream
    from fluxforge.eval.zero_shot import load_clip
    from fluxforge.train.mm_jobs import pretrain_clip

    params = load_params(params_path, overrides=[*overrides, *(f"{k}={seed}" for k in SEED_KEYS)])
    start = time.perf_counter()
    pretrain_clip(params, None)
    clip_seconds = time.perf_counter() - start
    clip, tok = load_clip(P.model_dir("clip"))
    start = time.perf_counter()
    s = run_clip_stream(params.mm, clip, tok)
    row = {"seed": seed, "seconds.clip": clip_seconds, "seconds.stream": time.perf_counter() - start,
           "runs": {name: {**{k: r["metrics"][k] for k in ("a_ka", "a_zs", "geometric_mean", "forgetting")},
                           "a_ka_zero_shot": r["metrics"]["a_ka_curve"][0], "steps": sum(r["steps"].values()),
                           "seconds": r["train_seconds"]} for name, r in s["runs"].items()},
           "claims": s["claims"]}
    print(f"seed {seed}: " + "; ".join(f"{n} A_KA {r['a_ka']:.3f} A_ZS {r['a_zs']:.3f}" for n, r in row["runs"].items()),
          flush=True)
    return row


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(rows: list[dict]) -> str:
    runs = list(rows[0]["runs"])
    cols = ("a_ka_zero_shot", "a_ka", "a_zs", "geometric_mean", "forgetting", "steps", "seconds")
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in runs:
        cells = [mean_sd([r["runs"][name][c] for r in rows]) if c not in ("steps",) else str(rows[0]["runs"][name][c])
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claim_lines(rows: list[dict]) -> list[str]:
    out = []
    for claim in rows[0]["claims"]:
        held = [r["claims"][claim]["holds"] for r in rows]
        value = next(k for k in rows[0]["claims"][claim] if k not in ("holds", "need"))
        vals = [r["claims"][claim][value] for r in rows]
        need = rows[0]["claims"][claim].get("need", 0.0)
        verdict = "PASS" if statistics.mean(vals) >= need and (need or statistics.mean(vals) > 0) else "FAIL"
        out.append(f"- {verdict} {claim.replace('_', ' ')}: {value} mean {mean_sd(vals)} (need {'>=' if need else '>'} "
                   f"{need:+.2f}); held in {sum(held)} of {len(held)} seeds ({', '.join(f'{v:+.3f}' for v in vals)})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY=VALUE over the params")
    ap.add_argument("--no-write", action="store_true",
                    help="print only; leave BENCHMARKS.md and benchmarks/results/mm_stream.json alone")
    ap.add_argument("--evidence", action="store_true",
                    help="add the stream's effects' intervals over the seeds to benchmarks/evidence.json (params.yaml only)")
    args = ap.parse_args()
    if args.evidence and (len(args.seeds) < 3 or args.overrides or Path(args.params).resolve() != ROOT / "params.yaml"):
        ap.error("--evidence is the reference for params.yaml as committed: >= 3 seeds, no -S, no --params")
    from fluxforge import paths as P
    from fluxforge.config import load_params
    from fluxforge.data.captions import read_vocabulary
    from fluxforge.data.image_curate import curate_images
    from fluxforge.runtime import set_threads
    from fluxforge.world.images import generate_image_world

    threads = set_threads()
    params_path = Path(args.params).resolve()
    base = load_params(params_path, overrides=args.overrides)
    os.chdir(tempfile.mkdtemp(prefix="mm_stream_"))
    generate_image_world(base.mm.world, P.MM_WORLD)
    curate_images(P.MM_WORLD, P.MM_CURATED, base.mm.curate, read_vocabulary(P.MM_WORLD / "vocab.json"),
                  base.mm.clip.text.max_position_embeddings, P.REPORTS / "contracts" / "mm")
    rows = [one_seed(params_path, args.overrides, s) for s in args.seeds]
    command = (f"python benchmarks/mm_stream.py --seeds {' '.join(map(str, args.seeds))}"
               f"{''.join(f' -S {o}' for o in args.overrides)}")
    body = "\n".join([
        f"Machine: {machine()}, {threads} torch thread(s). Date: {dt.date.today().isoformat()}. Command: `{command}`.",
        "",
        f"Default `mm.stream` ({base.mm.stream.num_tasks} tasks over slices {base.mm.stream.slices}, "
        f"{base.mm.stream.train.steps} full-finetuning steps of {base.mm.stream.train.batch_size} pairs per task, "
        f"budget {base.mm.stream.budget.kind}), each run from a CLIP pretrained at the same seed. Mean ± SD over seeds; "
        "`a_ka_zero_shot` is A_KA of the pretrained CLIP (the zero-shot row), the others the final row; "
        f"seconds per run of training (the whole stage: {statistics.mean(r['seconds.stream'] for r in rows):.0f} s on average).",
        "",
        table(rows),
        "",
        "Issue 16's stream thresholds:",
        *claim_lines(rows),
    ])
    print(body)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "mm_stream.json"
        out.write_text(json.dumps({"command": command, "rows": rows}, indent=1))
        replace_section(ROOT / "BENCHMARKS.md", SECTION, body)
    if args.evidence:
        effects = {k: {"label": label, **interval([get(r["claims"]) for r in rows])} for k, (label, get) in EFFECTS.items()}
        write_effects(effects, "none", f"{command} --evidence")
        print("\n".join(f"{e['label']}: mean {e['mean']:+.3f}, one run's 95 % range [{e['pi95'][0]:+.3f}, "
                        f"{e['pi95'][1]:+.3f}]" for e in effects.values()))


if __name__ == "__main__":
    main()
