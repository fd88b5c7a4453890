"""MFU of FluxForge's own training loop (``fluxforge.train.loop.train``) on one GPU, ~125M-parameter Llama, bf16.

``benchmarks/gpu_mfu.py`` measures what the hardware gives a minimal, fully fused loop; this script runs the
platform's real loop (the PlainEngine: AMP bf16 autocast, fp32 master weights, AdamW, clipping, the LR
schedule, progress, a loss read back every micro-batch) with ``compile: true``, so the gap between the two is
the cost of our engine on a GPU. MFU per logged window comes from the loop itself (against a bf16 matmul
peak it measures at start); the card's nominal peak is applied here too.

Usage (repo root; needs torch, transformers, numpy, tqdm and pydantic):
    PYTHONPATH=src python benchmarks/gpu_engine_mfu.py [--no-compile] [--steps 40]
    PYTHONPATH=src python benchmarks/gpu_engine_mfu.py --device cpu --tiny      # seconds: checks it runs
Writes ``$OUT/gpu_engine_mfu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from fluxforge.config import ModelConfig, TrainConfig
from fluxforge.train.flops import flops_per_token
from fluxforge.train.loop import train
from fluxforge.train.model import build_model, count_params
from fluxforge.train.sampler import MixtureSampler

NOMINAL_BF16_PEAK = (("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12), ("H100", 989.4e12), ("H200", 989.4e12),
                     ("A100", 312.0e12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a tiny model and batch (to check the script on CPU)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32, help="global batch (sequences)")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    args = ap.parse_args()
    if args.tiny:
        mcfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=128)
        vocab, args.seq_len, args.batch, args.grad_accum, args.steps = 512, 64, 4, 2, 8
    else:
        mcfg = ModelConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048,
                           max_position_embeddings=args.seq_len)
        vocab = 32000
    model = build_model(mcfg, vocab, 0, 1)
    stream = np.random.default_rng(0).integers(1, vocab, 4_000_000 if not args.tiny else 20_000).astype(np.int32)
    sampler = MixtureSampler({"random": stream}, {"random": 1.0}, args.seq_len, args.batch, seed=0)
    log_every = max(args.steps // 4, 1)
    cfg = TrainConfig(slices=["random"], steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, lr=6e-4,
                      warmup_steps=2, grad_accum=args.grad_accum, device=args.device,
                      precision="bf16" if args.device == "cuda" else "fp32", compile=not args.no_compile,
                      log_every=log_every)
    hist = train(model, sampler, cfg, desc="engine-mfu")
    last = hist[-1]  # the last window: compilation and warm-up are in the earlier ones
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    nominal = next((p for k, p in NOMINAL_BF16_PEAK if k in name), None)
    fpt = flops_per_token(model.config, args.seq_len)
    out = {"card": name, "torch": torch.__version__, "parameters": count_params(model), "seq_len": args.seq_len,
           "batch": args.batch, "grad_accum": args.grad_accum, "compile": not args.no_compile, "steps": args.steps,
           "flops_per_token": fpt, "tokens_per_s": last["tokens_per_s"], "mfu_vs_measured_matmul_peak": last["mfu"],
           "mfu_vs_nominal_peak": last["tokens_per_s"] * fpt / nominal if nominal else None,
           "nominal_peak": nominal, "history": hist}
    path = Path(os.environ.get("OUT", ".")) / "gpu_engine_mfu.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
