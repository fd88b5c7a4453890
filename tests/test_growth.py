"""G_stack depthwise growth (Du et al. 2024, methods.md section 6): the operator and the growth-timing formula."""

import inspect

import pytest
import torch

from fluxforge.train.growth import GrowthError, grow, growth_step, growth_tokens, stacking_list
from fluxforge.train.model import build_model, count_params, load_model, save_model
from tiny import TINY


@pytest.fixture(scope="module")
def small():
    return build_model(TINY, 64, 0, 1).eval()


def _layer_params(model) -> int:
    return sum(p.numel() for p in model.model.layers[0].parameters())


def test_target_layer_i_is_source_layer_i_mod_L(small):
    big = grow(small, 4)
    assert big.config.num_hidden_layers == 8 and len(big.model.layers) == 8
    for i, layer in enumerate(big.model.layers):
        src = dict(small.model.layers[i % 2].named_parameters())
        for name, p in layer.named_parameters():
            torch.testing.assert_close(p, src[name], rtol=0, atol=0, msg=f"layer {i} {name}")
            assert p.data_ptr() != src[name].data_ptr(), "layers must be clones, not shared"
    assert stacking_list(6, 4) == [0, 1, 2, 3, 4, 5] * 4


def test_embedding_norm_and_head_are_unchanged_and_source_untouched(small):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    big = grow(small, 3)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(big.state_dict()[name], small.state_dict()[name]), name
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())
    assert small.config.num_hidden_layers == 2


def test_parameter_count_is_embeddings_plus_g_times_layers_plus_head(small):
    g, n_layers = 4, small.config.num_hidden_layers
    rest = count_params(small) - n_layers * _layer_params(small)  # tied embedding/head + final norm
    assert count_params(grow(small, g)) == rest + g * n_layers * _layer_params(small)


def test_grown_model_runs_with_kv_cache_and_g1_is_the_identity(small):
    x = torch.randint(2, 64, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(grow(small, 1)(input_ids=x).logits, small(input_ids=x).logits)
        big = grow(small, 4)
        full = big(input_ids=x).logits
        assert torch.isfinite(full).all() and not torch.allclose(full, small(input_ids=x).logits)
        # incremental decoding through the cache must equal the full forward: every layer owns its cache slot
        out = big(input_ids=x[:, :6], use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # renamed in transformers 5.x
        name = "cache" if "cache" in inspect.signature(big.forward).parameters else "past_key_values"
        step = big(input_ids=x[:, 6:], use_cache=True, **{name: cache}).logits
    torch.testing.assert_close(step, full[:, 6:], rtol=1e-4, atol=1e-5)
    assert [layer.self_attn.layer_idx for layer in big.model.layers] == list(range(8))


def test_grown_model_saves_and_loads_as_hf(tmp_path):
    from fluxforge.data.tokenize import train_tokenizer

    big = grow(build_model(TINY, 64, 0, 1).to(torch.bfloat16), 2)
    assert next(big.parameters()).dtype == torch.bfloat16
    save_model(big, train_tokenizer(["a b c"] * 5, vocab_size=280), tmp_path / "big", {"grown_from": "small"})
    loaded, _ = load_model(tmp_path / "big")
    assert loaded.config.num_hidden_layers == 4
    for k, v in big.state_dict().items():
        assert torch.equal(loaded.state_dict()[k].to(v.dtype), v), k


@pytest.mark.parametrize("g", [0, -1, 2.5, 2.0, True, "4"])
def test_growth_factor_must_be_a_positive_integer(small, g):
    with pytest.raises(GrowthError, match="growth factor g must be an integer >= 1"):
        grow(small, g)


@pytest.mark.parametrize(("n", "d", "expect"), [(7e9, 2e12, 11.11e9), (8e9, 15e12, 6.58e9), (13e9, 2e12, 15.84e9), (70e9, 2e12, 42.48e9)])
def test_growth_timing_matches_the_readme_table(n, d, expect):
    assert growth_tokens(n, tokens=d) == pytest.approx(expect, rel=1e-3)
    assert growth_tokens(n, compute=6 * n * d) == growth_tokens(n, tokens=d)


def test_growth_timing_errors_and_cap():
    with pytest.raises(GrowthError, match="exactly one of"):
        growth_tokens(7e9)
    with pytest.raises(GrowthError, match="must be positive"):
        growth_tokens(0, tokens=1e9)
    # 7B/2T: d = 11.11e9 tokens, far under half the run -> not capped; at 4Mi tokens a step, ceil(2649.5) = 2650
    assert growth_step(7e9, 2e12, 4 * 2**20) == (2650, False)
    # a tiny model: the formula predicts more than the run, so the step is capped at half of it
    steps, capped = growth_step(1e5, 1e7, 1000, max_fraction=0.5)
    assert capped and steps == 5000
