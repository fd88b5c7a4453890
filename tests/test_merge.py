"""Model merging across continual tasks (FoMo-in-Flux, methods.md section 8): exact degenerate cases, fp32 sums, HF dirs."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from fluxforge import paths as P
from fluxforge.continual.merge import (
    MergeError,
    MergeOperator,
    dare_ties,
    ema_merge,
    instruction_residual,
    interpolate,
    magmax,
    merge_models,
    merge_states,
    slerp,
    task_arithmetic,
    ties,
)
from fluxforge.data.tokenize import train_tokenizer
from fluxforge.train.averaging import AveragingError
from fluxforge.train.model import save_model
from tiny import tiny_model


def _state(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().to(dtype) for k, v in tiny_model(init_seed=seed).state_dict().items()}


def _assert_states_equal(got, expect, exact: bool = True):
    assert set(got) == set(expect)
    for key in expect:
        assert got[key].dtype == expect[key].dtype, key
        if exact:
            assert torch.equal(got[key], expect[key]), key
        else:
            torch.testing.assert_close(got[key], expect[key], msg=key)


def test_ema_merge_of_identical_weights_is_a_no_op():
    for dtype in (torch.float32, torch.bfloat16):
        s = _state(0, dtype)
        _assert_states_equal(ema_merge(s, {k: v.clone() for k, v in s.items()}), s)
    # unrolled over several tasks from the base, as FoMo's ema_paint does
    s = _state(0)
    running = s
    for _ in range(4):
        running = ema_merge(running, s)
    _assert_states_equal(running, s)


def test_merge_of_two_checkpoints_is_their_mean():
    a, b = _state(0), _state(1)
    merged = ema_merge(a, b)
    for key in a:
        torch.testing.assert_close(merged[key], 0.5 * (a[key] + b[key]), rtol=0, atol=1e-7, msg=key)
    _assert_states_equal(interpolate(a, b, 0.5), merged)


def test_interpolation_ends_are_exact_and_the_weight_is_on_b():
    a, b = _state(0), _state(1)
    _assert_states_equal(interpolate(a, b, 0.0), a)
    _assert_states_equal(interpolate(a, b, 1.0), b)
    merged = interpolate(a, b, 0.25)
    for key in a:
        torch.testing.assert_close(merged[key], 0.75 * a[key] + 0.25 * b[key], rtol=0, atol=1e-6, msg=key)
    with pytest.raises(MergeError, match=r"weight_b must be in \[0, 1\], got 1\.5"):
        interpolate(a, b, 1.5)


def test_ema_recursion_weights_the_newest_task_by_half():
    # theta_run after tasks 1..3 from base: base/8 + t1/8 + t2/4 + t3/2
    base, t1, t2, t3 = (_state(s) for s in range(4))
    running = base
    for t in (t1, t2, t3):
        running = ema_merge(running, t)
    for key in base:
        expect = base[key] / 8 + t1[key] / 8 + t2[key] / 4 + t3[key] / 2
        torch.testing.assert_close(running[key], expect, rtol=0, atol=1e-6, msg=key)


def test_merges_accumulate_in_fp32_and_keep_the_dtype():
    # 8 task vectors of +0.5 at scale 1/8 on a bf16 weight of 100 (bf16 spacing 0.5 there): summed one by one
    # in bf16 each +0.0625 rounds away and the result stays 100; in fp32 it is the exact 100.5
    base = {"w": torch.tensor([100.0], dtype=torch.bfloat16)}
    fts = [{"w": torch.tensor([100.5], dtype=torch.bfloat16)} for _ in range(8)]
    got = task_arithmetic(base, fts, 0.125)["w"]
    assert got.dtype == torch.bfloat16 and got.item() == 100.5
    naive = base["w"].clone()
    for ft in fts:
        naive += 0.125 * (ft["w"] - base["w"])
    assert naive.item() == 100.0  # the failure the fp32 accumulation avoids


def test_task_arithmetic_with_one_model_at_scale_one_returns_it():
    base, ft = _state(0), _state(1)
    _assert_states_equal(task_arithmetic(base, [ft], 1.0), ft)
    _assert_states_equal(task_arithmetic(base, [ft], 0.0), base, exact=False)


def test_task_arithmetic_adds_the_scaled_task_vectors():
    base, f1, f2 = _state(0), _state(1), _state(2)
    merged = task_arithmetic(base, [f1, f2], 0.3)
    for key in base:
        expect = base[key] + 0.3 * ((f1[key] - base[key]) + (f2[key] - base[key]))
        torch.testing.assert_close(merged[key], expect, rtol=0, atol=1e-6, msg=key)
    with pytest.raises(MergeError, match="at least one finetuned model"):
        task_arithmetic(base, [])


def test_instruction_residual_degenerate_cases_and_general_form():
    instruct, base, updated = _state(0), _state(1), _state(2)
    _assert_states_equal(instruction_residual(base, base, updated), updated)  # no instruction delta
    _assert_states_equal(instruction_residual(instruct, base, base), instruct, exact=False)  # base not updated
    merged = instruction_residual(instruct, base, updated, scale=0.5)
    for key in base:
        expect = updated[key] + 0.5 * (instruct[key] - base[key])
        torch.testing.assert_close(merged[key], expect, rtol=0, atol=1e-6, msg=key)


def test_mixed_precision_merges_into_the_anchor_dtype():
    instruct, base, updated = _state(0, torch.bfloat16), _state(1, torch.bfloat16), _state(2)
    merged = instruction_residual(instruct, base, updated)
    key = "model.norm.weight"
    assert merged[key].dtype == torch.float32
    torch.testing.assert_close(merged[key], updated[key] + (instruct[key].float() - base[key].float()))


def test_mismatched_shapes_and_keys_are_refused_with_the_key_named():
    a = _state(0)
    wide_model = tiny_model(intermediate_size=96)
    wide = {k: v.clone() for k, v in wide_model.state_dict().items()}
    with pytest.raises(AveragingError, match=r"model b: key 'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape"):
        interpolate(a, wide, 0.5)
    fewer = {k: v for k, v in a.items() if k != "model.norm.weight"}
    with pytest.raises(AveragingError, match=r"updated base lacks key 'model\.norm\.weight'"):
        instruction_residual(a, a, fewer)
    counted = {**a, "step": torch.tensor([3])}
    with pytest.raises(MergeError, match=r"model a: non-float key 'step' differs from model b"):
        interpolate(counted, {**a, "step": torch.tensor([4])}, 0.5)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    models = {name: tiny_model(init_seed=seed) for seed, name in enumerate(["base", "instruct", "updated", "task1", "task2"])}
    for name, m in models.items():
        save_model(m, tok, root / name, {"name": name})
    return root, models


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_instruction_residual_round_trip_through_hf_directories(hf_dirs, tmp_path):
    root, models = hf_dirs
    out = tmp_path / "merged"
    merge_models("instruction_residual", [root / "instruct", root / "base", root / "updated"], out, scale=1.0)
    loaded = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    want = {k: _weights(models["updated"])[k] + _weights(models["instruct"])[k] - _weights(models["base"])[k]
            for k in _weights(models["base"])}
    for key, value in _weights(loaded).items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=1e-6, msg=key)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied
    assert (out / "tokenizer.json").exists() and not list(out.glob("*.bin"))
    info = P.model_info(out)
    assert info["method"] == "instruction_residual" and info["template"] == str(root / "updated")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert torch.isfinite(loaded(input_ids=torch.randint(0, 64, (1, 8))).logits).all()


def test_ema_and_task_arithmetic_through_hf_directories(hf_dirs, tmp_path):
    root, models = hf_dirs
    w = {n: _weights(m) for n, m in models.items()}
    merge_models("ema", [root / "base", root / "task1", root / "task2"], tmp_path / "ema")
    ema = _weights(AutoModelForCausalLM.from_pretrained(tmp_path / "ema", use_safetensors=True))
    merge_models("task_arithmetic", [root / "base", root / "task1", root / "task2"], tmp_path / "ta", scale=0.5)
    ta = _weights(AutoModelForCausalLM.from_pretrained(tmp_path / "ta", use_safetensors=True))
    for key in ema:
        torch.testing.assert_close(ema[key], w["base"][key] / 4 + w["task1"][key] / 4 + w["task2"][key] / 2,
                                   rtol=0, atol=1e-6, msg=key)
        torch.testing.assert_close(ta[key], 0.5 * (w["task1"][key] + w["task2"][key]), rtol=0, atol=1e-6, msg=key)
    assert P.model_info(tmp_path / "ta")["options"] == {"scale": 0.5}
    merged = merge_states("interpolate", [root / "task1", root / "task2"], weight_b=1.0)
    _assert_states_equal({k: merged[k] for k in merged}, {k: v.clone() for k, v in w["task2"].items() if k in merged})


def test_hf_directories_of_another_architecture_or_bad_options_are_refused(hf_dirs, tmp_path):
    root, _ = hf_dirs
    tiny_model(num_layers=3).save_pretrained(tmp_path / "deep", safe_serialization=True)
    with pytest.raises(MergeError, match=r"deep/config\.json: key 'num_hidden_layers' is 3"):
        merge_models("task_arithmetic", [root / "base", tmp_path / "deep"], tmp_path / "out")
    # same config but a tensor of another shape: the file and the tensor are named
    odd = {k: v.clone() for k, v in _state(0).items() if k != "lm_head.weight"}
    odd["model.norm.weight"] = torch.zeros(5)
    save_file(odd, tmp_path / "odd.safetensors")
    with pytest.raises(AveragingError, match=r"odd\.safetensors: key 'model\.norm\.weight' has shape \(5,\), .*base has \(32,\)"):
        merge_states("interpolate", [root / "base", tmp_path / "odd.safetensors"])
    with pytest.raises(MergeError, match=r"'instruction_residual' takes paths \[instruct, base, updated_base\], got 2"):
        merge_models("instruction_residual", [root / "base", root / "updated"], tmp_path / "out")
    with pytest.raises(MergeError, match="unknown merge method 'breadcrumbs'"):
        merge_models("breadcrumbs", [root / "base", root / "updated"], tmp_path / "out")  # type: ignore[arg-type]
    with pytest.raises(MergeError, match="'ema' has no option 'scale'"):
        merge_models("ema", [root / "base", root / "updated"], tmp_path / "out", scale=2.0)
    assert not (tmp_path / "out").exists()  # nothing half-written


# ----------------------------------------------------------------------------- FoMo's operators (the merge schedules')
def _v(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_entries():
    """Task vectors [1, -2, 3, .5] and [-1, 3, -.5, .25], half kept: [0, -2, 3, 0] and [-1, 3, 0, 0]; elected signs
    (of the sums -1, 1, 3, 0) -, +, +, +; the agreeing entries' mean: [-1, 3, 3, 0]."""
    base = _v(1.0, 1.0, 1.0, 1.0)
    ft1, ft2 = _v(2.0, -1.0, 4.0, 1.5), _v(0.0, 4.0, 0.5, 1.25)
    assert torch.equal(ties(base, [ft1, ft2], density=0.5)["w"], torch.tensor([0.0, 4.0, 4.0, 1.0]))
    assert torch.equal(ties(base, [ft1, ft2], scale=0.5, density=0.5)["w"], torch.tensor([0.5, 2.5, 2.5, 1.0]))
    assert torch.equal(ties(base, [ft1, ft2], density=1.0)["w"], torch.tensor([2.0, 4.0, 4.0, 1.375])), \
        "nothing trimmed: the sums [0, 1, 2.5, .75] elect + everywhere (0 counts as +): means [1, 3, 3, (.5+.25)/2]"
    with pytest.raises(MergeError, match=r"density .* must be in \(0, 1\], got 0"):
        ties(base, [ft1], density=0.0)


def test_dare_ties_keeps_a_seeded_random_share_rescaled_and_leaves_the_global_rng_alone():
    base = {"w": torch.zeros(20_000)}
    ft = {"w": torch.full((20_000,), 0.3)}
    torch.manual_seed(123)
    expect_next = torch.rand(3)
    torch.manual_seed(123)
    merged = dare_ties(base, [ft], density=0.25, seed=7)["w"]
    assert torch.equal(torch.rand(3), expect_next), "the merge drew from its own seeded generator"
    kept = merged != 0
    assert torch.allclose(merged[kept], torch.tensor(0.3 / 0.25)), "kept entries are rescaled by 1/density"
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    assert torch.equal(dare_ties(base, [ft], density=0.25, seed=7)["w"], merged)
    assert not torch.equal(dare_ties(base, [ft], density=0.25, seed=8)["w"], merged)
    ft1, ft2 = _v(2.0, -1.0, 4.0, 1.5), _v(0.0, 4.0, 0.5, 1.25)
    one = _v(1.0, 1.0, 1.0, 1.0)
    assert torch.equal(dare_ties(one, [ft1, ft2], density=1.0)["w"], ties(one, [ft1, ft2], density=1.0)["w"])


def test_slerp_follows_the_great_circle_and_is_linear_for_parallel_tensors():
    a, b = _v(1.0, 0.0), _v(0.0, 1.0)
    half = 2 ** -0.5
    torch.testing.assert_close(slerp(a, b, 0.5)["w"], torch.tensor([half, half]))
    torch.testing.assert_close(slerp(a, b, 1 / 3)["w"], torch.tensor([3 ** 0.5 / 2, 0.5]))  # sin(pi/3), sin(pi/6)
    assert torch.equal(slerp(a, b, 0.0)["w"], a["w"]) and torch.equal(slerp(a, b, 1.0)["w"], b["w"])
    torch.testing.assert_close(slerp(_v(1.0, 2.0), _v(2.0, 4.0), 0.5)["w"], torch.tensor([1.5, 3.0]))


def test_magmax_and_task_arithmetic_on_hand_computed_task_vectors():
    base = _v(0.0, 0.0, 0.0)
    ft1, ft2 = _v(1.0, -2.0, 3.0), _v(-1.5, 1.0, -4.0)
    assert torch.equal(magmax(base, [ft1, ft2])["w"], torch.tensor([-1.5, -2.0, -4.0]))
    assert torch.equal(magmax(base, [ft1, ft2], scale=0.5)["w"], torch.tensor([-0.75, -1.0, -2.0]))
    op = MergeOperator("task_arithmetic", scale=0.5)
    assert torch.equal(op(base, [ft1, ft2])["w"], torch.tensor([-0.25, -0.5, -0.5]))
    assert torch.equal(MergeOperator("interpolate", weight=0.25)(base, [ft1, ft2])["w"], torch.tensor([0.375, -1.25, 1.25]))


@pytest.mark.parametrize("op", [MergeOperator("interpolate", weight=0.3), MergeOperator("slerp", weight=0.7),
                                MergeOperator("task_arithmetic", scale=1.0), MergeOperator("ties", density=1.0),
                                MergeOperator("dare_ties", density=1.0), MergeOperator("magmax")])
def test_merging_identical_checkpoints_is_a_no_op(op):
    """The same model merged with itself comes back bit for bit; and any operator merging the base with itself gives the base."""
    base, ft = _state(0), _state(1)
    models = [ft] if op.name == "task_arithmetic" else [ft, {k: v.clone() for k, v in ft.items()}]  # scale 1: one model
    _assert_states_equal(op(base, models), ft)
    _assert_states_equal(MergeOperator(op.name)(base, [base, base]), base)


def test_merge_operators_refuse_what_they_cannot_merge():
    with pytest.raises(MergeError, match=r"unknown merge operator 'breadcrumbs' \(choose one of interpolate, slerp"):
        MergeOperator("breadcrumbs")
    with pytest.raises(MergeError, match=r"merge operator 'slerp' combines two models, got 3"):
        MergeOperator("slerp")(_v(0.0), [_v(1.0), _v(2.0), _v(3.0)])
    with pytest.raises(MergeError, match=r"slerp weight_b must be in \[0, 1\], got 2"):
        slerp(_v(1.0), _v(2.0), 2.0)
