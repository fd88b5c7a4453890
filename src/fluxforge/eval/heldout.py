"""Held-out documents and questions by slice: the measurement behind the studies and the stream's matrices.

The generated world keeps aside documents (``heldout.jsonl``) and questions (``mcq.jsonl``) per slice; a
technique study or a continual task is judged on the slices it concerns, by held-out loss, perplexity and
multiple-choice accuracy (the same log-likelihood scoring as the evaluate stage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from fluxforge.eval.scoring import perplexity, score_mcq
from fluxforge.io import read_jsonl


class HeldOut:
    """The world's held-out documents and questions, read once and selected by slice."""

    def __init__(self, eval_dir: Path | str) -> None:
        eval_dir = Path(eval_dir)
        self.documents = read_jsonl(eval_dir / "heldout.jsonl")
        self.questions = read_jsonl(eval_dir / "mcq.jsonl")

    def docs(self, slices: Sequence[str]) -> list[str]:
        return [h["text"] for h in self.documents if h["slice"] in slices]

    def questions_of(self, slices: Sequence[str]) -> list[dict]:
        return [q for q in self.questions if q["slice"] in slices]

    def measure(self, model: torch.nn.Module, tok, slices: Sequence[str], seq_len: int, batch_size: int) -> dict:  # noqa: ANN001
        """Held-out loss/perplexity and question accuracy of ``model`` on ``slices``."""
        held, qs = self.docs(slices), self.questions_of(slices)
        ppl = perplexity(model, tok, held, seq_len, batch_size)
        res = score_mcq(model, tok, qs, batch_size=batch_size * 2)
        return {"heldout_loss": math.log(ppl["ppl"]), "heldout_ppl": ppl["ppl"],
                "acc": sum(r["correct"] for r in res) / max(len(res), 1), "questions": len(res), "heldout_docs": len(held)}
