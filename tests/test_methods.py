"""FoMo-in-Flux's update methods (methods.md section 8): each trains what it says, on a Llama and on a CLIP model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, CLIPModel

from fluxforge.config import ParamsError, TrainConfig, UpdateSettings, parse_params
from fluxforge.continual.methods import MethodError, build_method, trainable
from fluxforge.train.loop import causal_lm_loss, train
from fluxforge.train.sampler import MixtureSampler
from tiny import clip_batch, clip_loss, tiny_clip, tiny_model

CFG = TrainConfig(slices=["x"], steps=4, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=1, log_every=2,
                  schedule="constant", device="cpu")
LINEARS_PER_LAYER = {"q_proj": (32, 32), "k_proj": (32, 32), "v_proj": (32, 32), "o_proj": (32, 32),
                     "gate_proj": (32, 64), "up_proj": (32, 64), "down_proj": (64, 32)}  # (in, out) of the tiny Llama


@pytest.fixture(autouse=True)
def _no_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    """MFU's matmul-peak measurement costs a second per train() call and is not what these tests check."""
    monkeypatch.setenv("FLUXFORGE_MFU", "0")


def sampler(seed: int = 0) -> MixtureSampler:
    tokens = np.random.default_rng(seed).integers(2, 64, 4000).astype(np.int32)
    return MixtureSampler({"data": tokens}, {"data": 1.0}, CFG.seq_len, CFG.batch_size, seed)


def attached(name: str, model: torch.nn.Module | None = None, **keys: object):  # noqa: ANN201
    method = build_method(UpdateSettings(method=name, **keys))
    return method, method.attach(model if model is not None else tiny_model())


def run_task(method, model, seed: int = 0) -> None:  # noqa: ANN001
    method.begin_task(model)
    train(model, sampler(seed), CFG, method.objective(causal_lm_loss), desc=f"task {seed}", optimizer=method.optimizer,
          on_step=method.after_step)
    batches = [sampler(seed + 100).batch(i) for i in range(method.task_batches(CFG.batch_size))]
    method.end_task(model, causal_lm_loss, batches)


def changes(model: torch.nn.Module, task) -> tuple[set[str], set[str]]:  # noqa: ANN001
    """(names of parameters that changed, names of frozen ones) after ``task()``; frozen ones are compared bitwise."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    task()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    return changed, frozen


def lora_count(rank: int, per_layer: dict[str, tuple[int, int]], layers: int = 2) -> int:
    return layers * sum(rank * (i + o) for i, o in per_layer.values())


@pytest.mark.parametrize(("name", "expected"), [
    ("finetune", None),  # every parameter
    ("lora", lora_count(4, LINEARS_PER_LAYER)),  # A (r x in) and B (out x r) on every linear layer but the head
    ("dora", lora_count(4, LINEARS_PER_LAYER) + 2 * sum(o for _, o in LINEARS_PER_LAYER.values())),  # + a magnitude per row
    ("vera", 2 * sum(o + 4 for _, o in LINEARS_PER_LAYER.values())),  # lambda_b (out) and lambda_d (r) per layer
    ("lnfit", (2 * 2 + 1) * 32),  # two RMSNorms per block and the final one, width 32
    ("galore", None),
    ("ewc", None),
    ("si", None),
])
def test_each_method_trains_exactly_what_it_says_and_leaves_the_rest_bitwise(name, expected):
    method, model = attached(name)
    params = trainable(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in params.values()) == (total if expected is None else expected)
    changed, frozen = changes(model, lambda: run_task(method, model))
    assert not changed & frozen, f"frozen parameters changed: {sorted(changed & frozen)[:3]}"
    assert changed == set(params), f"trainable but unchanged: {sorted(set(params) - changed)[:3]}"


def test_bitfit_trains_every_bias_of_clip_and_refuses_a_bias_free_llama():
    method, model = attached("bitfit", tiny_clip())
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert set(trainable(model)) == biases and len(biases) > 10
    opt = method.optimizer(model, CFG)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        method.objective(clip_loss)(model, clip_batch()).backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == biases
    with pytest.raises(MethodError, match=r"stream\.method bitfit: the model has no bias parameters .*use stream\.method lnfit"):
        attached("bitfit")


def test_galore_updates_its_projection_matrices_in_a_low_rank_subspace():
    """GaLore's update of a projected matrix has rank <= its rank; a matrix outside target_modules updates at full rank."""
    cfg = CFG.model_copy(update={"weight_decay": 0.0, "steps": 1})  # decoupled weight decay would add a full-rank term
    method, model = attached("galore", galore={"rank": 2, "target_modules": ["q_proj"]})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, sampler(), cfg, method.objective(causal_lm_loss), optimizer=method.optimizer)
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    assert torch.linalg.matrix_rank(delta["model.layers.0.self_attn.q_proj.weight"]).item() <= 2
    assert torch.linalg.matrix_rank(delta["model.layers.0.self_attn.k_proj.weight"]).item() > 2


def test_a_lora_adapter_merged_into_the_base_gives_the_adapter_models_logits(tmp_path):
    method, model = attached("lora")
    run_task(method, model)
    deployed = method.deployable(model)
    assert not any("lora" in n for n, _ in deployed.named_parameters()), "the deployable model is plain"
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        expect, got = model(input_ids=x).logits, deployed(input_ids=x).logits
    assert not torch.allclose(expect, tiny_model()(input_ids=x).logits, atol=1e-4), "the adapter learned something"
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)
    deployed.save_pretrained(tmp_path / "hf", safe_serialization=True)  # what the stream registers: a plain HF checkpoint
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, expect, rtol=0, atol=1e-5)


def test_ewc_with_lambda_zero_is_finetuning_bit_for_bit():
    """The Fisher pass between tasks leaves weights, gradients and the random state as they were."""
    def stream(name: str, **keys: object) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        method, model = attached(name, **keys)
        for task in range(2):
            run_task(method, model, seed=task)
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain = stream("finetune")
    zero = stream("ewc", ewc={"lambda": 0.0, "fisher_samples": 8})
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    pulled = stream("ewc", ewc={"lambda": 1e4, "fisher_samples": 8})
    assert any(not torch.equal(plain[k], pulled[k]) for k in plain), "with lambda > 0 the penalty changes the second task"


def test_ewc_fisher_is_the_mean_squared_batch_gradient_and_decays_online():
    method, model = attached("ewc", ewc={"gamma": 0.5, "fisher_samples": 8})
    batches = [sampler(1).batch(i) for i in range(method.task_batches(4))]
    assert len(batches) == 2
    squares = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in batches:
        model.zero_grad()
        causal_lm_loss(model, b).backward()
        for n, p in model.named_parameters():
            squares[n] += p.grad ** 2
    model.zero_grad(set_to_none=True)
    method.end_task(model, causal_lm_loss, batches)
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(method.fisher[name], squares[name] / 2)
    assert all(p.grad is None for p in model.parameters()), "no gradient of the Fisher pass is left for the next step"
    method.end_task(model, causal_lm_loss, batches)  # the same weights, the same batches: F = 0.5 F + F
    torch.testing.assert_close(method.fisher[name], 1.5 * squares[name] / 2)
    assert method.penalty(model).item() == 0.0  # at the anchor
    with torch.no_grad():
        model.get_parameter(name).add_(0.1)
    expect = 0.5 * (method.fisher[name] * 0.01).sum()  # lambda/2 * F * delta^2
    torch.testing.assert_close(method.penalty(model), expect)


def test_si_importance_is_the_path_integral_of_the_loss_decrease():
    """Plain SGD on a quadratic: omega = -sum g * dtheta, and Omega = omega / (delta^2 + xi)."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    method, model = attached("si", model, si={"c": 2.0, "xi": 0.5})
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    expected_omega = 0.0
    for step in range(3):  # loss = w^2, g = 2w, dw = -0.25 g
        w = model.weight.item()
        opt.zero_grad()
        (model.weight ** 2).sum().backward()
        opt.step()
        method.after_step(step + 1, model)
        expected_omega += 2 * w * (w - model.weight.item())
    assert method.omega["weight"].item() == pytest.approx(expected_omega)
    method.end_task(model, lambda m, b: m.weight.sum(), [])
    delta = model.weight.item() - 1.0
    big = expected_omega / (delta ** 2 + 0.5)
    assert method.big_omega["weight"].item() == pytest.approx(big)
    with torch.no_grad():
        model.weight.add_(0.2)
    assert method.penalty(model).item() == pytest.approx(2.0 * big * 0.04)


def test_merge_schedules_start_and_deploy_as_fomo_says():
    """ema_merge: the merge is the next start and the deployed model; zs_merge: every task starts at zero-shot;
    ft_merge: training continues, the deployed model is zero-shot merged with the latest."""
    zero_shot = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    key = "model.layers.1.mlp.down_proj.weight"

    def after_two_tasks(name: str):  # noqa: ANN202
        method, model = attached(name)
        starts, lasts = [], []
        for task in range(2):
            method.begin_task(model)
            starts.append(model.state_dict()[key].clone())
            train(model, sampler(task), CFG, method.objective(causal_lm_loss), desc=f"{name} {task}", optimizer=method.optimizer)
            lasts.append(model.state_dict()[key].clone())
            method.end_task(model, causal_lm_loss, [])
        return method.deployable(model).state_dict()[key], starts, lasts, model.state_dict()[key]

    deployed, starts, lasts, trunk = after_two_tasks("ema_merge")
    first_merge = 0.5 * zero_shot[key] + 0.5 * lasts[0]
    torch.testing.assert_close(starts[1], first_merge)
    torch.testing.assert_close(deployed, 0.5 * first_merge + 0.5 * lasts[1])
    assert torch.equal(trunk, deployed)
    deployed, starts, lasts, _ = after_two_tasks("zs_merge")
    assert torch.equal(starts[0], zero_shot[key]) and torch.equal(starts[1], zero_shot[key])
    torch.testing.assert_close(deployed, 0.25 * zero_shot[key] + 0.25 * lasts[0] + 0.5 * lasts[1])
    deployed, starts, lasts, trunk = after_two_tasks("ft_merge")
    assert torch.equal(starts[1], lasts[0]) and torch.equal(trunk, lasts[1])
    torch.testing.assert_close(deployed, 0.5 * zero_shot[key] + 0.5 * lasts[1])


@pytest.mark.parametrize("name", ["lora", "lnfit", "ewc", "si", "ema_merge"])
def test_methods_train_a_clip_model_with_its_contrastive_loss(name):
    """The image-text stream's case: the same methods on a two-tower CLIP and a loss closure."""
    keys = {"adapter": {"target_modules": ["q_proj", "v_proj"]}} if name == "lora" else {}
    clip = tiny_clip()
    before = {n: p.detach().clone() for n, p in clip.named_parameters()}
    method, model = attached(name, clip, **keys)
    opt = method.optimizer(model, CFG)
    loss_fn = method.objective(clip_loss)
    for _ in range(2):  # two tasks
        method.begin_task(model)
        for step in range(2):
            opt.zero_grad()
            loss_fn(model, clip_batch(step)).backward()
            opt.step()
            method.after_step(step + 1, model)
        method.end_task(model, clip_loss, [clip_batch(9)] * method.task_batches(4))
    deployed = method.deployable(model)
    assert isinstance(deployed, CLIPModel)
    changed = {n for n, p in deployed.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed
    if name == "lnfit":
        assert all("norm" in n.replace("layrnorm", "layernorm") for n in changed)  # HF CLIP spells one "pre_layrnorm"
    with torch.no_grad():
        assert torch.isfinite(clip_loss(deployed, clip_batch()))


# ----------------------------------------------------------------------------- bad params, named by key
def _stream_params(tiny_raw: dict, **stream: object):  # noqa: ANN202
    raw = copy.deepcopy(tiny_raw)
    raw["stream"].update(stream)
    return parse_params(raw)


@pytest.mark.parametrize(("stream", "match"), [
    ({"method": "lora_plus"}, r"stream\.method: Input should be 'finetune', 'lora'"),
    ({"merge": {"method": "none", "operator": "breadcrumbs"}}, r"stream\.merge\.operator: Input should be 'interpolate', 'slerp'"),
    ({"adapter": {"rank": 0}}, r"stream\.adapter\.rank: Input should be greater than 0"),
    ({"ewc": {"fisher_samples": 0}}, r"stream\.ewc\.fisher_samples: Input should be greater than 0"),
    ({"method": "ema_merge", "merge": {"method": "ema"}}, r"stream\.method ema_merge merges as part of training; set stream\.merge\.method: none"),
    ({"task_peak": "meta_rsqrt"}, r"stream\.task_peak meta_rsqrt anneals the peak of per-task rsqrt schedules"),
    ({"budget": {"kind": "flops"}}, r"stream\.budget\.kind: Input should be 'tokens' or 'maf'"),
])
def test_bad_method_params_fail_at_load_naming_the_key(tiny_raw, stream, match):
    with pytest.raises(ParamsError, match=match):
        _stream_params(tiny_raw, **stream)


def test_adapter_targets_and_ranks_are_checked_against_the_loaded_model():
    with pytest.raises(MethodError, match=r"stream\.adapter\.target_modules: \['qkv'\] match no linear module .*'q_proj'"):
        attached("lora", adapter={"target_modules": ["q_proj", "qkv"]})
    with pytest.raises(MethodError, match=r"stream\.adapter\.rank: rank 40 is larger than layer model\.layers\.0\.self_attn\.q_proj "
                                          r"\(32 x 32, rank at most 32\)"):
        attached("dora", adapter={"rank": 40})
    with pytest.raises(MethodError, match=r"stream\.galore\.target_modules: \['c_fc'\] match no linear module"):
        attached("galore", galore={"target_modules": ["c_fc"]})
    method, model = attached("lora", tiny_clip(), adapter={"target_modules": ["out_proj", "fc1"]})  # CLIP's own names
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_a_stream_model_from_an_adapter_registers_as_a_plain_checkpoint_with_method_and_budget(tiny_params, in_tmp):
    """What the stream stage saves for a PEFT method: adapters merged in, method and budget in the lineage tags."""
    import json

    from fluxforge import paths as P
    from fluxforge.data.tokenize import train_tokenizer
    from fluxforge.track.registry import lineage_tags
    from fluxforge.train.model import save_model

    method, model = attached("lora")
    run_task(method, model)
    tok = train_tokenizer(["a small corpus for a tokenizer", "with two documents"], vocab_size=64)
    budget = {"kind": "maf", "steps": {"cyber": 22}, "maf": 1.36e7}
    save_model(method.deployable(model), tok, P.model_dir("stream"), {"name": "stream", "method": method.describe(),
                                                                       "budget": budget})
    loaded = AutoModelForCausalLM.from_pretrained(P.model_dir("stream"))
    x = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=1e-5)
    tags = lineage_tags(tiny_params, "stream")
    assert json.loads(tags["fluxforge.method"]) == {"method": "lora", "rank": 4, "alpha": 4.0, "dropout": 0.0,
                                                    "target_modules": "all-linear"}
    assert json.loads(tags["fluxforge.budget"]) == budget
