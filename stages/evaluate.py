"""DVC stage `evaluate`: perplexity and multiple-choice accuracy of every model, per domain and slice, with tests."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.tokenize import load_tokenizer
from fluxforge.eval.evaluate import accuracy_table, check_eval_sets, distillation_summary, evaluate_models
from fluxforge.eval.stats import significance
from fluxforge.io import atomic_file, digest_path, read_jsonl, write_json
from fluxforge.orchestrate import dag
from fluxforge.runtime import stage
from fluxforge.track.runs import stage_run
from fluxforge.train.model import load_model, new_model

log = logging.getLogger("fluxforge.stage.evaluate")


@stage
def main(params: Params) -> None:
    heldout, questions = read_jsonl(P.WORLD / "eval" / "heldout.jsonl"), read_jsonl(P.WORLD / "eval" / "mcq.jsonl")
    check_eval_sets(heldout, questions)

    def load(name: str) -> tuple:
        if name == "untrained":  # the seeded model pretraining starts from
            return new_model(params.model, P.TOKENS), load_tokenizer(P.TOKENS)
        return load_model(P.model_dir(name))

    models = ["untrained", *(m.relative_to(P.MODELS).as_posix() for m in dag.inputs_under("evaluate", P.MODELS))]
    results, per_q = evaluate_models(models, load, heldout, questions, params.evaluate.seq_len, params.evaluate.batch_size)
    tests, teacher = significance(per_q, final=params.continual.final), params.teacher_names()[0]
    distill = distillation_summary(results, teacher) if teacher in results else {}
    write_json(P.METRICS / "eval.json", {"models": results, "tests": tests, "final": params.continual.final,
                                         "questions": len(questions), "eval_set_digest": digest_path(P.WORLD / "eval"),
                                         "distill": distill})
    with atomic_file(P.REPORTS / "eval_questions.parquet", "wb") as fh:
        per_q.to_parquet(fh, index=False)
    with atomic_file(P.PLOTS / "eval" / "accuracy.csv") as fh:
        accuracy_table(results).to_csv(fh, index=False)
    with stage_run("evaluate", params, params.evaluate.model_dump(), inputs={"models": P.MODELS, "eval_sets": P.WORLD / "eval"}) as run:
        run.metrics({"tests": tests, "distill": distill})
        for name, r in results.items():
            run.metrics({name.replace("/", "_"): {d: r[d] for d in ("general", "cyber")}})
        run.artifact(P.PLOTS / "eval" / "accuracy.csv")
    if distill:
        log.info("distill: student has %.2fx the teacher's parameters, runs %.2fx as fast, keeps %.0f%% / %.0f%% of its "
                 "above-chance general / cyber accuracy", distill["size_ratio"], distill["speedup"],
                 100 * distill["general_acc_fraction"], 100 * distill["cyber_acc_fraction"])


if __name__ == "__main__":
    main()
