"""Checkpoint averaging (Luo et al. 2025, methods.md section 5): weights, fp32 sums, HF directories, clear errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fluxforge import paths as P
from fluxforge.data.tokenize import train_tokenizer
from fluxforge.train.averaging import (
    AveragingError,
    average_checkpoints,
    average_states,
    averaging_weights,
    load_averaged,
    save_snapshot,
    snapshots,
    write_averaged_model,
)
from fluxforge.train.model import load_model, save_model
from tiny import tiny_model


def _states(n: int) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in tiny_model(init_seed=s).state_dict().items()} for s in range(n)]


@pytest.mark.parametrize("method", ["sma", "ema", "wma"])
@pytest.mark.parametrize("k", [1, 2, 6, 11])
def test_weights_sum_to_one_and_never_favour_older_checkpoints(method, k):
    w = averaging_weights(k, method)
    assert len(w) == k and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert (w > 0).all() and all(a <= b + 1e-15 for a, b in zip(w, w[1:])), w


def test_ema_follows_its_formula_and_alpha_one_is_the_last_checkpoint():
    w = averaging_weights(4, "ema", alpha=0.2)
    raw = np.array([0.2 * 0.8 ** (4 - i) for i in range(1, 5)])
    np.testing.assert_allclose(w, raw / raw.sum())
    np.testing.assert_array_equal(averaging_weights(5, "ema", alpha=1.0), [0, 0, 0, 0, 1])
    states = _states(3)
    avg = average_states(states, averaging_weights(3, "ema", alpha=1.0))
    for key, value in states[-1].items():
        assert torch.equal(avg[key], value), key
    np.testing.assert_allclose(averaging_weights(3, "wma"), [1 / 6, 2 / 6, 3 / 6])


def test_averaging_identical_checkpoints_returns_that_checkpoint():
    state = _states(1)[0]
    for method in ("sma", "ema", "wma"):
        avg = average_states([state] * 5, averaging_weights(5, method))
        for key, value in state.items():
            torch.testing.assert_close(avg[key], value, rtol=0, atol=1e-7, msg=key)


def test_sma_is_the_parameter_wise_mean_and_keeps_the_dtype():
    states = [{k: v.to(torch.bfloat16) for k, v in s.items()} for s in _states(4)]
    avg = average_states(states, averaging_weights(4, "sma"))
    for key in states[0]:
        mean = torch.stack([s[key].float() for s in states]).mean(0)
        assert avg[key].dtype == torch.bfloat16
        torch.testing.assert_close(avg[key], mean.to(torch.bfloat16), rtol=0, atol=0, msg=key)


def test_fp32_accumulation_beats_bf16_summation():
    # 16 bf16 checkpoints around 100 (bf16 spacing 0.5 there): a bf16 running sum drifts to 101.5,
    # an fp32 sum cast once at the end gives the exact mean rounded to bf16 (100.75 -> 101.0)
    states = [{"w": torch.tensor([100.0 + (i % 4) * 0.5], dtype=torch.bfloat16)} for i in range(16)]
    avg = average_states(states, averaging_weights(16, "sma"))["w"]
    exact = torch.stack([s["w"].double() for s in states]).mean(0)
    assert avg.dtype == torch.bfloat16 and torch.equal(avg, exact.to(torch.bfloat16))


def test_weights_must_sum_to_one():
    states = _states(2)
    with pytest.raises(AveragingError, match="sum to 1"):
        average_states(states, [0.5, 0.6])


def test_mismatched_keys_and_shapes_name_the_file_and_the_key(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": torch.zeros(2), "y": torch.zeros(3)}, a)
    save_file({"x": torch.zeros(2)}, b)
    with pytest.raises(AveragingError, match=r"b\.safetensors lacks key 'y'"):
        average_checkpoints([a, b], "sma")
    save_file({"x": torch.zeros(2), "y": torch.zeros(4)}, b)
    with pytest.raises(AveragingError, match=r"b\.safetensors: key 'y' has shape \(4,\)"):
        average_checkpoints([a, b], "sma")
    with pytest.raises(AveragingError, match="last 3 checkpoints but 2"):
        average_checkpoints([a, b], "sma", k=3)
    (tmp_path / "c.pt").write_bytes(b"pickle")
    with pytest.raises(AveragingError, match=r"c\.pt: not a safetensors file"):
        average_checkpoints([a, tmp_path / "c.pt"], "sma")


def test_models_of_different_architectures_are_refused(tmp_path):
    tiny_model(init_seed=0).save_pretrained(tmp_path / "small", safe_serialization=True)
    tiny_model(num_layers=3).save_pretrained(tmp_path / "deep", safe_serialization=True)
    with pytest.raises(AveragingError, match=r"deep/config\.json: key 'num_hidden_layers' is 3"):
        average_checkpoints([tmp_path / "small", tmp_path / "deep"], "sma")


def test_writes_an_hf_model_dir_of_the_last_k_that_loads_without_pickles(tmp_path):
    tok = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    models = [tiny_model(init_seed=s) for s in range(4)]
    dirs = []
    for i, m in enumerate(models):
        save_model(m, tok, tmp_path / f"ckpt-{i}", {"step": i})
        dirs.append(tmp_path / f"ckpt-{i}")
    write_averaged_model(dirs, tmp_path / "avg", method="ema", k=3)
    loaded, _ = load_model(tmp_path / "avg")
    w = averaging_weights(3, "ema")
    for key, value in loaded.state_dict().items():
        expect = sum(wi * m.state_dict()[key].float() for wi, m in zip(w, models[1:]))
        torch.testing.assert_close(value, expect, rtol=0, atol=1e-6, msg=key)
    info = P.model_info(tmp_path / "avg")
    assert info["averaged"] == [str(d) for d in dirs[1:]] and info["method"] == "ema"
    assert not list((tmp_path / "avg").glob("*.bin")) and json.loads((tmp_path / "avg" / "config.json").read_text())["num_hidden_layers"] == 2
    x = torch.randint(0, 64, (1, 8))
    assert torch.isfinite(loaded(input_ids=x).logits).all()


def test_snapshots_keep_the_newest_k_and_average_into_a_model(tmp_path):
    models = [tiny_model(init_seed=s) for s in range(5)]
    for step, m in enumerate(models):
        save_snapshot(m, tmp_path / "snaps", step=(step + 1) * 10, keep=3)
    kept = snapshots(tmp_path / "snaps")
    assert [p.name for p in kept] == ["step-000000030.safetensors", "step-000000040.safetensors", "step-000000050.safetensors"]
    assert "lm_head.weight" not in load_file(kept[0]), "the tied head is the embedding; safetensors refuses shared storage"
    models[-1].save_pretrained(tmp_path / "template", safe_serialization=True)
    avg = write_averaged_model(kept, tmp_path / "avg", method="sma", template=tmp_path / "template")
    emb = torch.stack([m.model.embed_tokens.weight.detach() for m in models[2:]]).mean(0)
    torch.testing.assert_close(avg.model.embed_tokens.weight.detach(), emb)
    assert avg.lm_head.weight.data_ptr() == avg.model.embed_tokens.weight.data_ptr()


def test_bad_method_and_alpha_are_refused():
    with pytest.raises(AveragingError, match="unknown averaging method 'median'"):
        averaging_weights(3, "median")  # type: ignore[arg-type]
    with pytest.raises(AveragingError, match=r"alpha must be in \(0, 1\]"):
        averaging_weights(3, "ema", alpha=0.0)


def test_load_averaged_fills_an_in_memory_model_and_refuses_another_shape(tmp_path):
    models = [tiny_model(init_seed=s) for s in range(3)]
    paths = [save_snapshot(m, tmp_path, step=i, keep=0) for i, m in enumerate(models)]
    target = tiny_model(init_seed=9)
    used = load_averaged(target, paths, "wma")
    assert used == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    expect = sum(w * m.model.norm.weight.detach() for w, m in zip(used, models))
    torch.testing.assert_close(target.model.norm.weight.detach(), expect)
    wide = tiny_model(intermediate_size=96)
    with pytest.raises(AveragingError, match=r"key 'model\.layers\.0\.mlp\.\w+_proj\.weight': averaged shape"):
        load_averaged(wide, paths, "sma")
