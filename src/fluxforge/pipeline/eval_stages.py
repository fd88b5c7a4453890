"""The end of the DAG: evaluate every model, register the final one, write the report."""

from __future__ import annotations

import json
import logging

import pandas as pd

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.tokenize import load_tokenizer
from fluxforge.errors import DataError
from fluxforge.eval.evaluate import accuracy_table, distillation_summary, evaluate_model
from fluxforge.eval.stats import binomial_vs_chance, mcnemar_one_sided
from fluxforge.io import atomic_file, digest_path, read_jsonl, write_json
from fluxforge.track.runs import stage_run
from fluxforge.train.model import load_model, new_model

log = logging.getLogger(__name__)


def model_names(params: Params) -> list[str]:
    """Every model the DAG produces, in order, after an untrained baseline."""
    return ["untrained", "pretrain", *[f"continual/{t}" for t in params.continual.tasks], "student"]


def evaluate(params: Params) -> None:
    heldout = read_jsonl(P.WORLD / "eval" / "heldout.jsonl")
    questions = read_jsonl(P.WORLD / "eval" / "mcq.jsonl")
    for domain in ("general", "cyber"):
        if not any(q["domain"] == domain for q in questions) or not any(h["domain"] == domain for h in heldout):
            raise DataError(f"the world has no {domain} questions or held-out documents to evaluate on; "
                            f"raise the world sizes in params (world.{domain}) or keep world.qa_fraction away from 0 and 1")
    results, per_question = {}, []
    for name in model_names(params):
        if name == "untrained":
            model, tok = new_model(params.model, P.TOKENS), load_tokenizer(P.TOKENS)
        else:
            model, tok = load_model(P.model_dir(name))
        r, per_q = evaluate_model(model, tok, heldout, questions, params.evaluate.seq_len, params.evaluate.batch_size)
        results[name] = r
        per_question.append(per_q.assign(model=name))
        log.info("evaluate %-28s general ppl %8.1f acc %.3f | cyber ppl %8.1f acc %.3f", name,
                 r["general"]["ppl"], r["general"]["acc"], r["cyber"]["ppl"], r["cyber"]["acc"])
    per_q = pd.concat(per_question, ignore_index=True)
    tests = significance(per_q, final=params.continual.final)
    teacher = params.teacher_names()[0]
    summary = {"models": results, "tests": tests, "final": params.continual.final, "questions": len(questions),
               "eval_set_digest": digest_path(P.WORLD / "eval"),
               "distill": distillation_summary(results, teacher) if teacher in results else {}}
    if summary["distill"]:
        d = summary["distill"]
        log.info("distill: student has %.2fx the teacher's parameters, runs %.2fx as fast, keeps %.0f%% / %.0f%% of its "
                 "above-chance general / cyber accuracy", d["size_ratio"], d["speedup"], 100 * d["general_acc_fraction"],
                 100 * d["cyber_acc_fraction"])
    write_json(P.METRICS / "eval.json", summary)
    P.REPORTS.mkdir(parents=True, exist_ok=True)
    with atomic_file(P.REPORTS / "eval_questions.parquet", "wb") as fh:
        per_q.to_parquet(fh, index=False)
    table = accuracy_table(results)
    with atomic_file(P.PLOTS / "eval" / "accuracy.csv") as fh:
        table.to_csv(fh, index=False)
    with stage_run("evaluate", params, params.evaluate.model_dump(), inputs={"models": P.MODELS, "eval_sets": P.WORLD / "eval"}) as run:
        run.metrics({"tests": tests, "distill": summary["distill"]})
        for name, r in results.items():
            run.metrics({name.replace("/", "_"): {d: r[d] for d in ("general", "cyber")}})
        run.artifact(P.PLOTS / "eval" / "accuracy.csv")


def significance(per_q: pd.DataFrame, final: str) -> dict:
    """Cyber accuracy of the final model against the pretrained one and against chance (one-sided)."""
    def correct(model: str, domain: str) -> list[bool]:
        return per_q[(per_q["model"] == model) & (per_q["domain"] == domain)].sort_values("id")["correct"].tolist()

    out = {}
    for domain in ("cyber", "general"):
        after, before = correct(final, domain), correct("pretrain", domain)
        n = len(after)
        mc = mcnemar_one_sided(after, before)
        out[domain] = {
            "n": n, "acc_pretrain": sum(before) / n, "acc_final": sum(after) / n,
            "gain": (sum(after) - sum(before)) / n,
            "p_final_vs_chance": binomial_vs_chance(sum(after), n),
            "p_pretrain_vs_chance": binomial_vs_chance(sum(before), n),
            "p_final_vs_pretrain": mc["p_value"], "gained": mc["gained"], "lost": mc["lost"],
        }
    return out


def register(params: Params) -> None:
    from fluxforge.track.registry import register_and_gate

    ev = json.loads((P.METRICS / "eval.json").read_text())
    decision = register_and_gate(params, ev)
    write_json(P.METRICS / "register.json", decision)
    log.info("register: %s version %s is challenger; promoted to champion: %s", decision["model_name"],
             decision["version"], decision["promoted"])
    for r in decision["reasons"]:
        log.info("  gate: %s", r)


def report(params: Params) -> None:
    from fluxforge.eval.report import build_report

    path = build_report(params, P.REPORTS / "report.html")
    log.info("report: %s", path.resolve())
