"""Perplexity and multiple-choice scoring by log-likelihood.

Multiple choice follows lm-evaluation-harness: the continuation is " " + option, its
tokens are found by encoding context+continuation and cutting at the context length,
``acc`` takes the option with the highest summed log-likelihood and ``acc_norm``
divides that sum by the option's length in characters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerFast


def _pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids, attention mask) tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def perplexity(model: PreTrainedModel, tok: PreTrainedTokenizerFast, texts: Sequence[str], seq_len: int, batch_size: int = 32) -> dict[str, float]:
    """Token-level perplexity and bits per byte over texts, each scored in windows of ``seq_len``."""
    model.eval()
    eos = tok.eos_token_id
    windows: list[list[int]] = []
    for ids in tok(list(texts), add_special_tokens=False)["input_ids"]:
        ids = [eos] + ids + [eos]
        for i in range(0, len(ids) - 1, seq_len):
            chunk = ids[i : i + seq_len + 1]
            if len(chunk) > 1:
                windows.append(chunk)
    nll, count = 0.0, 0
    for b in range(0, len(windows), batch_size):
        ids, mask = _pad(windows[b : b + batch_size], tok.pad_token_id)
        logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.float()
        lp = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        m = mask[:, 1:].bool()
        nll += lp[m].sum().item()
        count += int(m.sum())
    n_bytes = sum(len(t.encode("utf-8")) for t in texts) + len(texts)
    return summarize(nll, count, n_bytes)


def summarize(nll: float, tokens: int, n_bytes: int) -> dict[str, float]:
    """Perplexity, mean loss and bits per byte from summed negative log-likelihood (so parts can be pooled)."""
    return {
        "ppl": math.exp(nll / max(tokens, 1)),
        "loss": nll / max(tokens, 1),
        "bpb": nll / math.log(2) / max(n_bytes, 1),
        "tokens": tokens,
        "nll": nll,
        "bytes": n_bytes,
    }


def _request_tokens(tok: PreTrainedTokenizerFast, context: str, continuation: str) -> tuple[list[int], list[int]]:
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    # lm-eval: context tokens are the prefix of the whole encoding of the same length
    return [tok.eos_token_id] + whole[: len(ctx)], whole[len(ctx) :]


@torch.no_grad()
def option_loglikelihoods(model: PreTrainedModel, tok: PreTrainedTokenizerFast, context: Sequence[str], continuation: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Summed log-probability of each continuation given its context."""
    model.eval()
    reqs = [_request_tokens(tok, c, x) for c, x in zip(context, continuation, strict=True)]
    out = np.zeros(len(reqs))
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][0]) - len(reqs[i][1]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        ids, mask = _pad([reqs[i][0] + reqs[i][1] for i in idx], tok.pad_token_id)
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for r, i in enumerate(idx):
            n_ctx, n_cont = len(reqs[i][0]), len(reqs[i][1])
            targets = torch.tensor(reqs[i][1])
            rows = logp[r, n_ctx - 1 : n_ctx - 1 + n_cont]
            out[i] = rows.gather(1, targets[:, None]).sum().item()
    return out


def score_mcq(model: PreTrainedModel, tok: PreTrainedTokenizerFast, questions: Sequence[dict], batch_size: int = 64) -> list[dict]:
    """Per-question results: chosen option by acc and acc_norm, and correctness."""
    ctx, cont = [], []
    for q in questions:
        for opt in q["options"]:
            ctx.append(q["question"])
            cont.append(" " + opt)
    ll = option_loglikelihoods(model, tok, ctx, cont, batch_size)
    results, k = [], 0
    for q in questions:
        n = len(q["options"])
        scores = ll[k : k + n]
        norm = scores / np.array([len(" " + o) for o in q["options"]])
        k += n
        pred, pred_norm = int(np.argmax(scores)), int(np.argmax(norm))
        results.append({"id": q["id"], "pred": pred, "pred_norm": pred_norm,
                        "correct": pred == q["answer"], "correct_norm": pred_norm == q["answer"]})
    return results
