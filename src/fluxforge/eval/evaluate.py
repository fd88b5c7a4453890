"""Evaluate a set of models on the world's held-out documents and multiple-choice questions."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from fluxforge.eval.scoring import perplexity, score_mcq, summarize
from fluxforge.train.loop import set_threads

log = logging.getLogger(__name__)


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
    return out, per_q


def accuracy_table(results: Mapping[str, dict]) -> pd.DataFrame:
    rows = []
    for model, r in results.items():
        for domain in ("general", "cyber"):
            if domain in r:
                rows.append({"model": model, "domain": domain, **{k: r[domain].get(k, np.nan) for k in ("acc", "acc_norm", "ppl", "bpb")}})
    return pd.DataFrame(rows)
