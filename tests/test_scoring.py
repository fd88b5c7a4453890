import math

import pandas as pd
import pytest
import torch

from fluxforge.data.tokenize import train_tokenizer
from fluxforge.eval.scoring import option_loglikelihoods, perplexity, score_mcq
from fluxforge.eval.stats import binomial_vs_chance, mcnemar_one_sided, significance
from fluxforge.train.model import build_model
from tiny import tiny_config

TINY = tiny_config(max_position_embeddings=128)


@pytest.fixture(scope="module")
def lm():
    tok = train_tokenizer(["Question: Which weakness affects Zorvex Gateway? Answer: SQL injection buffer overflow path traversal"] * 30, 320)
    torch.manual_seed(0)
    return build_model(TINY, len(tok), tok.eos_token_id, tok.pad_token_id).eval(), tok


def test_loglikelihood_matches_a_direct_forward_pass(lm):
    model, tok = lm
    ctx, cont = "Question: Which weakness affects Zorvex Gateway?\nAnswer:", " SQL injection"
    got = option_loglikelihoods(model, tok, [ctx, ctx], [cont, " path traversal"])
    whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([[tok.eos_token_id] + whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    expect = sum(logp[i, ids[0, i + 1]].item() for i in range(n_ctx, len(whole)))
    assert got[0] == pytest.approx(expect, abs=1e-4)
    assert got[0] != pytest.approx(got[1])


def test_batching_does_not_change_scores(lm):
    model, tok = lm
    ctx = ["Question: A?\nAnswer:", "Question: Which weakness affects Zorvex Gateway today?\nAnswer:"] * 3
    cont = [" SQL injection", " buffer overflow", " path traversal", " x", " SQL", " injection"]
    one = option_loglikelihoods(model, tok, ctx, cont, batch_size=1)
    many = option_loglikelihoods(model, tok, ctx, cont, batch_size=64)
    assert one == pytest.approx(many, abs=1e-4)


def test_mcq_picks_the_highest_likelihood_and_length_normalises(lm):
    model, tok = lm
    q = {"id": "q1", "question": "Question: Which weakness affects Zorvex Gateway?\nAnswer:",
         "options": ["SQL injection", "buffer overflow", "path traversal", "race condition"], "answer": 0}
    ll = option_loglikelihoods(model, tok, [q["question"]] * 4, [" " + o for o in q["options"]])
    r = score_mcq(model, tok, [q])[0]
    assert r["pred"] == int(ll.argmax())
    norm = [v / len(o) for v, o in zip(ll, q["options"])]
    assert r["pred_norm"] == norm.index(max(norm))


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
