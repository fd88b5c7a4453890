"""The ``fluxforge`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fluxforge.orchestrate.experiment import Experiment

HELP = """FluxForge: continual pretraining as a DVC DAG with MLflow lineage.

Typical use:
  make run                      install and run the whole DAG (dvc repro)
  make run PROFILE=cyber-dap    the same on profiles/cyber-dap.yaml (= fluxforge run --profile cyber-dap)
  fluxforge run --profile tiny -S pretrain.steps=20   a DVC experiment in a temporary copy; params.yaml untouched
  fluxforge check-params        validate params.yaml without running anything (--profile NAME: with a profile)
  fluxforge world --out DIR     generate the default world corpus elsewhere
  fluxforge summary             where the report, metrics and MLflow store are, with headline numbers
  fluxforge lineage fluxforge-lm@champion     the champion traced back to the raw data
  fluxforge promote fluxforge-lm 4            make version 4 the champion (gate must have passed)
  fluxforge rollback fluxforge-lm             give champion back to the previous one
  fluxforge rebuild fluxforge-lm@champion     rebuild the champion from its commit and prove every output identical
  fluxforge refresh -S pretrain.steps=200     one refresh through Prefect (pull, repro, promote, push, commit)
  fluxforge deploy                            nightly refresh + GPU-stage deployments on a Prefect server
  fluxforge eval --model DIR --task FILE      score a model on CTI-MCQ, CyberMetric, SecEval or the world's MCQ
  fluxforge source add corpus/ --domain general   your own files as a source of the DAG (list, remove)
  fluxforge curate --input 'corpus/*.jsonl' --output DIR   ingest, filter and dedup any corpus outside the DAG
  fluxforge merge instruction_residual INSTRUCT BASE UPDATED --out DIR   instruct - base added onto an updated base
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
    from fluxforge.config import ParamsError, load_params
    from fluxforge.config.loader import params_source

    try:
        p = load_params(args.params, args.profile, args.set)
        where = params_source(args.params, args.profile, args.set)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{where}: ok ({len(p.continual.tasks)} continual tasks; slices {p.world.slices()})")
    return 0


def _run(args: argparse.Namespace) -> int:
    """The DAG on params.yaml + a profile + overrides, as a DVC experiment in a temporary copy; params.yaml untouched."""
    from dvc.exceptions import DvcException

    from fluxforge.config import ParamsError
    from fluxforge.errors import FluxForgeError
    from fluxforge.orchestrate.experiment import run_experiment
    from fluxforge.runtime import quiet_env

    quiet_env()
    try:
        exp = run_experiment(args.root, args.profile, args.set, args.name)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    except (FluxForgeError, DvcException) as err:
        print(f"fluxforge run: {err}", file=sys.stderr)
        return 1
    return _print_experiment(Path(args.root).resolve(), exp)


def _print_experiment(root: Path, exp: Experiment) -> int:
    """Where a finished experiment is, and its summary; 1 if that summary cannot be read (the experiment is kept)."""
    from fluxforge.secrets import redact

    print(f"\nexperiment {exp.name} ({exp.rev[:7]}): `dvc exp show` lists it, `dvc exp apply {exp.name}` brings it here")
    print(f"  report : {exp.report or '(no report stage ran)'}")
    print(f"  MLflow : {redact(exp.tracking_uri)}")
    try:
        lines = _read_summary(root, exp.rev)
    except SummaryUnreadable as err:
        print(f"fluxforge run: experiment {exp.name} ran and is kept, but its summary cannot be read: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines or ["  (no evaluation in this experiment)"]))
    return 0


class SummaryUnreadable(Exception):
    """A run's summary could not be read: an unknown revision, a metrics file that does not parse."""


def _read_summary(root: Path, rev: str | None) -> list[str] | None:
    """The summary's lines for commit or experiment ``rev`` (None: the workspace); None when it holds no results."""
    from dvc.exceptions import DvcException

    from fluxforge.errors import FluxForgeError
    from fluxforge.orchestrate.summary import revision_reader, summary_lines, workspace_reader

    try:
        return summary_lines(root, revision_reader(root, rev) if rev else workspace_reader(root))
    except (DvcException, FluxForgeError, OSError, ValueError) as err:
        raise SummaryUnreadable(str(err)) from err


def _stage(args: argparse.Namespace) -> int:
    """Run a stage's own command from dvc.yaml (the only registry of stages), without DVC's bookkeeping."""
    import os
    import subprocess

    from fluxforge.errors import FluxForgeError
    from fluxforge.orchestrate import dag

    name = f"{args.name}@{args.args[0]}" if args.args and "@" not in args.name else args.name
    try:
        stage = dag.get(name)
    except FluxForgeError as err:
        print(f"fluxforge stage: {err}", file=sys.stderr)
        return 2
    # stage commands run on stages/python, which takes FLUXFORGE_PYTHON first: this environment's interpreter
    env = {**os.environ, "FLUXFORGE_PARAMS": args.params, "FLUXFORGE_PYTHON": sys.executable}
    return subprocess.run(stage.cmd, shell=True, env=env).returncode


def _warm(args: argparse.Namespace) -> int:
    """Run a command (``dvc repro``) with a warm stage runner for the stages it starts (fluxforge.warm)."""
    import subprocess

    from fluxforge.warm import warm_stages

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("fluxforge warm: name the command to run, e.g. `fluxforge warm dvc repro`", file=sys.stderr)
        return 2
    with warm_stages(args.root):
        try:
            return subprocess.run(command).returncode
        except FileNotFoundError:
            print(f"fluxforge warm: no such command: {command[0]}", file=sys.stderr)
            return 127
        except KeyboardInterrupt:
            return 130


def _summary(args: argparse.Namespace) -> int:
    from fluxforge.orchestrate import dag

    root = Path.cwd()
    try:
        lines = _read_summary(root, args.rev)
    except SummaryUnreadable as err:
        print(f"fluxforge summary: {err}", file=sys.stderr)
        return 1
    if lines is None:
        where = f"revision {args.rev}" if args.rev else str(root)
        print(f"No results in {where} yet: run `make run` (or `dvc repro`) from the repository root.")
        return 1
    if args.rev:
        print(f"\nFluxForge run summary of {args.rev} (read from DVC's cache; the workspace is left as it is)")
    else:
        print("\nFluxForge run summary")
        print(f"  report       : {root / dag.get('report', root).outs[0]}")
        print(f"  metrics      : dvc metrics show   (files in {dag.metrics_file('evaluate', root=root).parent})")
        print(f"  MLflow UI    : .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}  -> http://127.0.0.1:5000")
    print("\n".join(lines))
    return 0


def _report(args: argparse.Namespace) -> int:
    return _stage(argparse.Namespace(name="report", args=[], params=args.params))


def _use_registry(args: argparse.Namespace) -> None:
    """Point MLflow at --tracking-uri, else $MLFLOW_TRACKING_URI, else the params file's store."""
    import os

    from fluxforge.track.runs import use_store

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = _params(args.params).tracking.tracking_uri if Path(args.params).exists() else "sqlite:///mlflow.db"
    use_store(uri)


def _registry_cmd(fn):  # noqa: ANN001, ANN202
    """Run a registry command; a refused or impossible request is one clear line and exit 1."""
    def run(args: argparse.Namespace) -> int:
        from fluxforge.errors import FluxForgeError

        _use_registry(args)
        try:
            return fn(args)
        except FluxForgeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return run


@_registry_cmd
def _promote(args: argparse.Namespace) -> int:
    from fluxforge.track.promotion import promote

    e = promote(args.name, args.version, reason=args.reason, force=args.force)
    if e["action"] == "none":
        print(f"{args.name} v{args.version} is already the champion; nothing changed")
    else:
        print(f"{args.name}: champion v{e['previous'] or '-'} -> v{e['version']} ({e['reason']})")
    return 0


@_registry_cmd
def _rollback(args: argparse.Namespace) -> int:
    from fluxforge.track.promotion import rollback

    e = rollback(args.name, to=args.to, reason=args.reason)
    print(f"{args.name}: champion v{e['previous']} -> v{e['version']} (rolled back: {e['reason']})")
    return 0


@_registry_cmd
def _lineage(args: argparse.Namespace) -> int:
    from fluxforge.track.lineage_view import lineage_lines

    print("\n".join(lineage_lines(args.ref)))
    return 0


@_registry_cmd
def _rebuild(args: argparse.Namespace) -> int:
    """Rebuild a registered version from its lineage; exit 1 when anything differs, 2 when it cannot be rebuilt."""
    from fluxforge.errors import FluxForgeError
    from fluxforge.orchestrate.rebuild import rebuild
    from fluxforge.runtime import quiet_env

    quiet_env()
    try:
        checks = rebuild(args.ref, root=args.root, from_stage=args.from_stage, keep=args.keep)
    except FluxForgeError as err:
        print(f"fluxforge rebuild: {err}", file=sys.stderr)
        return 2
    differ = [c for c in checks if not c.identical]
    if differ:
        print(f"rebuild: {len(differ)} of {len(checks)} checks differ ({', '.join(sorted({c.stage for c in differ}))})")
        return 1
    print(f"rebuild: all {len(checks)} checks identical: the version is what its lineage says")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    """One refresh through Prefect: on a server if PREFECT_API_URL is set, else on a temporary local one."""
    import os

    from fluxforge.errors import FluxForgeError

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a first start migrates a fresh database: Prefect's 20 s default is too short on a 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from fluxforge.orchestrate.flows import StageFailed, refresh

    try:
        result = refresh(root=args.root, profile=args.profile, overrides=args.set, gpu_deployment=args.gpu_deployment,
                         push=not args.no_push, commit=not args.no_commit)
    except (FluxForgeError, StageFailed) as err:
        print(f"refresh failed; champion unchanged.\n{err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if "Prefect API server" not in str(err):
            raise
        print(f"refresh did not start: {err}\nPoint PREFECT_API_URL at a running server (prefect server start), or "
              "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS for the temporary one.", file=sys.stderr)
        return 1
    ran = [s for s, v in result["stages"].items() if v == "ran"]
    restored = [s for s, v in result["stages"].items() if v == "restored"]
    print(f"refresh done: {len(ran)} of {len(result['stages'])} stages ran ({', '.join(ran) or 'none'})"
          + (f"; {len(restored)} restored from DVC's run-cache ({', '.join(restored)})" if restored else ""))
    w = result["watermark"]
    if w["new_documents"] is not None:
        print(f"  data: {w['new_documents']} documents newer than the previous watermark {w['before']}")
    m = result["model"]
    if m.get("version") and "register" in ran:
        print(f"  registry: {m['model_name']} v{m['version']} " + ("promoted to champion" if m["promoted"] else "not promoted"))
        for r in m.get("reasons") or []:
            print(f"    {r}")
        if m.get("rebuildable"):
            print(f"  lineage: v{m['version']} is commit {m['commit'][:12]}; rebuild it with "
                  f"`fluxforge rebuild {m['model_name']}/{m['version']}`")
        elif "why" in m:
            print(f"  lineage: v{m['version']} is not rebuildable: {m['why']}")
    for stage, h in result.get("gpu", {}).items():
        here, there = h["seconds_here"], h["seconds_there"]
        print(f"  gpu: {stage} ran in {h['checkout']} ({h['status_there']}); there: pull {there.get('pull', 0):.1f} s, "
              f"stage {there.get('stage', 0):.1f} s, push {there.get('push', 0):.1f} s; here: push {here['push']:.1f} s, "
              f"flow run {here['flow_run']:.1f} s, pull {here['pull']:.1f} s")
    if result.get("commit"):
        print(f"  committed params.yaml + dvc.lock as {result['commit'][:12]}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from fluxforge.errors import FluxForgeError
    from fluxforge.orchestrate.deploy import DeploySpec, deploy

    spec = DeploySpec(root=Path(args.root), cron=args.cron, timezone=args.timezone, cpu_pool=args.cpu_pool,
                      gpu_pool=args.gpu_pool, gpu_pool_type=args.gpu_pool_type,
                      gpu_job_variables=json.loads(args.gpu_job_variables) if args.gpu_job_variables else {},
                      gpu_root=Path(args.gpu_root) if args.gpu_root else None)
    try:
        ids = deploy(spec)
    except FluxForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, dep_id in ids.items():
        print(f"deployment {name}: {dep_id}")
    print(f"Start workers: prefect worker start --pool {spec.cpu_pool}   and, on GPU machines, "
          f"prefect worker start --pool {spec.gpu_pool}")
    return 0


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="a profile merged over params.yaml: a name (profiles/NAME.yaml) or a path")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param (repeatable; the value is YAML), e.g. -S pretrain.steps=200")


def _true_false(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")
    return value.lower() == "true"


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the params file's)")
    p.add_argument("--params", default="params.yaml", help="params file whose tracking.tracking_uri is the default store")


def _eval(args: argparse.Namespace) -> int:
    """Score one model on one task file; bad input exits 2 with the reason and no traceback, a --compare difference 1."""
    from fluxforge.errors import FluxForgeError
    from fluxforge.eval.lm_eval_samples import read_lm_eval_samples
    from fluxforge.eval.tasks import load_task
    from fluxforge.runtime import setup_logging

    setup_logging()  # a skipped row is a warning naming it
    if Path(args.task).suffix == ".parquet":
        return _eval_images(args)
    try:
        task = load_task(args.task, args.format, strict=args.strict)  # before the model: a broken file fails in a second
        if args.limit is not None and args.limit < 1:
            raise FluxForgeError(f"--limit must be at least 1, got {args.limit}")
        if args.max_length is not None and args.max_length < 1:
            raise FluxForgeError(f"--max-length must be at least 1, got {args.max_length}")
        if args.compare and args.method != "loglik":
            raise FluxForgeError("--compare diffs log-likelihoods with lm-eval's samples: use it with --method loglik")
        samples = read_lm_eval_samples(args.compare) if args.compare else None
        from fluxforge.eval.generation import evaluate_task, format_table
        from fluxforge.eval.scoring import LM_EVAL_VERSION, resolve_max_length
        from fluxforge.io import write_json
        from fluxforge.runtime import set_threads
        from fluxforge.track.resolve import local_model_path
        from fluxforge.train.model import load_model

        set_threads()
        if args.model.startswith("models:/"):
            _use_registry(args)
        path = local_model_path(args.model)
        model, tok = load_model(path)
        result = evaluate_task(task, model, tok, method=args.method, limit=args.limit, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, shots=args.shots, add_bos_token=args.add_bos_token,
                               max_length=args.max_length)
    except FluxForgeError as err:
        print(f"fluxforge eval: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    settings = {"lm_eval_version": LM_EVAL_VERSION, "add_bos_token": args.add_bos_token,
                "max_length": resolve_max_length(model, tok, args.max_length)}
    diff = _compare(result, samples, args.compare) if samples is not None else None
    if args.lm_eval_task:
        _write_lm_eval_task(task, args, path)
    if args.out:
        write_json(Path(args.out), {"model": args.model, "model_path": str(path), "file": str(task.path), "requests": settings,
                                    **result.to_dict(), **({"compare": diff} if diff else {})})
        print(f"per-question results: {args.out}")
    if args.log:
        print(f"MLflow run: {_log_eval(args, task, result)}")
    return 1 if diff is not None and not diff["identical"] else 0


def _eval_images(args: argparse.Namespace) -> int:
    """A CLIP on a curated image table: zero-shot accuracy over the world's concepts (or the digits) and retrieval."""
    from fluxforge.errors import FluxForgeError
    from fluxforge.eval.image_branch import score_image_table
    from fluxforge.eval.zero_shot import load_clip
    from fluxforge.io import write_json
    from fluxforge.runtime import set_threads
    from fluxforge.track.resolve import local_model_path

    try:
        if args.limit is not None and args.limit < 1:
            raise FluxForgeError(f"--limit must be at least 1, got {args.limit}")
        set_threads()
        if args.model.startswith("models:/"):
            _use_registry(args)
        path = local_model_path(args.model)
        config = path / "config.json"
        if not config.exists() or json.loads(config.read_text()).get("model_type") != "clip":
            raise FluxForgeError(f"{path}: not a CLIP model; an image table ({args.task}) is scored by a CLIP "
                                 "(models/clip, models/mm_stream or models:/fluxforge-clip@champion)")
        model, tok = load_clip(path)
        result = score_image_table(model, tok, Path(args.task), [args.split] if args.split != "all" else None,
                                   args.batch_size, args.limit)
    except FluxForgeError as err:
        print(f"fluxforge eval: {err}", file=sys.stderr)
        return 2
    zs, r = result["zero_shot"], result["retrieval"]
    print(f"{args.task} ({args.split}): {result['images']} images, {result['labels']} labels\n"
          f"  zero-shot accuracy {zs['accuracy']:.4f} (chance {zs['chance']:.4f}, {zs['over_chance']:.1f}x)\n"
          f"  image->text R@1 {r['image_to_text.R1']:.4f} R@5 {r['image_to_text.R5']:.4f} (chance {r['image_to_text.R5_chance']:.4f}); "
          f"text->image R@1 {r['text_to_image.R1']:.4f} R@5 {r['text_to_image.R5']:.4f}")
    if args.out:
        write_json(Path(args.out), {"model": args.model, "model_path": str(path), "file": args.task, "split": args.split,
                                    **result})
        print(f"results: {args.out}")
    return 0


def _compare(result, samples: list[dict], path: str) -> dict:  # noqa: ANN001 - a TaskResult
    """Diff the scored questions with lm-eval's samples and print the differences."""
    from fluxforge.eval.lm_eval_samples import compare_samples, format_comparison

    diff = compare_samples(result.questions, samples)
    print(format_comparison(diff, path))
    return diff


def _write_lm_eval_task(task, args: argparse.Namespace, model_path: Path) -> None:  # noqa: ANN001 - a Task
    """Write the questions scored as an lm-eval task and print the lm_eval command whose samples --compare reads."""
    import re

    from fluxforge.eval.generation import loglik_requests
    from fluxforge.eval.lm_eval_task import write_lm_eval_task

    name = re.sub(r"\W", "_", f"fluxforge_{task.name}")
    questions = task.questions[: args.limit] if args.limit else task.questions
    folder = write_lm_eval_task(loglik_requests(task, questions), Path(args.lm_eval_task), name)
    model_args = ",".join([f"pretrained={model_path}",
                           *(f"{k}={v}" for k, v in (("add_bos_token", args.add_bos_token), ("max_length", args.max_length))
                             if v is not None)])
    print(f"lm-eval task {name} in {folder}; its samples for --compare:\n  lm_eval --model hf --model_args {model_args} "
          f"--include_path {folder} --tasks {name} --log_samples --output_path {folder / 'out'}")


def _log_eval(args: argparse.Namespace, task, result) -> str:  # noqa: ANN001
    """One MLflow run per evaluation: what was scored, how, the metrics overall and per topic, the per-question file."""
    import mlflow

    from fluxforge.io import digest_path

    _use_registry(args)
    mlflow.set_experiment(args.log)
    with mlflow.start_run(run_name=f"eval {task.name}") as run:
        mlflow.log_params({"model": args.model, "task_file": str(task.path), "format": task.format, "method": args.method,
                           "limit": args.limit or "", "questions": result.n, "skipped_rows": len(result.skipped),
                           "add_bos_token": args.add_bos_token, "max_length": args.max_length or ""})
        mlflow.set_tags({"fluxforge.stage": "eval", "task.sha256": digest_path(task.path)})
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
        mlflow.log_metrics({f"{t}.{k}": float(v) for t, m in result.per_topic.items() for k, v in m.items() if k != "n"})
        if args.out:
            mlflow.log_artifact(args.out)
        return run.info.run_id


CURATE_HELP = """Curate any corpus outside the DAG: ingest -> filter -> dedup, the DAG's own steps.

The input format comes from each file's suffix: .jsonl, .jsonl.gz, .parquet, .txt, .csv, .tsv.
--config is an optional YAML file with any of these sections (unknown keys are errors):
  source:   how to read records: text_field, url_field, timestamp_field, id_field, domain,
            licence, default_timestamp, txt_split, heading_pattern, max_doc_chars, name
            (.txt files need txt_split, domain and default_timestamp)
  filters:  as params.yaml data.filters     dedup:  as data.dedup
  runner:   as data.runner (kind process|thread|serial|ray, workers, shard_docs, address)
DIR gets curated.parquet, rejected.parquet (every rejected row with its reason and stage) and
ledger.json (per stage: documents in, kept and rejected per source and reason; the funnel).
Exit 2 on a bad config, no input files or unreadable input.

Example config:
  source: {text_field: body, url_field: null, default_timestamp: "2024-01-01", domain: cyber}
  filters: {language: {enabled: false}}
  runner: {kind: process, workers: 2, shard_docs: 2000}
"""


def _curate(args: argparse.Namespace) -> int:
    """Run ingest -> filter -> dedup on --input into --output; bad config or input exits 2 with the reason."""

    from fluxforge.errors import FluxForgeError
    from fluxforge.runtime import quiet_env, setup_logging

    quiet_env()
    setup_logging()
    from fluxforge.data.curate import curate, load_config, main_summary
    from fluxforge.orchestrate.runners import dedup_engine, shard_runner

    try:
        cfg = load_config(args.config).runner  # the config's runner: section maps the shards and runs dedup
        ledger = curate(args.input, args.output, args.config, index=args.index, runner=shard_runner(cfg),
                        engine=dedup_engine(cfg))
    except FluxForgeError as err:
        print(f"fluxforge curate: {err}", file=sys.stderr)
        return 2
    print(main_summary(ledger, args.output))
    return 0


SOURCE_HELP = """Your own files as a source of the DAG's ingest stage, in one step.

`add` inspects PATH (a file, a folder, a glob in quotes, or s3://BUCKET/PREFIX): the format from the
suffixes, the text, URL and date fields from the first records, and how .txt files split into documents. It
reads the first files as ingest will, shows what it found and the lines it would write, and asks before
writing (--yes accepts, --dry-run only shows). It writes two things together:
  params.yaml  a data.sources entry, with a comment on each value saying where it came from
  dvc.yaml     PATH as a dependency of ingest, so that changing the files reruns ingest and what follows
Every guess can be set instead: --text-field body, --url-field none, --default-timestamp 2024-06-01
(written quoted, "2024-06-01": DVC cannot read an unquoted date in params.yaml). Then: make repro.
"""


def _source_add(args: argparse.Namespace) -> int:
    from fluxforge.orchestrate.sources import plan_add

    keys = ("name", "format", "text_field", "url_field", "timestamp_field", "id_field", "default_timestamp",
            "txt_split", "heading_pattern", "licence")
    choices = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    choices |= {k: None for k in ("url_field", "timestamp_field") if getattr(args, k) in ("none", "null")}
    return _apply_plan("add", lambda: plan_add(Path.cwd(), args.path, args.domain, choices), args)


def _source_remove(args: argparse.Namespace) -> int:
    from fluxforge.orchestrate.sources import plan_remove

    return _apply_plan("remove", lambda: plan_remove(Path.cwd(), args.name), args)


def _apply_plan(verb: str, make_plan, args: argparse.Namespace) -> int:  # noqa: ANN001 - () -> sources.Plan
    """Show a planned change to params.yaml and dvc.yaml; write it when accepted (--yes, or y at the prompt)."""
    from fluxforge.errors import FluxForgeError

    try:
        plan = make_plan()
        print("\n".join(plan.summary) + "\n\n" + plan.diff())
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.dry_run:
            print("dry run: nothing written")
            return 0
        if not (args.yes or (sys.stdin.isatty() and input("Write these changes? [y/N] ").strip().lower() in ("y", "yes"))):
            print("nothing written (--yes accepts the changes shown; options such as --text-field change a guess)",
                  file=sys.stderr)
            return 1
        plan.write()
    except FluxForgeError as err:
        print(f"fluxforge source {verb}: {err}", file=sys.stderr)
        return 2
    print(f"written: {', '.join(p.name for p in plan.edits)}. Next: make repro (or .venv/bin/dvc repro)")
    return 0


def _source_list(args: argparse.Namespace) -> int:
    from fluxforge.errors import FluxForgeError
    from fluxforge.orchestrate.sources import list_sources

    try:
        listed = list_sources(Path.cwd())
    except FluxForgeError as err:
        print(f"fluxforge source list: {err}", file=sys.stderr)
        return 2
    for item in listed:
        s = item.source
        watched = f"watched as {item.dependency}" if item.dependency else \
            f"NOT WATCHED: add `- {item.watched}` to ingest's deps in dvc.yaml, or DVC misses changes to its files"
        print(f"{s.name:16s} {s.format:7s} {s.domain:7s} {s.path}   ({watched})")
    return 0


def _source_parser(sub) -> None:  # noqa: ANN001 - argparse's subparsers action
    so = sub.add_parser("source", help="add, list or remove a source of the DAG (params.yaml + ingest's deps in dvc.yaml)",
                        description=SOURCE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ops = so.add_subparsers(dest="op", required=True)
    add = ops.add_parser("add", help="inspect PATH and add it as a source", description=SOURCE_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("path", metavar="PATH", help="a file, a folder, a glob (quote it) or s3://BUCKET/PREFIX")
    add.add_argument("--domain", required=True, choices=("cyber", "general"), help="the domain of every document")
    add.add_argument("--format", choices=("jsonl", "parquet", "txt", "csv", "tsv"), help="default: from the suffixes")
    add.add_argument("--name", help="the source's name (data/raw/NAME.parquet; default: from PATH)")
    add.add_argument("--text-field", help="the field or column holding the text (default: guessed)")
    add.add_argument("--url-field", help="the field holding URLs, or none (default: guessed)")
    add.add_argument("--timestamp-field", help="the field holding ISO dates, or none (default: guessed)")
    add.add_argument("--id-field", help="a field with the records' own ids, kept in meta")
    add.add_argument("--default-timestamp", metavar="DATE", help="date of documents without one, e.g. 2024-06-01 "
                     "(default when the files have no dates: the newest file's date)")
    add.add_argument("--txt-split", choices=("file", "blank_lines", "heading"), help=".txt: what one document is")
    add.add_argument("--heading-pattern", help="with --txt-split heading: the regex of a line that starts a document")
    add.add_argument("--licence", help="the licence, kept in each document's meta (default: unknown)")
    rm = ops.add_parser("remove", help="remove a source (and its ingest dependency when no other source needs it)")
    rm.add_argument("name", help="the source's name (fluxforge source list)")
    for p in (add, rm):
        p.add_argument("--yes", action="store_true", help="write without asking")
        p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    add.set_defaults(fn=_source_add)
    rm.set_defaults(fn=_source_remove)
    ops.add_parser("list", help="every source, and the dependency through which DVC sees its files change").set_defaults(
        fn=_source_list)


def _merge(args: argparse.Namespace) -> int:
    """Merge model directories (registry URIs resolved) into a new HF directory; mismatches exit 2 naming the tensor."""
    from fluxforge.continual.merge import merge_models
    from fluxforge.errors import FluxForgeError
    from fluxforge.track.resolve import local_model_path

    key = {"interpolate": "weight_b", "slerp": "weight_b", "ema": "weight_new"}.get(args.method, "scale")
    try:
        paths = [local_model_path(m) for m in args.models]
        kw = {k: v for k, v in ((key, args.weight), ("density", args.density), ("seed", args.seed)) if v is not None}
        merge_models(args.method, paths, args.out, info={"sources": args.models}, **kw)
    except FluxForgeError as err:
        print(f"fluxforge merge: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.method} of {', '.join(args.models)})")
    return 0


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
    _profile_args(c)
    c.set_defaults(fn=_check)
    ru = sub.add_parser("run", help="run the DAG on a profile as a DVC experiment in a temporary copy (params.yaml untouched)",
                        description="Merge --profile over params.yaml, apply -S overrides, validate, then run the whole "
                        "DAG with `dvc exp run --temp`: the experiment shows in `dvc exp show`, its report is copied to "
                        "reports/experiments/NAME/, its MLflow runs go to the repository's store.")
    ru.add_argument("--root", default=".", help="the repository (default: here)")
    ru.add_argument("--name", help="experiment name (default: profile-NAME, numbered when taken)")
    _profile_args(ru)
    ru.set_defaults(fn=_run)
    s = sub.add_parser("stage", help="run one DAG stage's command from dvc.yaml, outside DVC's bookkeeping")
    s.add_argument("name", help="a stage of dvc.yaml, e.g. tokenize or continual@cyber (or: continual cyber)")
    s.add_argument("args", nargs="*")
    s.add_argument("--params", default="params.yaml")
    s.set_defaults(fn=_stage)
    wa = sub.add_parser("warm", help="run COMMAND (e.g. dvc repro) with a warm stage runner: stages start in "
                        "a fraction of a second instead of importing torch and the rest anew",
                        description="Start a process that imports the libraries every stage needs, run COMMAND with "
                        "FLUXFORGE_WARM pointing at it, stop it afterwards. stages/python then forks each stage "
                        "(`-m stages.NAME`) from that process; the stage runs the code on disk, with its own "
                        "environment, directory and streams, and exits as it would have. A stage it cannot take "
                        "(another interpreter, OpenMP or HF settings that differ) runs cold. FLUXFORGE_WARM=0 turns "
                        "it off; FLUXFORGE_WARM_VERBOSE=1 says for each stage whether it ran warm. `make run` and "
                        "`make repro` use it.")
    wa.add_argument("--root", default=".", help="the repository whose stages/ the server imports (default: here)")
    wa.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    wa.set_defaults(fn=_warm)
    r = sub.add_parser("report", help="rebuild reports/report.html from the current metrics")
    r.add_argument("--params", default="params.yaml")
    r.set_defaults(fn=_report)
    m = sub.add_parser("summary", help="print where results are and the headline numbers",
                       description="The headline numbers of the run in this repository, each against the multi-seed "
                       "reference its params name; --rev: those of a commit or a DVC experiment (`dvc exp show` lists "
                       "them), read from DVC's cache without touching the workspace.")
    m.add_argument("--rev", help="a commit, branch or experiment name (default: the workspace)")
    m.set_defaults(fn=_summary)
    e = sub.add_parser("eval", help="score a model on a multiple-choice task file (CTI-MCQ TSV, CyberMetric/SecEval JSON, "
                       "world mcq.jsonl), or a CLIP on a curated image table (.parquet: zero-shot and retrieval)")
    e.add_argument("--model", required=True, help="model directory or models:/NAME@ALIAS")
    e.add_argument("--task", required=True, help="task file; a .parquet image table (data/mm/curated/shapes.parquet, "
                   "digits.parquet) is scored zero-shot by a CLIP")
    e.add_argument("--split", default="test", help="image tables: the rows of this split (train, test, unseen; all: every row)")
    e.add_argument("--format", choices=("native", "cti-mcq", "cybermetric", "seceval"), help="task format (default: detected)")
    e.add_argument("--method", choices=("loglik", "generate"), default="loglik",
                   help="loglik: rank options by likelihood; generate: greedy reply parsed as the official script does")
    e.add_argument("--limit", type=int, help="score only the first N questions")
    e.add_argument("--out", help="write metrics, skipped rows and per-question results (context, continuations, "
                   "per-option log-likelihoods, predictions; the generation with --method generate) to this JSON file")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-new-tokens", type=int, help="generation budget (default: per format, SecEval 5 as official)")
    e.add_argument("--shots", type=int, default=5, help="SecEval solved examples in each generation prompt (official: 5)")
    e.add_argument("--add-bos-token", type=_true_false, metavar="{true,false}",
                   help="lm-eval HFLM's add_bos_token (default: unset, the tokenizer's own behaviour, as lm-eval's default)")
    e.add_argument("--max-length", type=int, help="lm-eval HFLM's max_length: inputs are cut on the left to it "
                   "(default: the model config's length, else the tokenizer's, else 2048, as lm-eval)")
    e.add_argument("--strict", action="store_true", help="fail on the first row that cannot be scored (and on empty "
                   "options) instead of skipping it with a warning")
    e.add_argument("--compare", metavar="LM_EVAL_SAMPLES.jsonl", help="diff every question with lm-eval's --log_samples "
                   "file of the same questions (max |loglik difference|, choices that differ); exit 1 if they differ")
    e.add_argument("--lm-eval-task", metavar="DIR", help="also write the questions scored as an lm-eval task in DIR and "
                   "print the lm_eval command whose samples --compare reads")
    e.add_argument("--log", metavar="EXPERIMENT", help="also log the results as a run of this MLflow experiment")
    _registry_args(e)
    e.set_defaults(fn=_eval)
    cu = sub.add_parser("curate", help="ingest, filter and dedup any corpus (jsonl/parquet/txt/csv/tsv) outside the DAG",
                        description=CURATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cu.add_argument("--input", required=True, metavar="GLOB",
                    help="input files: a glob (quote it), a file, or a folder (every supported file under it)")
    cu.add_argument("--output", required=True, metavar="DIR", help="output folder (created if missing)")
    cu.add_argument("--config", metavar="FILE", help="YAML with optional source/filters/dedup/runner sections")
    cu.add_argument("--index", metavar="DIR", help="a MinHash index of what earlier runs kept: documents duplicating it "
                    "are rejected, this run's keepers are added (created if missing). Curate time slices one by one "
                    "with the same --index and a later slice never re-adds what an earlier one kept")
    cu.set_defaults(fn=_curate)
    _source_parser(sub)
    rf = sub.add_parser("refresh", help="one model refresh through Prefect: pull, repro, register/gate/promote, push, commit")
    rf.add_argument("--root", default=".", help="the repository (default: here)")
    rf.add_argument("--profile", help="profile merged into params.yaml for this refresh (e.g. tiny or profiles/tiny.yaml)")
    rf.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param, as `dvc exp run -S` (repeatable), e.g. -S pretrain.steps=200")
    rf.add_argument("--gpu-deployment", help="run GPU stages on this deployment (e.g. fluxforge-gpu-stage/gpu)")
    rf.add_argument("--no-push", action="store_true", help="do not push to the DVC remote")
    rf.add_argument("--no-commit", action="store_true", help="do not commit params.yaml and dvc.lock")
    rf.set_defaults(fn=_refresh)
    dp = sub.add_parser("deploy", help="create the nightly refresh and GPU-stage deployments on a Prefect server")
    dp.add_argument("--root", default=".", help="the repository the workers run in (a path they can reach)")
    dp.add_argument("--cron", default="0 3 * * *", help="refresh schedule (default: daily at 03:00)")
    dp.add_argument("--timezone", default="UTC")
    dp.add_argument("--cpu-pool", default="fluxforge-cpu")
    dp.add_argument("--gpu-pool", default="fluxforge-gpu")
    dp.add_argument("--gpu-pool-type", choices=("process", "kubernetes"), default="process")
    dp.add_argument("--gpu-job-variables", help='JSON, e.g. \'{"env": {"CUDA_VISIBLE_DEVICES": "0"}}\'')
    dp.add_argument("--gpu-root", help="the GPU machine's checkout of the same commit, as its worker sees it "
                    "(default: --root); the two machines share only the Prefect API and the DVC remote")
    dp.set_defaults(fn=_deploy)
    mg = sub.add_parser("merge", help="merge models: interpolate | slerp | ema | task_arithmetic | ties | dare_ties | magmax "
                        "| instruction_residual",
                        description="Merge HF model directories or registry URIs (models:/NAME@ALIAS) into --out. "
                        "interpolate A B and slerp A B (--weight = B's weight, 0.5); ema BASE T1 .. Tn (FoMo's recursion, "
                        "--weight = the newest's weight); task_arithmetic, ties, dare_ties, magmax BASE FT1 .. FTn "
                        "(--weight = scale of the merged task vector, 1; --density = share of each task vector TIES/DARE "
                        "keep, 0.3; --seed = DARE's drop masks); instruction_residual INSTRUCT BASE UPDATED_BASE: adds "
                        "INSTRUCT - BASE onto UPDATED_BASE (--weight = scale), so a continually pretrained base regains "
                        "the instruct model's behaviour without re-tuning.")
    mg.add_argument("method", help="the merge (see above); an unknown one exits 2 naming the known ones")
    mg.add_argument("models", nargs="+", help="model directories or models:/ URIs, in the order the method takes")
    mg.add_argument("--out", required=True, help="output HF directory (written atomically)")
    mg.add_argument("--weight", type=float, default=None, help="the method's weight or scale (see above)")
    mg.add_argument("--density", type=float, default=None, help="ties, dare_ties: share of each task vector kept")
    mg.add_argument("--seed", type=int, default=None, help="dare_ties: seed of the random drop masks")
    mg.set_defaults(fn=_merge)
    pr = sub.add_parser("promote", help="make a registered version the champion (refuses a failed gate without --force)")
    pr.add_argument("name", help="registered model name, e.g. fluxforge-lm")
    pr.add_argument("version", help="version number to promote")
    pr.add_argument("--reason", default="manual", help="recorded in the champion history")
    pr.add_argument("--force", action="store_true", help="promote even though the version's gate failed")
    _registry_args(pr)
    pr.set_defaults(fn=_promote)
    rb = sub.add_parser("rollback", help="give champion back to the version that held it before")
    rb.add_argument("name", help="registered model name")
    rb.add_argument("--to", help="a version to roll back to (default: the previous champion in the history)")
    rb.add_argument("--reason", default="rollback", help="recorded in the champion history")
    _registry_args(rb)
    rb.set_defaults(fn=_rollback)
    li = sub.add_parser("lineage", help="trace NAME@ALIAS (or NAME/VERSION) back to the raw data")
    li.add_argument("ref", help="e.g. fluxforge-lm@champion, fluxforge-lm/3, models:/fluxforge-lm@challenger")
    _registry_args(li)
    li.set_defaults(fn=_lineage)
    rb = sub.add_parser("rebuild", help="rebuild a registered version from its lineage and compare every output",
                        description="Check out the commit a registered version records (a temporary git worktree sharing "
                        "this repository's DVC cache), take the inputs from the cache or the DVC remote, rerun its chain "
                        "from --from (default: the first training stage) and the evaluation, and compare every output hash "
                        "with the lineage, a differing model weight by weight, the evaluation with the version's numbers "
                        "and the rebuilt model with the registry's copy. Exit 0: all identical; 1: something differs; "
                        "2: the version cannot be rebuilt (e.g. registered from an uncommitted tree).")
    rb.add_argument("ref", help="e.g. fluxforge-lm@champion, fluxforge-lm/3, models:/fluxforge-lm/3")
    rb.add_argument("--from", dest="from_stage", metavar="STAGE", help="first stage to rerun (default: the first training stage)")
    rb.add_argument("--root", default=".", help="the repository (default: here)")
    rb.add_argument("--keep", action="store_true", help="keep the worktree for inspection (remove it with git worktree remove)")
    _registry_args(rb)
    rb.set_defaults(fn=_rebuild)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.fn(args))
