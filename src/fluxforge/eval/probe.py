"""Capability probes: a small, fixed slice of the evaluation run during training.

The same questions and documents at every probe make the points of a curve comparable;
taking the first N per domain in id order makes them the same across runs and resumes.
Probe numbers are for curves (learning, forgetting, the stability gap), not for the
headline results, which the evaluate stage computes on the full sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from fluxforge.eval.scoring import perplexity, score_mcq
from fluxforge.io import read_jsonl

CapabilityProbe = Callable[[PreTrainedModel], dict[str, float]]  # a training loop's probe: model -> named scores


def capability_probe(tok: PreTrainedTokenizerFast, questions: Sequence[dict], heldout: Sequence[dict], per_domain: int,
                     seq_len: int, batch_size: int = 32) -> CapabilityProbe:
    """A probe returning ``{domain}_acc`` and ``{domain}_ppl`` for each domain in the questions."""
    domains = sorted({q["domain"] for q in questions})
    qs = {d: sorted((q for q in questions if q["domain"] == d), key=lambda q: q["id"])[:per_domain] for d in domains}
    docs = {d: [h["text"] for h in heldout if h["domain"] == d][: max(per_domain // 4, 4)] for d in domains}

    def probe(model) -> dict[str, float]:  # noqa: ANN001 - any HF causal LM
        out: dict[str, float] = {}
        for d in domains:
            res = score_mcq(model, tok, qs[d], batch_size=batch_size * 2)
            out[f"{d}_acc"] = float(np.mean([r["correct"] for r in res])) if res else float("nan")
            if docs[d]:
                out[f"{d}_ppl"] = perplexity(model, tok, docs[d], seq_len, batch_size)["ppl"]
        return out

    return probe


def world_probe(tok: PreTrainedTokenizerFast, eval_dir: Path | str, per_domain: int, seq_len: int) -> CapabilityProbe:
    """The capability probe on the generated world's questions and held-out documents (``data/world/eval``)."""
    eval_dir = Path(eval_dir)
    return capability_probe(tok, read_jsonl(eval_dir / "mcq.jsonl"), read_jsonl(eval_dir / "heldout.jsonl"), per_domain, seq_len)
