import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from fluxforge.data.tokenize import train_tokenizer
from fluxforge.eval.scoring import (
    DEFAULT_MAX_LENGTH,
    RequestError,
    mcq_predictions,
    option_loglikelihoods,
    perplexity,
    request_tokens,
    resolve_max_length,
    score_mcq,
)
from fluxforge.eval.stats import binomial_vs_chance, mcnemar_one_sided, significance
from fluxforge.train.model import build_model
from tiny import tiny_config

TINY = tiny_config(max_position_embeddings=128)


@pytest.fixture(scope="module")
def lm():
    tok = train_tokenizer(["Question: Which weakness affects Zorvex Gateway? Answer: SQL injection buffer overflow path traversal"] * 30, 320)
    torch.manual_seed(0)
    return build_model(TINY, len(tok), tok.eos_token_id, tok.pad_token_id).eval(), tok


def _direct(model, ids: list[int], n_ctx: int) -> tuple[float, bool]:
    """Summed log-probability of ids[n_ctx:] given ids[:n_ctx] from one plain forward pass, and whether it is greedy."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    span = range(n_ctx - 1, len(ids) - 1)
    return sum(logp[i, ids[i + 1]].item() for i in span), all(int(logp[i].argmax()) == ids[i + 1] for i in span)


@pytest.mark.parametrize("add_bos_token", [None, True])
def test_loglikelihood_matches_a_direct_forward_pass(lm, add_bos_token):
    """Our tokenizer adds nothing, so lm-eval's default scores the bare context; add_bos_token=True puts its BOS (= EOS) first."""
    model, tok = lm
    ctx, cont = "Question: Which weakness affects Zorvex Gateway?\nAnswer:", " SQL injection"
    got = option_loglikelihoods(model, tok, [ctx, ctx], [cont, " path traversal"], add_bos_token=add_bos_token)
    prefix = [tok.bos_token_id] if add_bos_token else []
    whole = prefix + tok(ctx + cont, add_special_tokens=False)["input_ids"]
    expect, greedy = _direct(model, whole, len(prefix) + len(tok(ctx, add_special_tokens=False)["input_ids"]))
    assert got.loglik[0] == pytest.approx(expect, abs=1e-4) and got.is_greedy[0] == greedy
    assert got.loglik[0] != pytest.approx(got.loglik[1])


def test_requests_are_built_as_lm_eval_builds_them(lm):
    model, tok = lm
    bos = tok.bos_token_id

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    # trailing whitespace of the context moves to the continuation; the context keeps its own encoding
    [(ctx, cont)] = request_tokens(tok, ["Answer: \n"], ["SQL"])
    assert ctx == enc("Answer:") and ctx + cont == enc("Answer: \nSQL")
    # an empty context is the prefix token (BOS, which is EOS here); a context already starting with it gets no second one
    assert request_tokens(tok, [""], [" SQL"]) == [([bos], enc(" SQL"))]
    assert request_tokens(tok, [tok.bos_token + "Answer:"], [" SQL"], add_bos_token=True)[0][0] == [bos, *enc("Answer:")]
    assert request_tokens(tok, ["Answer:"], [" SQL"], add_bos_token=True)[0][0] == [bos, *enc("Answer:")]
    assert request_tokens(tok, ["Answer:"], [" SQL"], add_bos_token=False)[0][0] == enc("Answer:")
    assert not tok.add_bos_token and tok("x")["input_ids"] == enc("x")  # the caller's tokenizer keeps its setting
    with pytest.raises(RequestError, match="no tokens"):
        request_tokens(tok, ["   "], [" SQL"])


def test_long_inputs_lose_tokens_on_the_left(lm):
    model, tok = lm
    ctx = "Zorvex Gateway is affected by SQL injection and buffer overflow. " * 4 + "Question: Which weakness?\nAnswer:"
    cont = " SQL injection"
    whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    n_cont = len(whole) - len(tok(ctx, add_special_tokens=False)["input_ids"])
    assert len(whole) > 12
    got = option_loglikelihoods(model, tok, [ctx], [cont], max_length=11)
    expect, greedy = _direct(model, whole[-12:], 12 - n_cont)  # max_length + 1 tokens, fed all but the last
    assert got.loglik[0] == pytest.approx(expect, abs=1e-4) and got.is_greedy[0] == greedy
    assert got.loglik[0] != pytest.approx(option_loglikelihoods(model, tok, [ctx], [cont]).loglik[0], abs=1e-3)
    with pytest.raises(RequestError, match="does not fit max_length"):
        option_loglikelihoods(model, tok, [ctx], [cont * 4], max_length=n_cont)


def test_max_length_is_resolved_as_lm_eval_resolves_it(lm):
    model, tok = lm
    assert resolve_max_length(model, tok) == TINY.max_position_embeddings
    assert resolve_max_length(model, tok, 16) == 16
    bare = SimpleNamespace(config=SimpleNamespace())
    assert resolve_max_length(bare, SimpleNamespace(model_max_length=512)) == 512
    assert resolve_max_length(bare, tok) == DEFAULT_MAX_LENGTH == 2048  # a tokenizer without a length says "infinity"


def test_batching_does_not_change_scores(lm):
    model, tok = lm
    ctx = ["Question: A?\nAnswer:", "Question: Which weakness affects Zorvex Gateway today?\nAnswer:"] * 3
    cont = [" SQL injection", " buffer overflow", " path traversal", " x", " SQL", " injection"]
    one = option_loglikelihoods(model, tok, ctx, cont, batch_size=1)
    many = option_loglikelihoods(model, tok, ctx, cont, batch_size=64)
    assert one.loglik == pytest.approx(many.loglik, abs=1e-4) and (one.is_greedy == many.is_greedy).all()


def test_mcq_picks_the_highest_likelihood_and_length_normalises(lm):
    model, tok = lm
    q = {"id": "q1", "question": "Question: Which weakness affects Zorvex Gateway?\nAnswer:",
         "options": ["SQL injection", "buffer overflow", "path traversal", "race condition"], "answer": 0}
    ll = option_loglikelihoods(model, tok, [q["question"]] * 4, [" " + o for o in q["options"]]).loglik
    r = score_mcq(model, tok, [q])[0]
    assert r["pred"] == int(ll.argmax()) and r["loglik"] == pytest.approx(ll.tolist())
    norm = [v / len(o) for v, o in zip(ll, q["options"])]
    assert r["pred_norm"] == norm.index(max(norm))


def test_an_empty_option_is_scored_and_never_wins_acc_norm(lm):
    """lm-eval divides by the option's length: an empty option's acc_norm score is -inf (or nan for 0/0, chosen by argmax)."""
    model, tok = lm
    q = {"id": "q1", "question": "Question: Which weakness?\nAnswer:", "options": ["SQL injection", "", "x"], "answer": 1}
    r = score_mcq(model, tok, [q])[0]
    assert r["loglik"][1] < 0 and r["pred_norm"] != 1
    assert mcq_predictions([-1.0, -0.5], ["", "ab"]) == (1, 1)
    assert mcq_predictions([0.0, -0.5], ["", "ab"]) == (0, 0)  # 0/0 is nan, and numpy's argmax takes the first nan


def test_uniform_model_has_perplexity_equal_to_vocab(lm):
    model, tok = lm
    uniform = build_model(TINY, len(tok), tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():
        for p in uniform.parameters():
            p.zero_()
    m = perplexity(uniform, tok, ["Zorvex Gateway is affected by SQL injection."], seq_len=8, batch_size=2)
    assert m["ppl"] == pytest.approx(len(tok), rel=1e-4)
    assert m["bpb"] > 0


def test_binomial_and_mcnemar():
    assert binomial_vs_chance(25, 100) > 0.4
    assert binomial_vs_chance(45, 100) < 1e-4
    before = [False] * 50 + [True] * 50
    after = [True] * 40 + [False] * 10 + [True] * 48 + [False] * 2
    r = mcnemar_one_sided(after, before)
    assert (r["gained"], r["lost"]) == (40, 2)
    assert r["p_value"] == pytest.approx(sum(math.comb(42, k) for k in range(40, 43)) / 2**42)
    assert mcnemar_one_sided(before, before)["p_value"] == 1.0


def test_significance_pairs_the_questions_of_the_final_and_the_pretrained_model():
    """Rows come in any order: questions are paired by id, per domain, and other models are ignored."""
    before = [False] * 50 + [True] * 50
    after = [True] * 40 + [False] * 10 + [True] * 48 + [False] * 2
    rows = [{"model": m, "domain": d, "id": f"{d}-{i:03d}", "correct": c}
            for m, answers in (("pretrain", before), ("continual/cyber", after), ("untrained", [True] * 100))
            for d in ("cyber", "general") for i, c in enumerate(answers)]
    tests = significance(pd.DataFrame(rows[::-1]), final="continual/cyber")
    paired = mcnemar_one_sided(after, before)
    for d in ("cyber", "general"):
        t = tests[d]
        assert (t["n"], t["acc_pretrain"], t["acc_final"], t["gain"]) == (100, 0.5, 0.88, 0.38)
        assert (t["gained"], t["lost"], t["p_final_vs_pretrain"]) == (paired["gained"], paired["lost"], paired["p_value"])
        assert t["p_final_vs_chance"] == binomial_vs_chance(88, 100) and t["p_pretrain_vs_chance"] == binomial_vs_chance(50, 100)


def test_pooled_perplexity_equals_perplexity_of_the_union(lm):
    from fluxforge.eval.scoring import summarize

    model, tok = lm
    a, b = ["Zorvex Gateway is affected by SQL injection."], ["The vendor of Brindle Router is Tarn Labs.", "Answer: path traversal"]
    pa, pb, both = (perplexity(model, tok, t, seq_len=8) for t in (a, b, a + b))
    pooled = summarize(pa["nll"] + pb["nll"], pa["tokens"] + pb["tokens"], pa["bytes"] + pb["bytes"])
    assert pooled["ppl"] == pytest.approx(both["ppl"], rel=1e-5) and pooled["bpb"] == pytest.approx(both["bpb"], rel=1e-5)
