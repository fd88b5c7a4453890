"""DVC stage `stream`: a continual stream of tasks with planned replay, stability strategies, schedules and merging."""

import logging
import shutil

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.continual.runner import GAP_FIELDS, EvalSets, budget_columns, run_stream, summarize, tracked, without_replay
from fluxforge.data.tokenize import load_pretrained_tokenizer
from fluxforge.io import write_json
from fluxforge.runtime import set_threads, stage
from fluxforge.track.runs import stage_run
from fluxforge.train.job import write_rows
from fluxforge.train.model import count_params, save_model

log = logging.getLogger("fluxforge.stage.stream")


@stage
def main(params: Params) -> None:
    s, out_model = params.stream, P.MODELS / "stream"
    if s is None or not s.enabled:  # the outputs still exist (DVC needs them), empty
        write_json(P.METRICS / "stream.json", {"skipped": "params has no stream section (or stream.enabled: false)"})
        write_rows([], P.PLOTS / "stream" / "gap.csv", GAP_FIELDS)
        shutil.rmtree(out_model, ignore_errors=True)
        out_model.mkdir(parents=True)
        return
    set_threads()
    tok, evals = load_pretrained_tokenizer(P.TOKENS), EvalSets.for_stream(params, s)
    with stage_run("stream", params, s.model_dump(), inputs={"tokens": P.TOKENS}) as run:
        res = run_stream(params, s, tok, evals)
        plain = run_stream(params, other, tok, evals, with_replay=False) if (other := without_replay(s, res)) else None
        write_json(P.METRICS / "stream.json", summary := summarize(params, s, res, plain))
        write_rows(res["gap"], P.PLOTS / "stream" / "gap.csv", GAP_FIELDS)
        save_model(res["final"], tok, out_model, {"name": "stream", "stage": "stream", **res["lineage"], "tasks": res["order"],
                                                  "replay_ratios": res["ratios"], "parameters": count_params(res["final"]),
                                                  "schedule": params.stream_train().schedule, "method": res["method"],
                                                  "budget": {"kind": s.budget.kind, **res["budget"]["methods"][s.method]}})
        metrics, tags = tracked(summary)
        if "parent_version" in res["lineage"]:
            tags.update({"fluxforge.parent": s.init, "fluxforge.parent_version": res["lineage"]["parent_version"]})
        run.metrics(metrics)
        run.tags(tags)
        run.table(budget_columns(res["budget"]), "stream_budget.json")
    promise = summary["replay"]["promise"]
    log.info("stream: %s; base-data perplexity rise %s; planner promise %s", " -> ".join(res["order"]),
             {k: f"{v:+.1%}" for k, v in summary["general_ppl_rise"].items()},
             f"held in {promise['held']} of {promise['planned']} tasks" if promise else "(no planned task)")


if __name__ == "__main__":
    main()
