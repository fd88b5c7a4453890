"""The engine's options on CPU: accumulation, precision, document masks, kept checkpoints, init modes, growth, averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxforge.config import TrainConfig
from fluxforge.train.engine import EngineError, checkpoints, load_trainer_state
from fluxforge.train.loop import lm_objective, train
from fluxforge.train.model import build_model
from fluxforge.train.packing import document_attention
from fluxforge.train.sampler import Batch, MixtureSampler, PhasedSampler
from resume_proof import RecordingSampler
from tiny import TINY

EOS = 0


def _stream(seed: int = 0, n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.integers(2, 64, n).astype(np.uint16)
    s[rng.choice(n, n // 40, replace=False)] = EOS  # documents of ~40 tokens
    s[-1] = EOS
    return s


def _sampler(batch_size: int = 8, seed: int = 0) -> MixtureSampler:
    return MixtureSampler({"a": _stream()}, {"a": 1.0}, seq_len=16, batch_size=batch_size, seed=seed)


def _cfg(**kw) -> TrainConfig:
    base = {"slices": ["a"], "steps": 12, "batch_size": 8, "seq_len": 16, "lr": 3e-3, "warmup_steps": 2, "log_every": 1}
    return TrainConfig(**{**base, **kw})


def _model() -> torch.nn.Module:
    return build_model(TINY, 64, EOS, 1)


def test_gradient_accumulation_trains_the_same_model_as_one_big_batch():
    one, four = _model(), _model()
    h1 = train(one, _sampler(), _cfg())
    h4 = train(four, _sampler(), _cfg(grad_accum=4))
    assert [r["loss"] for r in h4] == pytest.approx([r["loss"] for r in h1], rel=1e-4)
    for (n, p), (_, q) in zip(one.state_dict().items(), four.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-5), n  # equal up to the order of float sums
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        _cfg(grad_accum=3)


def test_bf16_autocast_on_cpu_tracks_fp32_and_fp16_needs_cuda():
    fp32 = train(_model(), _sampler(), _cfg())
    bf16 = train(_model(), _sampler(), _cfg(precision="bf16"))
    assert bf16[-1]["loss"] == pytest.approx(fp32[-1]["loss"], rel=0.05)
    assert bf16[-1]["loss"] != fp32[-1]["loss"]  # it really ran in bf16
    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        train(_model(), _sampler(), _cfg(precision="fp16"))


def test_document_mask_blocks_attention_across_documents_and_restarts_positions():
    inputs = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 3]])
    mask, pos = document_attention(inputs, EOS)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    m = mask[0, 0]
    assert m[4].tolist() == [False, False, False, True, True, False, False, False]  # token 8 sees 7 and itself
    assert not m.triu(1).any()  # still causal


def test_with_document_masks_a_document_is_read_the_same_whatever_precedes_it():
    model = _model().eval()
    doc = [7, 8, 9, 10, 11]
    a = torch.tensor([[5, 6, 12, EOS, *doc, EOS]])
    b = torch.tensor([[40, 41, 42, EOS, *doc, EOS]])
    masked, plain = lm_objective(doc_mask=True, eos_id=EOS), lm_objective()
    with torch.no_grad():
        la = model(input_ids=a, **dict(zip(("attention_mask", "position_ids"), document_attention(a, EOS)))).logits
        lb = model(input_ids=b, **dict(zip(("attention_mask", "position_ids"), document_attention(b, EOS)))).logits
        assert torch.allclose(la[0, 4:], lb[0, 4:], atol=1e-5)  # the second document's logits ignore the first
        pa, pb = model(input_ids=a).logits, model(input_ids=b).logits
        assert not torch.allclose(pa[0, 4:], pb[0, 4:], atol=1e-3)  # without the mask they do not
        assert masked(model, a).item() != plain(model, a).item()


def test_checkpoints_keep_the_newest_k_and_a_corrupt_one_is_a_clear_error(tmp_path):
    cfg = _cfg(steps=20, keep_checkpoints=2, checkpoint_every=5)
    train(_model(), _sampler(), cfg, checkpoint_dir=tmp_path)
    assert [p.name for p in checkpoints(tmp_path)] == ["state-00000010.pt", "state-00000015.pt"]
    checkpoints(tmp_path)[-1].write_bytes(b"\x00not a checkpoint")
    with pytest.raises(EngineError, match=r"(?s)state-00000015\.pt: the checkpoint cannot be read.*state-00000010\.pt"):
        train(_model(), _sampler(), cfg, checkpoint_dir=tmp_path)


def test_init_modes_carry_what_they_promise(tmp_path):
    parent = _model()
    export: dict = {}
    train(parent, _sampler(), _cfg(schedule="wsd"), export=export)
    torch.save(export, tmp_path / "trainer.pt")
    state = load_trainer_state(tmp_path / "trainer.pt")
    first = state["optimizer"]["state"][0]["exp_avg"].clone()

    lrs = {}
    for mode in ("weights", "weights_optimizer", "full"):
        child = build_model(TINY, 64, EOS, 1)
        child.load_state_dict(parent.state_dict())
        hist = train(child, _sampler(seed=1), _cfg(schedule="wsd", init_mode=mode, warmup_steps=4), init_state=state)
        lrs[mode] = hist[0]["lr"]
    peak = 3e-3
    assert lrs["weights"] == lrs["weights_optimizer"] < peak  # both warm up again
    assert lrs["full"] == pytest.approx(peak)  # continues on the stable level: no re-warm
    assert torch.equal(load_trainer_state(tmp_path / "trainer.pt")["optimizer"]["state"][0]["exp_avg"], first)

    with pytest.raises(ValueError, match="cosine schedule cannot"):
        _cfg(init_mode="full")
    with pytest.raises(EngineError, match="no optimizer state"):
        train(_model(), _sampler(), _cfg(init_mode="weights_optimizer"), init_state={})
    other = build_model(TINY.model_copy(update={"hidden_size": 64}), 64, EOS, 1)
    with pytest.raises(EngineError, match="another architecture"):
        train(other, _sampler(), _cfg(init_mode="weights_optimizer"), init_state=state)


def test_corrupt_trainer_state_is_a_clear_error(tmp_path):
    bad = tmp_path / "trainer.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(EngineError, match="cannot read the training state"):
        load_trainer_state(bad)


def test_meco_phases_share_one_schedule_and_masks_reach_the_loss():
    """methods.md section 1 test 4: the LR across the switch is the single schedule's value."""
    stream = _stream()
    mask = np.ones(len(stream), dtype=bool)
    mask[::3] = False
    cond = MixtureSampler({"a": stream}, {"a": 1.0}, 16, 8, 0, masks={"a": mask})
    phased = PhasedSampler(cond, _sampler(), switch=9)
    assert phased.batch(8).loss_mask is not None and phased.batch(9).loss_mask is None
    meco_hist = train(_model(), phased, _cfg())
    plain_hist = train(_model(), _sampler(), _cfg())
    assert [r["lr"] for r in meco_hist] == [r["lr"] for r in plain_hist]
    assert [r["loss"] for r in meco_hist[:8]] != [r["loss"] for r in plain_hist[:8]]
    b = cond.batch(0)
    obj = lm_objective()
    model = _model()
    with torch.no_grad():
        assert obj(model, b).item() != obj(model, Batch(b.tokens)).item()  # the mask changes which targets count


def test_growth_trains_small_then_stacked_model_on_one_axis(tmp_path):
    from fluxforge.train.growth import GrowthError, growth_split
    from fluxforge.train.job import train_phases

    small = build_model(TINY.model_copy(update={"num_layers": 1}), 64, EOS, 1)
    cfg = _cfg(steps=10, growth={"factor": 2, "fraction": 0.4})
    assert growth_split(small, cfg) == 4
    grown, hist = train_phases(small, _sampler(), cfg, lm_objective(), tmp_path, "g")
    assert grown.config.num_hidden_layers == 2
    assert [r["step"] for r in hist] == list(range(1, 11))
    assert hist[-1]["tokens"] == 10 * 8 * 16
    with pytest.raises(GrowthError, match="each phase needs >= 2 steps"):
        growth_split(small, _cfg(steps=10, growth={"factor": 2, "fraction": 0.1}))


def test_averaging_snapshots_the_last_k_steps_and_averages_them(tmp_path):
    from fluxforge.train.averaging import average_snapshots, snapshot_hook, snapshots

    cfg = _cfg(steps=12, averaging={"method": "sma", "k": 3, "every": 2})
    model = _model()
    train(model, _sampler(), cfg, on_step=snapshot_hook(cfg, tmp_path))
    paths = snapshots(tmp_path)
    assert [p.name for p in paths] == [f"step-{s:09d}.safetensors" for s in (8, 10, 12)]
    from safetensors.torch import load_file

    mean = {k: sum(load_file(p)[k] for p in paths) / 3 for k in load_file(paths[0])}
    info = average_snapshots(cfg, model, tmp_path)
    assert info["steps"] == [8, 10, 12] and info["weights"] == pytest.approx([1 / 3] * 3)
    for k, v in mean.items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k


def test_a_deployable_copy_is_the_trunk_forked_at_the_anneal_and_equals_an_annealed_run(tmp_path, monkeypatch, caplog):
    """Stream schedules: the trunk stays on the constant level; the copy resumes the trunk's checkpoint at the
    anneal start with the annealing schedule, which is bitwise an uninterrupted annealed run (CPU)."""
    import logging

    from fluxforge import paths as P
    from fluxforge.continual.runner import train_task

    monkeypatch.setattr(P, "CHECKPOINTS", tmp_path)
    cfg = _cfg(steps=20, schedule="wsd", decay_fraction=0.25)
    trunk, reference = _model(), _model()
    train(reference, _sampler(), cfg)
    recording = RecordingSampler(_sampler())
    with caplog.at_level(logging.WARNING, logger="fluxforge.train.loop"):
        deploy, state = train_task(trunk, recording, cfg, "t", None, None, 0, [], EOS)
    assert "resuming t from checkpoint" in caplog.text and "at step 15" in caplog.text
    assert recording.asked == list(range(20)) + list(range(15, 20)), "the copy trains only the 5 annealing steps"
    for (n, p), (_, q) in zip(deploy.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(p, q), n
    assert not torch.equal(trunk.lm_head.weight, deploy.lm_head.weight)  # the trunk never annealed
    assert state["optimizer"]["state"]  # the trunk's optimizer state, for the next task
