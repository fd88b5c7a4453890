"""Perplexity and multiple-choice scoring by log-likelihood.

Multiple choice equals lm-evaluation-harness 0.4.13's ``HFLM`` (``model=hf``) request by
request, for any tokenizer; ``tests/test_lmeval_parity.py`` checks it against lm-eval itself on
Llama-, GPT-2- and Qwen2-style tokenizers. The rules, all lm-eval's:

* the tokenizer is the one ``HFLM`` loads: as saved when ``add_bos_token`` is None (lm-eval's
  default), else rebuilt with that setting (``AutoTokenizer.from_pretrained(..., add_bos_token=...)``);
* a string is encoded with the tokenizer's special tokens (``add_special_tokens=add_bos_token``
  when that is set), unless it already starts with the prefix token's text. So the context starts
  with whatever the tokenizer puts first: BOS for a Llama-style tokenizer whose post-processor adds
  it, nothing for GPT-2 or Qwen2 style (and for this project's own tokenizer) unless
  ``add_bos_token=True``;
* an empty context is the prefix token alone (BOS, else EOS), or the continuation's first token
  when that is the prefix token;
* trailing whitespace of the context moves to the continuation; the continuation's tokens are
  those of context+continuation after as many tokens as the context alone has;
* inputs longer than ``max_length`` + 1 lose tokens on the left. ``max_length`` is lm-eval's: the
  argument, else the config's ``n_positions``, ``max_position_embeddings`` or ``n_ctx`` (of
  ``text_config`` when there is one), else the tokenizer's ``model_max_length``, else 2048;
* ``acc`` takes the option with the highest summed log-likelihood and ``acc_norm`` divides that
  sum by the option's length in characters, without the delimiter (an empty option's is -inf).

Options that share a context are scored from one pass over that context: its key/value
cache is reused by each option, so a 4-option question costs about one context pass
instead of four (lm-eval runs the whole context once per option).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fluxforge.errors import FluxForgeError

LM_EVAL_VERSION = "0.4.13"  # the lm-evaluation-harness whose HFLM these rules are (tests/test_lmeval_parity.py runs it)
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter: an option's continuation is " " + option
DEFAULT_MAX_LENGTH = 2048  # HFLM's when neither the model config nor the tokenizer gives a length
_TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' model_max_length when unset


class RequestError(FluxForgeError, ValueError):
    """A request lm-eval refuses too (a context with no tokens, a continuation longer than the model's length)."""


class OptionScores(NamedTuple):
    """Per request: summed log-likelihood of the continuation, and whether greedy decoding yields it."""

    loglik: np.ndarray
    is_greedy: np.ndarray


def _pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids, attention mask) tensors."""
    width = max(len(s) for s in seqs)
    # one tensor from padded lists: a tensor per row costs more than the forward pass of short rows
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


@torch.no_grad()
def perplexity(model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: Sequence[str], seq_len: int, batch_size: int = 32) -> dict[str, float]:
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


def lm_eval_tokenizer(tok: PreTrainedTokenizerBase, add_bos_token: bool | None) -> PreTrainedTokenizerBase:
    """The tokenizer ``HFLM(add_bos_token=...)`` works with: ``tok`` itself for None, else a copy with that setting.

    A copy, so the caller's tokenizer (shared with training and perplexity) keeps its own setting;
    setting ``add_bos_token`` rebuilds the post-processor exactly as loading with it does.
    """
    if add_bos_token is None:
        return tok
    out = copy.deepcopy(tok)
    out.add_bos_token = add_bos_token
    return out


def prefix_token_id(tok: PreTrainedTokenizerBase) -> int:
    """lm-eval's prefix token: BOS, else EOS (an empty context, and the "already starts with it" test)."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def resolve_max_length(model: PreTrainedModel, tok: PreTrainedTokenizerBase, max_length: int | None = None) -> int:
    """The input length lm-eval's ``HFLM`` truncates to (see the module docstring)."""
    if max_length:
        return int(max_length)
    cfg = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    tok_max = getattr(tok, "model_max_length", None)
    return int(tok_max) if tok_max is not None and tok_max != _TOKENIZER_INFINITY else DEFAULT_MAX_LENGTH


def encode(tok: PreTrainedTokenizerBase, texts: Sequence[str], add_bos_token: bool | None = None) -> list[list[int]]:
    """lm-eval's ``tok_encode`` of each text, with ``tok`` from :func:`lm_eval_tokenizer` (batched calls: one per flag)."""
    special = True if add_bos_token is None else add_bos_token
    prefix_text = tok.decode(prefix_token_id(tok))
    flags = [special and not t.startswith(prefix_text) for t in texts]
    out: list[list[int]] = [[] for _ in texts]
    for flag in set(flags):
        idx = [i for i, f in enumerate(flags) if f == flag]
        for i, ids in zip(idx, tok([texts[i] for i in idx], add_special_tokens=flag)["input_ids"], strict=True):
            out[i] = list(ids)
    return out


def request_tokens(tok: PreTrainedTokenizerBase, context: Sequence[str], continuation: Sequence[str],
                   add_bos_token: bool | None = None) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per request, as lm-eval's ``loglikelihood`` builds them (module docstring)."""
    tok = lm_eval_tokenizer(tok, add_bos_token)
    prefix = prefix_token_id(tok)
    out: list[tuple[list[int], list[int]]] = [([], []) for _ in context]
    empty = [i for i, c in enumerate(context) if c == ""]
    if empty:
        for i, ids in zip(empty, tok([continuation[i] for i in empty], add_special_tokens=False)["input_ids"], strict=True):
            out[i] = ([prefix], list(ids)) if list(ids[:1]) != [prefix] else ([prefix], list(ids[1:]))
    rest = [i for i, c in enumerate(context) if c != ""]
    pairs = []
    for i in rest:
        c, x = context[i], continuation[i]
        n_spaces = len(c) - len(c.rstrip())
        pairs.append((c[: len(c) - n_spaces], c[len(c) - n_spaces :] + x))
    # one batched call per kind of string: tokenising request by request costs as much as the forward passes
    uniq = list(dict.fromkeys(c for c, _ in pairs))
    ctx_ids = dict(zip(uniq, encode(tok, uniq, add_bos_token), strict=True))
    whole = encode(tok, [c + x for c, x in pairs], add_bos_token)
    for i, (c, _), ids in zip(rest, pairs, whole, strict=True):
        ctx = ctx_ids[c]
        if not ctx:
            raise RequestError(f"context {context[i]!r} has no tokens once its trailing whitespace moves to the continuation "
                               "(lm-eval refuses it too)")
        out[i] = (ctx, ids[len(ctx) :])
    return out


def _truncate(ctx: list[int], cont: list[int], max_len: int, text: str) -> list[int]:
    """The context lm-eval feeds: inputs over ``max_len`` + 1 tokens lose tokens on the left."""
    if len(cont) > max_len:
        raise RequestError(f"the continuation {text[:80]!r}{'...' if len(text) > 80 else ''} has {len(cont)} tokens and does not "
                           f"fit max_length {max_len} (lm-eval refuses it too)")
    return ctx[-(max_len + 1 - len(cont)) :]


def _cache_kwarg(model: PreTrainedModel) -> str:
    """``cache`` in recent transformers 5.x, ``past_key_values`` before (deprecated, then removed)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _score_batch(model: PreTrainedModel, groups: Sequence[tuple[tuple[int, ...], list[tuple[int, list[int]]]]],
                 pad_id: int) -> list[tuple[int, float, bool]]:
    """Log-likelihoods of the continuations of a batch of context groups, as (request index, value, is greedy).

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
    # padding repeats a row's last position: past it, a model with learned positions (GPT-2) would index beyond its table
    last = tail_mask.sum(dim=1, keepdim=True) - 1
    position_ids = start[:, None] + torch.minimum(torch.arange(tail_ids.shape[1])[None, :], last)
    logits = model(input_ids=tail_ids, position_ids=position_ids, **kwargs).logits.float()
    picked = F.log_softmax(logits, dim=-1).gather(2, targets[:, :, None])[:, :, 0]
    sums = (picked * tail_mask).sum(dim=1)
    greedy = ((logits.argmax(dim=-1) == targets) | ~tail_mask.bool()).all(dim=1)
    return [(r[1], float(v), bool(g)) for r, v, g in zip(rows, sums.tolist(), greedy.tolist(), strict=True)]


@torch.no_grad()
def option_loglikelihoods(model: PreTrainedModel, tok: PreTrainedTokenizerBase, context: Sequence[str],
                          continuation: Sequence[str], batch_size: int = 64, add_bos_token: bool | None = None,
                          max_length: int | None = None) -> OptionScores:
    """Summed log-probability of each continuation given its context, and is_greedy (lm-eval's ``loglikelihood``).

    ``add_bos_token`` and ``max_length`` are ``HFLM``'s model arguments, with its defaults (None: the
    tokenizer's own behaviour and the model's length). ``batch_size`` bounds the continuations per
    forward pass; the requests of one context stay in one batch (so a context with more continuations
    than that makes a larger batch). An empty continuation has log-likelihood 0 (lm-eval refuses one).
    """
    model.eval()
    max_len = resolve_max_length(model, tok, max_length)
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    greedy = np.ones(len(context), dtype=bool)
    for i, (ctx, cont) in enumerate(request_tokens(tok, context, continuation, add_bos_token)):
        if cont:
            groups.setdefault(tuple(_truncate(ctx, cont, max_len, continuation[i])), []).append((i, cont))
    # longest first, like lm-eval: the first batch shows the memory peak. By continuation length first: every
    # continuation row is padded to the batch's longest, while a context is padded once for all its options.
    ordered = sorted(groups.items(), key=lambda g: (-max(len(c) for _, c in g[1]), -len(g[0])))
    out = np.zeros(len(context))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for kind in (True, False):  # contexts with a prefix to cache, then single-token contexts
        todo = [g for g in ordered if (len(g[0]) > 1) == kind]
        while todo:
            n, take = 0, 0
            while take < len(todo) and (take == 0 or n + len(todo[take][1]) <= batch_size):
                n += len(todo[take][1])
                take += 1
            for i, value, is_greedy in _score_batch(model, todo[:take], pad_id):
                out[i], greedy[i] = value, is_greedy
            todo = todo[take:]
    return OptionScores(out, greedy)


def mcq_predictions(loglik: Sequence[float], options: Sequence[str]) -> tuple[int, int]:
    """lm-eval's ``acc`` and ``acc_norm`` choices: highest log-likelihood, and highest per character of the option."""
    scores = np.asarray(loglik, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty option: -inf (or nan for 0/0), as in lm-eval
        norm = scores / np.array([float(len(o)) for o in options])
    return int(np.argmax(scores)), int(np.argmax(norm))


def score_mcq(model: PreTrainedModel, tok: PreTrainedTokenizerBase, questions: Sequence[dict], batch_size: int = 64,
              add_bos_token: bool | None = None, max_length: int | None = None) -> list[dict]:
    """Per-question results: options' log-likelihoods and is_greedy, the acc and acc_norm choices and their correctness.

    A question is ``{id, question, options, answer}``: the context is ``question`` as it stands, an option's
    continuation is ``" " + option``, ``answer`` the correct option's index (lm-eval's ``doc_to_target``).
    """
    ctx = [q["question"] for q in questions for _ in q["options"]]
    cont = [TARGET_DELIMITER + o for q in questions for o in q["options"]]
    scores = option_loglikelihoods(model, tok, ctx, cont, batch_size, add_bos_token, max_length)
    results, k = [], 0
    for q in questions:
        n = len(q["options"])
        ll, greedy = scores.loglik[k : k + n], scores.is_greedy[k : k + n]
        k += n
        pred, pred_norm = mcq_predictions(ll, q["options"])
        results.append({"id": q["id"], "pred": pred, "pred_norm": pred_norm, "correct": pred == q["answer"],
                        "correct_norm": pred_norm == q["answer"], "loglik": ll.tolist(), "is_greedy": greedy.tolist()})
    return results
