"""FLOPs per token (checked by hand and against torch's FlopCounterMode), the measured matmul peak, MFU."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from fluxforge.train.flops import flops_per_token, matmul_params, measure_matmul_peak, mfu


def tiny_config(tie: bool = True, kv_heads: int = 2) -> LlamaConfig:
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, tie_word_embeddings=tie, max_position_embeddings=64)
    # FlopCounterMode has no formula for the CPU SDPA kernel (it would count no attention at all);
    # eager attention runs the same two matmuls as plain bmm, which it does count.
    cfg._attn_implementation = "eager"
    return cfg


def test_flops_per_token_by_hand() -> None:
    # d=64, L=2, H=4 query heads of Q=16, 2 kv heads, ff=96, V=128, T=32
    q_o = 2 * 64 * 64
    k_v = 2 * 64 * (2 * 16)
    mlp = 3 * 64 * 96
    head = 64 * 128
    n = 2 * (q_o + k_v + mlp) + head
    assert matmul_params(tiny_config()) == n == 69_632
    assert flops_per_token(tiny_config(), 32) == 6 * n + 12 * 2 * 4 * 16 * 32


def test_lm_head_counts_even_when_tied() -> None:
    """Tying shares storage, not compute: the same FLOPs with or without tying, unlike the parameter count."""
    tied, untied = tiny_config(tie=True), tiny_config(tie=False)
    assert flops_per_token(tied, 32) == flops_per_token(untied, 32)
    n_tied = sum(p.numel() for p in LlamaForCausalLM(tied).parameters())
    n_untied = sum(p.numel() for p in LlamaForCausalLM(untied).parameters())
    assert n_untied - n_tied == 64 * 128


@pytest.mark.parametrize("tie,kv_heads", [(True, 2), (False, 4)])
def test_matches_flop_counter_on_forward_and_backward(tie: bool, kv_heads: int) -> None:
    """torch counts every matmul of a real forward+backward; ours must agree to 0.1%.

    The tolerance leaves room for small matmuls outside the 6N + 12LHQT model (a rotary-embedding
    product in some transformers versions); with transformers 5.24 the two agree exactly.
    """
    cfg = tiny_config(tie=tie, kv_heads=kv_heads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    batch, seq_len = 2, 32
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counted = counter.get_total_flops()
    assert counted == pytest.approx(flops_per_token(cfg, seq_len) * batch * seq_len, rel=1e-3)


def test_attention_term_grows_with_seq_len() -> None:
    cfg = tiny_config()
    assert flops_per_token(cfg, 64) - flops_per_token(cfg, 32) == 12 * 2 * 4 * 16 * 32
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(cfg, 0)


def test_measured_peak_is_positive_and_finite() -> None:
    peak = measure_matmul_peak("cpu", torch.float32, n=256, reps=3)
    assert math.isfinite(peak) and peak > 0


def test_mfu_arithmetic() -> None:
    assert mfu(1000.0, 2e9, 4e12) == pytest.approx(0.5)
    assert mfu(0.0, 2e9, 4e12) == 0.0
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1.0, 1.0, 0.0)


def test_a_measured_peak_never_falls_below_the_best_this_machine_measured(tmp_path, monkeypatch) -> None:
    """A peak measured while another process holds a core is too low; the cached best keeps MFU honest."""
    import fluxforge.train.flops as F

    monkeypatch.setenv("FLUXFORGE_PEAK_CACHE", str(tmp_path / "peaks.json"))
    monkeypatch.setattr(F, "measure_matmul_peak", lambda *a, **k: 10e9)
    quiet = F.device_peak("cpu")
    monkeypatch.setattr(F, "measure_matmul_peak", lambda *a, **k: 2e9)  # a busy machine
    busy = F.device_peak("cpu")
    assert quiet.flops == busy.flops == 10e9 and "best of 5 trials" in busy.source and str(tmp_path) in busy.source


def test_mfu_is_never_above_one_with_a_deliberately_low_peak(tmp_path, monkeypatch, request) -> None:
    """The training loop's MFU against a peak 1000x too low: every row <= 100%, and the run says the peak was raised."""
    import numpy as np

    import fluxforge.train.flops as F
    from fluxforge.config import TrainConfig
    from fluxforge.train.loop import measured_peak, train
    from fluxforge.train.sampler import MixtureSampler
    from tiny import tiny_model

    monkeypatch.setenv("FLUXFORGE_PEAK_CACHE", str(tmp_path / "peaks.json"))
    monkeypatch.setattr(F, "measure_matmul_peak", lambda *a, **k: 1e6)
    measured_peak.cache_clear()  # the loop measures once per process: forget an earlier test's real peak
    request.addfinalizer(measured_peak.cache_clear)
    sampler = MixtureSampler({"a": np.arange(5, 60, dtype=np.uint16).repeat(20)}, {"a": 1.0}, seq_len=16, batch_size=4, seed=0)
    hist = train(tiny_model(), sampler, TrainConfig(slices=["x"], steps=6, batch_size=4, seq_len=16, lr=1e-3,
                                                    warmup_steps=1, log_every=2))
    assert all(0 < r["mfu"] <= 1.0 for r in hist) and hist[0]["mfu"] == 1.0
    assert hist[-1]["peak_flops"] > 1e6 and "raised to a rate the run achieved" in hist[-1]["peak_source"]



def test_the_progress_bar_shows_mfu_only_when_there_is_one(monkeypatch, capsys) -> None:
    """A model the loop cannot count FLOPs for (CLIP, MAE; here: FLUXFORGE_MFU=0, the same path) showed `mfu=0.0%`."""
    import numpy as np

    from fluxforge.config import TrainConfig
    from fluxforge.train.loop import train
    from fluxforge.train.sampler import MixtureSampler
    from tiny import tiny_model

    monkeypatch.setenv("FLUXFORGE_PROGRESS", "1")
    for mfu_on in ("1", "0"):
        monkeypatch.setenv("FLUXFORGE_MFU", mfu_on)
        sampler = MixtureSampler({"a": np.arange(5, 60, dtype=np.uint16).repeat(20)}, {"a": 1.0}, seq_len=16,
                                 batch_size=4, seed=0)
        train(tiny_model(), sampler, TrainConfig(slices=["x"], steps=4, batch_size=4, seq_len=16, lr=1e-3,
                                                 warmup_steps=1, log_every=2))
        bar = capsys.readouterr().err
        assert "tok_s=" in bar and ("mfu=" in bar) == (mfu_on == "1"), bar[-500:]
