"""Evaluate a set of models on the world's held-out documents and multiple-choice questions."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from fluxforge.errors import DataError
from fluxforge.eval.scoring import perplexity, score_mcq, summarize
from fluxforge.runtime import set_threads

log = logging.getLogger(__name__)
DOMAINS = ("general", "cyber")
ModelLoader = Callable[[str], tuple[PreTrainedModel, PreTrainedTokenizerFast]]  # model name -> (model, tokenizer)


def check_eval_sets(heldout: Sequence[dict], questions: Sequence[dict]) -> None:
    """Every domain needs questions and held-out documents: the significance tests and the gate read both."""
    for domain in DOMAINS:
        if not any(q["domain"] == domain for q in questions) or not any(h["domain"] == domain for h in heldout):
            raise DataError(f"the world has no {domain} questions or held-out documents to evaluate on; "
                            f"raise the world sizes in params (world.{domain}) or keep world.qa_fraction away from 0 and 1")


def evaluate_models(names: Sequence[str], load: ModelLoader, heldout: Sequence[dict], questions: Sequence[dict],
                    seq_len: int, batch_size: int) -> tuple[dict[str, dict], pd.DataFrame]:
    """Evaluate each named model in turn; return ({name: results}, per-question results of all, with a ``model`` column).

    One model is loaded at a time, so memory holds one model however many the DAG made.
    """
    results, per_question = {}, []
    for name in names:
        model, tok = load(name)
        r, per_q = evaluate_model(model, tok, heldout, questions, seq_len, batch_size)
        results[name] = r
        per_question.append(per_q.assign(model=name))
        log.info("evaluate %-28s general ppl %8.1f acc %.3f | cyber ppl %8.1f acc %.3f", name,
                 r["general"]["ppl"], r["general"]["acc"], r["cyber"]["ppl"], r["cyber"]["acc"])
    return results, pd.concat(per_question, ignore_index=True)


def evaluate_model(model: PreTrainedModel, tok: PreTrainedTokenizerFast, heldout: Sequence[dict], questions: Sequence[dict],
                   seq_len: int, batch_size: int) -> tuple[dict, pd.DataFrame]:
    """Return ({domain: {...}, "slices": {slice: {...}}}, per-question results)."""
    set_threads()
    held = pd.DataFrame(heldout)
    qs = pd.DataFrame(questions)
    out: dict = {"slices": {}}
    per_q = pd.DataFrame(score_mcq(model, tok, questions, batch_size=batch_size * 2))
    per_q = per_q.merge(qs[["id", "domain", "slice", "relation", "changed"]], on="id")
    per_slice = {sl: perplexity(model, tok, g["text"].tolist(), seq_len, batch_size) for sl, g in held.groupby("slice")}
    for domain, group in held.groupby("domain"):
        parts = [per_slice[sl] for sl in group["slice"].unique()]
        m = summarize(sum(p["nll"] for p in parts), sum(p["tokens"] for p in parts), sum(p["bytes"] for p in parts))
        out[domain] = {"ppl": m["ppl"], "bpb": m["bpb"]}
    for domain, group in per_q.groupby("domain"):
        out.setdefault(domain, {}).update({"acc": float(group["correct"].mean()), "acc_norm": float(group["correct_norm"].mean()),
                                           "questions": int(len(group))})
    for sl, m in per_slice.items():
        out["slices"].setdefault(sl, {})["ppl"] = m["ppl"]
    for sl, group in per_q.groupby("slice"):
        out["slices"].setdefault(sl, {})["acc"] = float(group["correct"].mean())
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["tokens_per_s"] = forward_throughput(model, seq_len, batch_size)
    return out, per_q


@torch.no_grad()
def forward_throughput(model: PreTrainedModel, seq_len: int, batch_size: int, repeats: int = 5) -> float:
    """Inference tokens per second of a full forward pass (median of ``repeats``, after one warm-up).

    Random token ids: speed does not depend on the text, and the same shapes for every model
    make the numbers comparable (the student's speedup over its teacher).
    """
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=g)
    model(input_ids=ids)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(input_ids=ids)
        times.append(time.perf_counter() - t)
    return batch_size * seq_len / statistics.median(times)


def distillation_summary(results: Mapping[str, dict], teacher: str, student: str = "student") -> dict:
    """The student's quality as a fraction of its teacher's, its size and its speedup."""
    t, s = results[teacher], results[student]
    out = {"teacher": teacher, "student": student,
           "parameters": {"teacher": t["parameters"], "student": s["parameters"]},
           "size_ratio": s["parameters"] / t["parameters"],
           "speedup": s["tokens_per_s"] / t["tokens_per_s"]}
    for d in DOMAINS:
        # accuracy above chance is what was learned; 0.25 = four options
        out[f"{d}_acc_fraction"] = (s[d]["acc"] - 0.25) / (t[d]["acc"] - 0.25) if t[d]["acc"] > 0.25 else float("nan")
        out[f"{d}_ppl_ratio"] = t[d]["ppl"] / s[d]["ppl"]  # > 1: the student predicts held-out text better
    return out


def accuracy_table(results: Mapping[str, dict]) -> pd.DataFrame:
    """One row per model and domain (the DVC plot of the evaluate stage)."""
    rows = []
    for model, r in results.items():
        for domain in DOMAINS:
            if domain in r:
                rows.append({"model": model, "domain": domain, **{k: r[domain].get(k, np.nan) for k in ("acc", "acc_norm", "ppl", "bpb")}})
    return pd.DataFrame(rows)
