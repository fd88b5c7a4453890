"""Training FLOPs per token, a measured matmul peak, and model FLOPs utilisation (MFU).

MFU is PaLM's yardstick (Chowdhery et al. 2022, arXiv 2204.02311, appendix B): the FLOPs the
model *needs* per token times the tokens per second, over the hardware's peak. It ignores
recomputation (activation checkpointing) and every non-matmul op, so it compares loops and
machines fairly: a faster loop for the same model is a higher MFU, whatever tricks it uses.

This module imports only torch and the standard library (no ``fluxforge.config``), so the GPU
benchmark (benchmarks/gpu_mfu.py) can use it on a machine without the rest of the stack.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def matmul_params(config: Any) -> int:
    """Weights that take part in a matmul per token: q/k/v/o and the gated MLP of every layer, plus the LM head.

    Norm weights are elementwise (no matmul) and the input embedding is a table lookup, so neither
    counts. The LM head counts even when it is tied to the embedding: tying shares the *storage*,
    but every token still runs a ``d x vocab`` matmul through it (forward and both backward ones).
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q and o; k and v (fewer heads under GQA)
    mlp = 3 * d * config.intermediate_size  # gate, up, down (SwiGLU)
    return layers * (attention + mlp) + d * config.vocab_size


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token of an HF Llama-style config at ``seq_len``: ``6 N + 12 L H Q T``.

    PaLM appendix B: a matmul weight costs 2 FLOPs per token forward and 4 backward (input and
    weight gradients), hence ``6 N`` with ``N`` = :func:`matmul_params`; attention's two
    weight-free matmuls (``Q K^T`` and ``P V``) over ``T`` positions add ``2 * 2 H Q T`` per layer
    forward, times 3 with backward: ``12 L H Q T`` (``H`` query heads of size ``Q``). As in PaLM the
    attention term counts all ``T`` keys, not the causal half, which is what dense kernels compute
    (FlopCounterMode counts it the same way).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, not {seq_len}")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 6.0 * matmul_params(config) + 12.0 * config.num_hidden_layers * heads * head_dim * seq_len


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                        reps: int = 5, per_rep: int | None = None) -> float:
    """FLOP/s of an ``n x n`` matmul on ``device`` now: the best of ``reps`` timed batches of ``per_rep`` matmuls.

    A *measured* peak says what this machine gives at this moment (a shared CPU, a clock-capped
    GPU), so MFU against it separates the loop's losses from the hardware's. The best batch is
    kept because interference only ever slows a run down. Sizes: 1024 on CPU (a 2-core box does
    ~2 GFLOP in tens of ms, so the whole call stays well under a second), 8192 on a GPU (big
    enough to saturate the tensor cores; CUDA is synchronised around each timed batch).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    per_rep = per_rep or (20 if cuda else 2)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(2):  # warm-up: thread pools, cuBLAS handles and heuristics, clocks
        torch.mm(a, b)
    sync()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(per_rep):
            torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 * per_rep / best


# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, FLOP/s, by a substring of the device name.
DATASHEET_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "L4": 121e12}
PEAK_TRIALS = 5


@dataclass
class Peak:
    """The FLOP/s that MFU is measured against, and where that number came from (the report prints both)."""

    flops: float
    source: str

    def utilisation(self, achieved: float) -> float:
        """``achieved / flops``, never above 1.

        A rate above the peak proves the peak was measured low (on a busy machine a matmul benchmark loses
        its cores too), so the peak becomes that achieved rate instead of MFU going past 100%.
        """
        if achieved > self.flops:
            self.flops = achieved
            if "raised" not in self.source:
                self.source += "; raised to a rate the run achieved"
        return achieved / self.flops if self.flops > 0 else 0.0


def peak_cache() -> Path:
    return Path(os.environ.get("FLUXFORGE_PEAK_CACHE", Path.home() / ".cache" / "fluxforge" / "matmul_peaks.json"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, trials: int = PEAK_TRIALS) -> Peak:
    """The peak to measure MFU against: a datasheet value for a known GPU in bf16/fp16, else a measured one.

    Measured: the best of ``trials`` short matmul trials now, and never below the best this machine (CPU or GPU
    model, torch version, threads, dtype) ever measured, kept in :func:`peak_cache`: a peak measured while
    another process held a core would otherwise make every MFU of the run too high.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if dtype in (torch.bfloat16, torch.float16):
            for key, value in DATASHEET_BF16.items():
                if key in name:
                    return Peak(value, f"datasheet: {name}, dense {str(dtype).removeprefix('torch.')}")
    else:
        name = _cpu_name()
    key = f"{device.type}|{name}|torch {torch.__version__}|threads {torch.get_num_threads()}|{dtype}"
    now = measure_matmul_peak(device, dtype, reps=trials)
    cache = peak_cache()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    best = max(now, float(known.get(key, 0.0)))
    if best > known.get(key, 0.0):
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps({**known, key: best}, indent=1))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: the peak of this run is still the best of its trials
    return Peak(best, f"measured {name} {str(dtype).removeprefix('torch.')} matmul, best of {trials} trials now "
                      f"and of earlier runs on this machine ({cache})")


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over ``peak_flops`` (a fraction, 1.0 = peak)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, not {peak_flops}")
    return tokens_per_s * flops_per_token / peak_flops
