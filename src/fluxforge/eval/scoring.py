"""Perplexity and multiple-choice scoring by log-likelihood.

Multiple choice equals lm-evaluation-harness (``HFLM`` with ``add_bos_token=True``,
``target_delimiter: " "``), request by request; ``tests/test_lmeval_parity.py`` checks it:

* the context is prefixed with EOS, the document boundary our models are trained after
  (our tokenizer adds no BOS by itself, and its BOS is the EOS; plain ``HFLM`` would
  score the context with no prefix at all, which gives other numbers);
* trailing whitespace of the context moves to the continuation, whose tokens are found by
  encoding context+continuation and cutting at the context's token length;
* inputs longer than the model's positions + 1 lose tokens on the left;
* ``acc`` takes the option with the highest summed log-likelihood and ``acc_norm``
  divides that sum by the option's length in characters, without the delimiter.

Options that share a context are scored from one pass over that context: its key/value
cache is reused by each option, so a 4-option question costs about one context pass
instead of four (lm-eval runs the whole context once per option).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerFast


def _pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids, attention mask) tensors."""
    width = max(len(s) for s in seqs)
    # one tensor from padded lists: a tensor per row costs more than the forward pass of short rows
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
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


def _max_length(model: PreTrainedModel) -> int | None:
    """The context length lm-eval assumes for this model (first of its config attributes that is set)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    return None


def _request_tokens(tok: PreTrainedTokenizerFast, context: Sequence[str], continuation: Sequence[str],
                    max_len: int | None) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per request, built as lm-eval builds them (see the module docstring)."""
    pairs = []
    for c, x in zip(context, continuation, strict=True):
        n_spaces = len(c) - len(c.rstrip())
        pairs.append((c[: len(c) - n_spaces], c[len(c) - n_spaces :] + x))
    uniq = list(dict.fromkeys(c for c, _ in pairs))
    # one batched call per kind of string: tokenising request by request costs as much as the forward passes
    n_ctx = dict(zip(uniq, (len(ids) for ids in tok(uniq, add_special_tokens=False)["input_ids"]), strict=True))
    whole = tok([c + x for c, x in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for (c, _), ids in zip(pairs, whole, strict=True):
        ctx, cont = [tok.eos_token_id] + ids[: n_ctx[c]], ids[n_ctx[c] :]
        if max_len is not None and len(ctx) + len(cont) > max_len + 1:
            if len(cont) > max_len:
                raise ValueError(f"continuation of {len(cont)} tokens does not fit the model's {max_len} positions")
            ctx = (ctx + cont)[-(max_len + 1) : -len(cont)]
        out.append((ctx, cont))
    return out


def _cache_kwarg(model: PreTrainedModel) -> str:
    """``cache`` in recent transformers 5.x, ``past_key_values`` before (deprecated, then removed)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _score_batch(model: PreTrainedModel, groups: Sequence[tuple[tuple[int, ...], list[tuple[int, list[int]]]]],
                 pad_id: int) -> list[tuple[int, float]]:
    """Log-likelihoods of the continuations of a batch of context groups, as (request index, value).

    Every context but its last token goes through the base model once (no LM head, its logits
    are never used); its cache is copied to each of the group's continuations, which are fed as
    [last context token] + continuation[:-1] at the positions they have in the full sequence.
    Groups whose context is a single token have no prefix: ``groups`` holds only one kind.
    """
    prefixes = [list(ctx[:-1]) for ctx, _ in groups]
    rows = [(g, i, [ctx[-1]] + cont[:-1], cont) for g, (ctx, reqs) in enumerate(groups) for i, cont in reqs]
    tail_ids, tail_mask = _pad([r[2] for r in rows], pad_id)
    targets, _ = _pad([r[3] for r in rows], pad_id)
    group_of = torch.tensor([r[0] for r in rows])
    start = torch.tensor([len(prefixes[g]) for g in group_of.tolist()])
    kwargs: dict = {"attention_mask": tail_mask}
    if prefixes[0]:
        ids, mask = _pad(prefixes, pad_id)
        out = model.base_model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        cache.reorder_cache(group_of)
        kwargs = {_cache_kwarg(model): cache, "attention_mask": torch.cat([mask[group_of], tail_mask], dim=1)}
    position_ids = start[:, None] + torch.arange(tail_ids.shape[1])[None, :]
    logits = model(input_ids=tail_ids, position_ids=position_ids, **kwargs).logits.float()
    picked = F.log_softmax(logits, dim=-1).gather(2, targets[:, :, None])[:, :, 0]
    sums = (picked * tail_mask).sum(dim=1)
    return [(r[1], float(v)) for r, v in zip(rows, sums.tolist(), strict=True)]


@torch.no_grad()
def option_loglikelihoods(model: PreTrainedModel, tok: PreTrainedTokenizerFast, context: Sequence[str], continuation: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Summed log-probability of each continuation given its context (lm-eval's ``loglikelihood``).

    ``batch_size`` bounds the continuations per forward pass; the requests of one context stay in
    one batch (so a context with more continuations than that makes a larger batch).
    """
    model.eval()
    reqs = _request_tokens(tok, context, continuation, _max_length(model))
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (ctx, cont) in enumerate(reqs):
        if cont:  # an empty continuation has log-likelihood 0
            groups.setdefault(tuple(ctx), []).append((i, cont))
    # longest first, like lm-eval: the first batch shows the memory peak. By continuation length first: every
    # continuation row is padded to the batch's longest, while a context is padded once for all its options.
    ordered = sorted(groups.items(), key=lambda g: (-max(len(c) for _, c in g[1]), -len(g[0])))
    out = np.zeros(len(reqs))
    for kind in (True, False):  # contexts with a prefix to cache, then single-token contexts
        todo = [g for g in ordered if (len(g[0]) > 1) == kind]
        while todo:
            n, take = 0, 0
            while take < len(todo) and (take == 0 or n + len(todo[take][1]) <= batch_size):
                n += len(todo[take][1])
                take += 1
            for i, value in _score_batch(model, todo[:take], tok.pad_token_id):
                out[i] = value
            todo = todo[take:]
    return out


def score_mcq(model: PreTrainedModel, tok: PreTrainedTokenizerFast, questions: Sequence[dict], batch_size: int = 64) -> list[dict]:
    """Per-question results: chosen option by acc and acc_norm, and correctness (lm-eval's definitions)."""
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
        norm = scores / np.array([len(o) for o in q["options"]])  # lm-eval: characters of the choice, delimiter excluded
        k += n
        pred, pred_norm = int(np.argmax(scores)), int(np.argmax(norm))
        results.append({"id": q["id"], "pred": pred, "pred_norm": pred_norm,
                        "correct": pred == q["answer"], "correct_norm": pred_norm == q["answer"]})
    return results
