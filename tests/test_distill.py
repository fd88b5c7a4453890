"""Knowledge distillation: the tests of methods.md section 9, committees, cached targets, students cut from a teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fluxforge.errors import DataError
from fluxforge.train.distill import TargetCache, Targets, distillation_objective, kd_loss, keep_layers, teacher_targets
from fluxforge.train.loop import causal_lm_loss
from fluxforge.train.model import build_model
from tiny import tiny_config

TINY = tiny_config(num_layers=3)


def _model(seed: int, layers: int = 1) -> torch.nn.Module:
    return build_model(TINY.model_copy(update={"init_seed": seed, "num_layers": layers}), 64, 0, 1).eval()


def test_kd_is_zero_for_an_identical_teacher_and_ce_alone_at_alpha_zero():
    m = _model(0)
    batch = torch.randint(0, 64, (2, 9))
    assert distillation_objective([m], 2.0, alpha=1.0)(m, batch).item() == pytest.approx(0.0, abs=1e-5)
    mixed = distillation_objective([m], 2.0, alpha=0.0)(m, batch)
    assert mixed.item() == pytest.approx(causal_lm_loss(m, batch).item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_gradient_matches_the_closed_form(temperature):
    """d/dz_s of alpha*T^2*KL = alpha * T * (p_s^T - p_t^T) / N (N = positions)."""
    torch.manual_seed(0)
    z_s = torch.randn(2, 5, 11, requires_grad=True)
    z_t = torch.randn(2, 5, 11)
    alpha = 0.7
    loss = alpha * kd_loss(z_s, Targets(F.log_softmax(z_t / temperature, -1)), temperature)
    loss.backward()
    expected = alpha * temperature * (F.softmax(z_s / temperature, -1) - F.softmax(z_t / temperature, -1)) / 10
    assert torch.allclose(z_s.grad, expected, atol=1e-6)
    # and it is torch's own KL with batchmean over positions
    ref = F.kl_div(F.log_softmax(z_s.reshape(-1, 11) / temperature, -1), F.log_softmax(z_t.reshape(-1, 11) / temperature, -1),
                   log_target=True, reduction="batchmean") * temperature**2
    assert loss.item() == pytest.approx(alpha * ref.item(), rel=1e-6)


@pytest.mark.parametrize("rule", ["mean_probs", "mean_logits"])
def test_a_committee_of_identical_members_equals_one_member(rule):
    m = _model(1)
    x = torch.randint(0, 64, (2, 8))
    one = teacher_targets([m], x, 2.0, rule)
    three = teacher_targets([m, m, m], x, 2.0, rule)
    assert torch.allclose(one.logp, three.logp, atol=1e-5)


def test_mean_probs_is_the_average_of_member_probabilities():
    a, b = _model(1), _model(2)
    x = torch.randint(0, 64, (1, 6))
    got = teacher_targets([a, b], x, 1.0, "mean_probs").logp.exp()
    want = (F.softmax(a(input_ids=x).logits, -1) + F.softmax(b(input_ids=x).logits, -1)) / 2
    assert torch.allclose(got, want.detach(), atol=1e-5)
    assert not torch.allclose(got, teacher_targets([a, b], x, 1.0, "mean_logits").logp.exp(), atol=1e-4)


def test_committee_accuracy_is_at_least_the_mean_member_accuracy_on_a_toy_set():
    """Members = truth + independent noise; averaging probabilities cancels noise (a sanity check)."""
    g = torch.Generator().manual_seed(0)
    n, k = 2000, 5
    y = torch.randint(0, k, (n,), generator=g)
    truth = F.one_hot(y, k).float() * 1.5
    members = [truth + torch.randn(n, k, generator=g) * 1.2 for _ in range(5)]
    accs = [(z.argmax(-1) == y).float().mean().item() for z in members]
    committee = torch.stack([F.softmax(z, -1) for z in members]).mean(0)
    acc = (committee.argmax(-1) == y).float().mean().item()
    assert acc >= sum(accs) / len(accs)


def test_top_k_loss_is_the_kl_of_the_coarsened_distributions():
    """Top-k targets keep the rest of the mass as one bucket: KL over (k tokens, rest), never more than the full KL."""
    teacher, student = _model(3), _model(4)
    x = torch.randint(0, 64, (2, 7))
    dense = teacher_targets([teacher], x, 2.0)
    assert teacher_targets([teacher], x, 2.0, top_k=64).index is None
    sparse = teacher_targets([teacher], x, 2.0, top_k=8)
    assert sparse.logp.shape == (2, 7, 8) and torch.allclose(sparse.logp, dense.logp.topk(8, -1).values)
    z = student(input_ids=x).logits
    full, coarse = kd_loss(z, dense, 2.0), kd_loss(z, sparse, 2.0)
    # by hand: coarsen both distributions to the 8 kept tokens + one bucket, then KL
    p, q = dense.logp.exp(), F.softmax(z / 2.0, -1)
    pk, qk = p.gather(-1, sparse.index), q.gather(-1, sparse.index)
    pc = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    qc = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    by_hand = (pc * (pc.log() - qc.log())).sum(-1).mean() * 4.0
    assert coarse.item() == pytest.approx(by_hand.item(), rel=1e-4)
    assert 0 < coarse.item() <= full.item() + 1e-6  # coarsening never increases a KL
    assert kd_loss(teacher(input_ids=x).logits, sparse, 2.0).item() == pytest.approx(0.0, abs=1e-5)


def test_cached_targets_are_reused_and_equal_to_fresh_ones(tmp_path):
    teacher, student = _model(5), _model(6)
    from fluxforge.data.tokenize import train_tokenizer
    from fluxforge.train.model import save_model

    save_model(teacher, train_tokenizer(["a b c"] * 5, 270), tmp_path / "t", {})
    cache = TargetCache(tmp_path / "cache", [tmp_path / "t"], 2.0, "mean_probs", top_k=16)
    obj = distillation_objective([teacher], 2.0, 0.5, top_k=16, cache=cache)
    batch = torch.randint(0, 64, (2, 9))
    first = obj(student, batch).item()
    second = obj(student, batch).item()
    assert (cache.misses, cache.hits) == (1, 1) and second == pytest.approx(first, abs=1e-6)
    fresh = distillation_objective([teacher], 2.0, 0.5, top_k=16)(student, batch).item()
    assert fresh == pytest.approx(first, abs=2e-3)  # the cache stores half precision
    other = TargetCache(tmp_path / "cache", [tmp_path / "t"], 1.0, "mean_probs", top_k=16)
    assert other.dir != cache.dir  # another temperature never reads these targets


def test_student_cut_from_teacher_layers():
    teacher = _model(7, layers=3)
    x = torch.randint(0, 64, (2, 8))
    same = keep_layers(teacher, [0, 1, 2])
    assert torch.allclose(same(input_ids=x).logits, teacher(input_ids=x).logits, atol=1e-6)
    small = keep_layers(teacher, [0, 2])
    assert small.config.num_hidden_layers == 2
    assert torch.equal(small.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert torch.equal(small.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in teacher.parameters())
    with pytest.raises(DataError, match=r"layers 0\.\.2; \[5\] do not exist"):
        keep_layers(teacher, [0, 5])
    assert math.isfinite(causal_lm_loss(small, torch.randint(0, 64, (2, 9))).item())
