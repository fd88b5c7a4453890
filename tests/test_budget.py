"""Memory-adjusted FLOPs (FoMo-in-Flux's MAF, methods.md section 8): the table 4 arithmetic, and the measurements."""

from __future__ import annotations

import pytest
import torch

from fluxforge.config import TrainConfig, UpdateSettings
from fluxforge.continual.budget import CPU_MEMORY, BudgetError, Cost, budget_table, maf, measure_cost, steps_for_maf
from fluxforge.continual.methods import build_method
from fluxforge.continual.stream import steps_for_budget
from fluxforge.train.loop import causal_lm_loss
from tiny import clip_batch, clip_loss, tiny_clip, tiny_model

CFG = TrainConfig(slices=["x"], steps=10, warmup_steps=1)
FOMO_FT_GFLOPS, FOMO_FT_GB = 63394.7585, 46.59  # table 4: full finetuning of ViT-B/32, batch 512


def fomo_cost(method: str, gflops: float, multiplier: float, task_gflops: float = 0.0) -> Cost:
    """A table 4 row as a measured cost would be (memory in GB x 1e9 bytes)."""
    return Cost(method, gflops - task_gflops, task_gflops, round(FOMO_FT_GB * multiplier * 1e9), CPU_MEMORY, 0)


def within(got: float, expect: float, rel: float = 1e-3) -> bool:
    return abs(got - expect) <= rel * abs(expect)


def test_full_finetuning_steps_per_task_at_every_stream_length():
    """Table 4: 1,420 / 568 / 284 / 142 steps per task at T = 20 / 50 / 100 / 200, 28,400 steps in all (batch 512)."""
    total_samples = 28_400 * 512
    for tasks, steps in ((20, 1420), (50, 568), (100, 284), (200, 142)):
        assert steps_for_budget(total_samples // tasks, 512, 1) == steps


def test_maf_arithmetic_reproduces_fomo_table_4():
    """LoRA r=4: 54,479.25 GFLOPs x 0.8702 = 47,407.84 MAF -> 1,898 steps; EWC: its Fisher pass (98 batches)
    charged to every step, 99 x finetune's GFLOPs = 6,276,081 -> 14 steps; merges: finetune's 1,420."""
    assert within(maf(54_479.25, 0.8702), 47_407.84)
    rows = budget_table([fomo_cost("finetune", FOMO_FT_GFLOPS, 1.0),
                         fomo_cost("lora", 54_479.25, 0.8702),
                         fomo_cost("ewc", 99 * FOMO_FT_GFLOPS, 1.0, task_gflops=98 * FOMO_FT_GFLOPS),
                         fomo_cost("ema_merge", FOMO_FT_GFLOPS, 1.0)], {"t1": 1420}, "maf")
    by = {r.method: r for r in rows}
    assert within(by["lora"].memory_multiplier, 0.8702) and within(by["lora"].maf, 47_407.84)
    assert by["lora"].steps == {"t1": 1898}
    assert within(by["ewc"].flops, 6_276_081) and by["ewc"].steps == {"t1": 14}
    assert by["ema_merge"].steps == {"t1": 1420} and by["finetune"].steps == {"t1": 1420}
    tokens = budget_table([fomo_cost("finetune", FOMO_FT_GFLOPS, 1.0), fomo_cost("lora", 54_479.25, 0.8702)],
                          {"t1": 1420}, "tokens")
    assert tokens[1].steps == {"t1": 1420}, "a tokens budget gives every method the same steps"


def test_equal_costs_give_exactly_the_reference_steps_whatever_the_float_noise():
    for steps in (1, 7, 142, 1420, 99_999):
        assert steps_for_maf(steps, 0.1 + 0.2, 0.3) == steps  # 0.1 + 0.2 != 0.3 in floating point


@pytest.mark.slow  # a full-size ViT-B/32 CLIP on the meta device: shapes only, but four training steps of it
def test_lnfit_row_of_table_4_from_flops_counted_on_fomos_architecture():
    """LNFit/BitFit: memory x0.6558 -> 3,179 steps. The table gives no LNFit GFLOPs and the multiplier alone gives
    1420 / 0.6558 = 2,165 steps; LNFit also computes less (no weight gradients). Counted on FoMo's architecture
    (HF CLIP ViT-B/32, the default CLIPConfig, built on the meta device), its FLOPs ratio gives 3,230: 1.6% from FoMo's
    3,179 (whose own LoRA/LNFit implementation shapes its GFLOPs: FoMo's ratio is 0.681)."""
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        model = CLIPModel(CLIPConfig())
    batch = {"input_ids": torch.zeros(1, 77, dtype=torch.long, device="meta"),
             "pixel_values": torch.zeros(1, 3, 224, 224, device="meta")}
    flops = {name: measure_cost(lambda n=name: build_method(UpdateSettings(method=n)), model, clip_loss, batch, [], CFG,
                                "meta").step_flops for name in ("finetune", "lnfit")}
    ratio = flops["lnfit"] / flops["finetune"]
    assert 2 / 3 - 0.01 < ratio < 0.69, "backward without weight gradients: about 2/3 of a full step"
    steps = steps_for_maf(1420, FOMO_FT_GFLOPS, maf(FOMO_FT_GFLOPS * ratio, 0.6558))
    assert within(steps, 3179, rel=0.02)
    assert not within(steps_for_maf(1420, 1.0, 0.6558), 3179, rel=0.2)


def measured(name: str, model=None, objective=causal_lm_loss, batch=None, task_batches=(), **keys):  # noqa: ANN001, ANN201
    model = model if model is not None else tiny_model()
    batch = batch if batch is not None else torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    return measure_cost(lambda: build_method(UpdateSettings(method=name, **keys)), model, objective, batch, list(task_batches), CFG)


def test_cpu_memory_is_parameters_gradients_optimizer_saved_activations_and_method_state():
    model = tiny_model()
    n = sum(p.numel() for p in model.parameters())
    ft = measured("finetune", model)
    parts = ft.memory_parts
    assert parts["parameters"] == 4 * n and parts["gradients"] == 4 * n
    assert 8 * n <= parts["optimizer"] <= 8 * n + 4 * len(list(model.parameters()))  # AdamW's two moments (+ step counters)
    assert parts["method"] == 0 and ft.memory_bytes == sum(parts.values())
    double = measured("finetune", model, batch=torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0)))
    assert double.memory_parts["parameters"] == parts["parameters"]
    assert 1.8 < double.memory_parts["saved_for_backward"] / parts["saved_for_backward"] < 2.2, "activations grow with the batch"
    ewc = measured("ewc", model, task_batches=[torch.randint(0, 64, (4, 17))] * 2, ewc={"fisher_samples": 8})
    assert ewc.memory_parts["method"] == 2 * 4 * n  # the Fisher and the anchor, one float per parameter each
    lnfit = measured("lnfit", model)
    assert lnfit.memory_parts["gradients"] == 4 * 160 and lnfit.memory_bytes < ft.memory_bytes


def test_flops_count_what_each_method_computes():
    """EWC: the same step as finetuning, plus its Fisher pass (one forward+backward per batch) per task; LoRA and LNFit
    skip the frozen weights' gradients; GaLore adds its projections; merges add nothing."""
    model = tiny_model()
    task = [torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    ft = measured("finetune", model)
    ewc = measured("ewc", model, task_batches=task, ewc={"fisher_samples": 8})
    assert ewc.step_flops == ft.step_flops and ewc.task_flops == 2 * ft.step_flops
    assert measured("lnfit", model).step_flops < measured("lora", model).step_flops < ft.step_flops
    assert measured("galore", model, galore={"rank": 4}).step_flops > ft.step_flops
    merge = measured("zs_merge", model, merge={"operator": "ties"})
    assert (merge.step_flops, merge.task_flops, merge.memory_bytes) == (ft.step_flops, 0.0, ft.memory_bytes)


def test_a_budget_that_leaves_a_method_no_steps_fails_naming_the_key():
    model = tiny_model()
    ft = measured("finetune", model)
    ewc = measured("ewc", model, task_batches=[torch.randint(0, 64, (4, 17))] * 4, ewc={"fisher_samples": 16})
    rows = budget_table([ft, ewc], {"t1": 12}, "maf")
    assert rows[1].steps["t1"] == int(12 * ft.flops / (ewc.flops * rows[1].memory_multiplier))
    with pytest.raises(BudgetError, match=r"stream\.budget\.kind maf: method ewc costs .*x full finetuning's memory-adjusted "
                                          r"FLOPs per step, which leaves it 0 steps on task\(s\) \['t1'\] .*stream\.ewc\.fisher_samples"):
        budget_table([ft, ewc], {"t1": 3}, "maf")


@pytest.mark.parametrize("name", ["lora", "lnfit", "bitfit", "ewc", "si"])
def test_the_budget_measures_a_clip_model_with_its_contrastive_loss(name):
    """The image-text stream's case: a two-tower CLIP, pixel and token inputs in a dict, a loss closure."""
    clip = tiny_clip()
    ft = measured("finetune", clip, clip_loss, clip_batch())
    cost = measured(name, clip, clip_loss, clip_batch(), task_batches=[clip_batch(1)], ewc={"fisher_samples": 4})
    row = budget_table([ft, cost], {"t": 100}, "maf")[1]
    assert ft.step_flops > 0 and cost.memory_bytes > 0
    if name in ("lora", "lnfit", "bitfit"):
        assert cost.step_flops < ft.step_flops and row.memory_multiplier < 1 and row.steps["t"] > 100
    else:
        assert cost.step_flops == ft.step_flops and row.memory_multiplier > 1 and row.steps["t"] < 100
