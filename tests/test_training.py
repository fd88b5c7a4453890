
import numpy as np
import pytest
import torch

from fluxforge.config import TrainConfig
from fluxforge.train.loop import causal_lm_loss, train
from fluxforge.train.model import ModelLoadError, build_model, load_model, save_model
from fluxforge.train.sampler import MixtureSampler, mixture_weights
from fluxforge.train.schedule import lr_factor
from resume_proof import RecordingSampler, assert_resumed
from tiny import tiny_config

TINY = tiny_config(num_layers=1)


def _streams(seed=0):
    rng = np.random.default_rng(seed)
    pattern = np.tile(np.arange(10, 40, dtype=np.uint16), 200)  # learnable: a repeating sequence
    return {"a": pattern, "b": rng.integers(10, 60, size=3000).astype(np.uint16)}


def _cfg(**kw) -> TrainConfig:
    base = dict(slices=["x"], steps=30, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=3, log_every=5)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_then_stay_within_bounds(schedule):
    cfg = _cfg(steps=100, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    vals = [f(s) for s in range(10, 100)]
    assert all(0.1 - 1e-9 <= v <= 1.0 + 1e-9 for v in vals)
    assert all(a >= b - 1e-12 for a, b in zip(vals, vals[1:])), "non-increasing after warmup"
    if schedule != "constant":
        assert vals[-1] == pytest.approx(0.1)
    if schedule == "wsd":
        assert f(79) == 1.0 and f(81) < 1.0


def test_sampler_is_a_pure_function_of_step_and_respects_weights():
    s = MixtureSampler(_streams(), {"a": 0.8, "b": 0.2}, seq_len=16, batch_size=64, seed=3)
    assert torch.equal(s.batch(7).tokens, s.batch(7).tokens) and not torch.equal(s.batch(7).tokens, s.batch(8).tokens)
    w = mixture_weights(["a"], ["b"], 0.25, {"a": 100, "b": 50})
    assert w == {"a": 0.75, "b": 0.25}


def test_loss_falls_and_resume_is_bitwise_identical(tmp_path):
    torch.manual_seed(0)
    streams = _streams()
    sampler = MixtureSampler(streams, {"a": 1.0}, 16, 4, seed=1)
    full = build_model(TINY, 64, 0, 1)
    hist = train(full, sampler, _cfg())
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.7

    # interrupted run: stop after 10 steps (checkpoint written), then resume to 30 in a fresh model
    first = build_model(TINY, 64, 0, 1)
    cfg = _cfg()
    _stop_after(first, sampler, cfg, tmp_path, stop=10)
    resumed, recording = build_model(TINY, 64, 0, 1), RecordingSampler(sampler)
    hist_resumed = train(resumed, recording, cfg, checkpoint_dir=tmp_path, checkpoint_every=10)
    assert_resumed(hist_resumed, recording.asked, at=10, steps=30)
    assert [r["loss"] for r in hist_resumed] == [r["loss"] for r in hist]
    for (n, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), n


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    sampler = MixtureSampler(_streams(), {"a": 1.0}, 16, 4, seed=1)
    _stop_after(build_model(TINY, 64, 0, 1), sampler, _cfg(), tmp_path, stop=10)
    hist = train(build_model(TINY, 64, 0, 1), sampler, _cfg(lr=1e-3), checkpoint_dir=tmp_path, checkpoint_every=10)
    assert hist[0]["step"] == 5, "a changed config must start from step 0, not from the stale checkpoint"


def test_probes_run_on_schedule_survive_resume_and_do_not_change_training(tmp_path):
    sampler = MixtureSampler(_streams(), {"a": 1.0}, 16, 4, seed=1)
    x = sampler.batch(999)

    def probe(model):
        assert not model.training and not torch.is_grad_enabled()
        return {"loss": causal_lm_loss(model, x).item()}

    plain, probed = build_model(TINY, 64, 0, 1), build_model(TINY, 64, 0, 1)
    train(plain, sampler, _cfg())
    rows: list[dict] = []
    train(probed, sampler, _cfg(), probe=probe, probe_every=12, probes=rows)
    assert [r["step"] for r in rows] == [0, 12, 24, 30]
    assert rows[-1]["loss"] < rows[0]["loss"]
    for (n, p), (_, q) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(p, q), n

    # a crash after step 20: the resumed run keeps the probes taken before it and adds the rest
    first = build_model(TINY, 64, 0, 1)
    _stop_after(first, sampler, _cfg(), tmp_path, stop=20, probe=probe, probe_every=12)
    again: list[dict] = []
    recording = RecordingSampler(sampler)
    hist = train(build_model(TINY, 64, 0, 1), recording, _cfg(), checkpoint_dir=tmp_path, checkpoint_every=20,
                 probe=probe, probe_every=12, probes=again)
    assert_resumed(hist, recording.asked, at=20, steps=30)
    assert [r["step"] for r in again] == [0, 12, 24, 30]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in rows])


def _stop_after(model, sampler, cfg, ckpt_dir, stop, **kw):
    """Run until the checkpoint at ``stop`` is written, then abandon the process state (as a crash would)."""
    class Stop(Exception):
        pass

    orig = sampler.batch

    def batch(step):
        if step == stop:
            raise Stop
        return orig(step)

    sampler.batch = batch
    try:
        train(model, sampler, cfg, checkpoint_dir=ckpt_dir, checkpoint_every=stop, **kw)
    except Stop:
        pass
    finally:
        sampler.batch = orig
    assert (ckpt_dir / f"state-{stop:08d}.pt").exists()


def test_save_load_roundtrip_and_clear_errors(tmp_path):
    from fluxforge.data.tokenize import train_tokenizer

    tok = train_tokenizer(["alpha beta gamma delta"] * 20, 300)
    m = build_model(TINY, len(tok), tok.eos_token_id, tok.pad_token_id)
    save_model(m, tok, tmp_path / "m", {"steps": 1})
    back, tok2 = load_model(tmp_path / "m")
    assert torch.equal(back.model.embed_tokens.weight, m.model.embed_tokens.weight)
    assert tok2.encode("alpha beta") == tok.encode("alpha beta")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="corrupt or truncated safetensors"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        load_model(tmp_path / "m")
