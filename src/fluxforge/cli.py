"""The ``fluxforge`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = """FluxForge: continual pretraining as a DVC DAG with MLflow lineage.

Typical use:
  make run                      install and run the whole DAG (dvc repro)
  fluxforge check-params        validate params.yaml without running anything
  fluxforge world --out DIR     generate the default world corpus elsewhere
  fluxforge summary             where the report, metrics and MLflow store are, with headline numbers
"""


def _world(args: argparse.Namespace) -> int:
    from fluxforge.config import WorldConfig
    from fluxforge.world import generate_world

    cfg = _params(args.params).world if args.params else WorldConfig()
    if args.seed is not None:
        cfg = cfg.model_copy(update={"seed": args.seed})
    summary = generate_world(cfg, Path(args.out))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _params(path: str):  # noqa: ANN202
    from fluxforge.config import load_params

    return load_params(path)


def _check(args: argparse.Namespace) -> int:
    from fluxforge.config import ParamsError

    try:
        p = _params(args.params)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.params}: ok ({len(p.continual.tasks)} continual tasks; slices {p.world.slices()})")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from fluxforge.pipeline.runner import run_stage

    return run_stage(args.name, *args.args, params_path=args.params)


def _summary(args: argparse.Namespace) -> int:
    root = Path.cwd()
    ev = root / "metrics" / "eval.json"
    reg = root / "metrics" / "register.json"
    if not ev.exists():
        print(f"No results in {root} yet: run `make run` (or `dvc repro`) from the repository root.")
        return 1
    print("\nFluxForge run summary")
    print(f"  report       : {root / 'reports' / 'report.html'}")
    print(f"  metrics      : dvc metrics show   (files in {root / 'metrics'})")
    print(f"  MLflow UI    : .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}  -> http://127.0.0.1:5000")
    e = json.loads(ev.read_text())
    for name, m in e["models"].items():
        print(f"  {name:28s} general ppl {m['general']['ppl']:9.1f} acc {m['general']['acc']:.3f} | "
              f"cyber ppl {m['cyber']['ppl']:9.1f} acc {m['cyber']['acc']:.3f}")
    t = e["tests"]["cyber"]
    print(f"  cyber accuracy {t['acc_pretrain']:.3f} -> {t['acc_final']:.3f} over {t['n']} questions "
          f"(one-sided exact McNemar p = {t['p_final_vs_pretrain']:.1e})")
    if reg.exists():
        r = json.loads(reg.read_text())
        state = "promoted to champion" if r["promoted"] else "NOT promoted (champion unchanged)"
        print(f"  registry     : {r['model_name']} v{r['version']} challenger, {state}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fluxforge.pipeline.runner import run_stage

    return run_stage("report", params_path=args.params)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fluxforge", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="generate the default world corpus (documents, labels, eval sets)")
    w.add_argument("--out", required=True, help="output directory")
    w.add_argument("--seed", type=int, default=None, help="random seed (default: the params file's, else 1234)")
    w.add_argument("--params", help="take world sizes from this params file")
    w.set_defaults(fn=_world)
    c = sub.add_parser("check-params", help="validate a params file and exit (2 on errors)")
    c.add_argument("--params", default="params.yaml")
    c.set_defaults(fn=_check)
    s = sub.add_parser("stage", help="run one DAG stage outside DVC (DVC runs stages/*.py)")
    s.add_argument("name")
    s.add_argument("args", nargs="*")
    s.add_argument("--params", default="params.yaml")
    s.set_defaults(fn=_stage)
    r = sub.add_parser("report", help="rebuild reports/report.html from the current metrics")
    r.add_argument("--params", default="params.yaml")
    r.set_defaults(fn=_report)
    m = sub.add_parser("summary", help="print where results are and the headline numbers")
    m.set_defaults(fn=_summary)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.fn(args))
