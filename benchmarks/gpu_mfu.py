"""Training throughput and MFU of a ~125M-parameter Llama on one GPU: the GPU half of the training-engine benchmark.

Usage (repo root; needs only torch, transformers and src/fluxforge/train/flops.py):
    PYTHONPATH=src python benchmarks/gpu_mfu.py                    # H100/H200: ~1-2 min, compile included
    PYTHONPATH=src python benchmarks/gpu_mfu.py --no-compile       # eager, for comparison
    PYTHONPATH=src python benchmarks/gpu_mfu.py --device cpu --tiny  # seconds on a laptop: checks the script runs

What it does, and why (the recipe that gets a small model to a high MFU, cf. nanoGPT / PaLM appendix B):
* a Llama with hidden 768, 12 layers, 12 heads, MLP 2048, vocabulary 32000, tied embeddings (~110M weights,
  ~135M with an untied head), sequences of 2048 random tokens;
* bf16 autocast with fp32 master weights, SDPA attention (flash kernels on H100/H200), fused AdamW,
  gradient clipping, ``torch.compile`` of forward + loss together (so the fp32 upcast of the logits and the
  cross-entropy fuse instead of writing a B x T x V fp32 tensor), turn it off with ``--no-compile``;
* a global batch of ``--batch`` sequences in micro-batches of ``--micro-batch`` (gradient accumulation);
* no host sync inside a step: the loss is read (``.item()``) only every ``--log-every`` steps.

Tokens/s is timed over the steps after ``--warmup`` (which pay for compilation), between CUDA syncs.
MFU = tokens/s x FLOPs/token (``flops.flops_per_token``: 6N + 12LHQT, PaLM appendix B) over (a) the card's
nominal dense bf16 peak from NVIDIA's datasheet and (b) a bf16 ``torch.mm`` peak measured in the same run.
Writes ``$OUT/gpu_mfu.json`` (``OUT`` defaults to the current directory) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from fluxforge.train.flops import flops_per_token, measure_matmul_peak, mfu

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's data sheets; the first substring of the
# device name that matches wins, so the specific variants come before the generic name.
NOMINAL_BF16_PEAK = (
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.4e12),  # SXM5
    ("H200", 989.4e12),  # same compute as H100 SXM, more and faster memory
    ("A100", 312.0e12),
)


def nominal_peak(device_name: str) -> float | None:
    for key, peak in NOMINAL_BF16_PEAK:
        if key in device_name:
            return peak
    return None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a toy model and few steps, to check the script (CPU-sized)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile forward + loss (default: on for cuda, off for cpu, where it takes minutes)")
    ap.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward (accumulation)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps, warm-up included")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, allocator, clocks)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    if args.tiny:
        args.hidden, args.layers, args.heads, args.intermediate, args.vocab = 64, 2, 4, 128, 512
        args.seq_len, args.batch, args.micro_batch, args.steps, args.warmup, args.log_every = 128, 4, 2, 8, 3, 2
    if args.compile is None:
        args.compile = args.device == "cuda"
    if args.batch % args.micro_batch:
        ap.error(f"--batch {args.batch} must be a multiple of --micro-batch {args.micro_batch}")
    if args.steps <= args.warmup:
        ap.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device (use --device cpu --tiny to check the script)")
    return args


def build(args: argparse.Namespace, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=args.seq_len, tie_word_embeddings=True, use_cache=False)
    config._attn_implementation = "sdpa"  # torch SDPA: flash attention for bf16 causal inputs on Hopper
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device)


class LMLoss(torch.nn.Module):
    """Forward and next-token loss as one module, so ``torch.compile`` fuses the logits' upcast into the loss."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
    model = build(args, device)
    model.train()
    step_fn = LMLoss(model)
    if args.compile:
        step_fn = torch.compile(step_fn, dynamic=False)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    accum = args.batch // args.micro_batch
    gen = torch.Generator(device=device).manual_seed(0)
    pool = [torch.randint(0, args.vocab, (args.micro_batch, args.seq_len + 1), device=device, generator=gen)
            for _ in range(4)]  # random tokens, made once: data loading is not what this measures

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def train_step(step: int) -> torch.Tensor:
        total = torch.zeros((), device=device)
        for k in range(accum):
            window = pool[(step * accum + k) % len(pool)]
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = step_fn(window[:, :-1], window[:, 1:])
            (loss / accum).backward()
            total += loss.detach() / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    log: list[dict] = []
    t_start = time.perf_counter()
    compile_s = None
    for step in range(args.steps):
        if step == args.warmup:
            sync()
            t0 = time.perf_counter()
            compile_s = t0 - t_start
        loss = train_step(step)
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            log.append({"step": step + 1, "loss": loss.item(), "elapsed_s": time.perf_counter() - t_start})
            print(f"step {step + 1}/{args.steps} loss {log[-1]['loss']:.4f} ({log[-1]['elapsed_s']:.1f} s)", flush=True)
    sync()
    seconds = time.perf_counter() - t0
    timed_steps = args.steps - args.warmup
    tokens_per_s = timed_steps * args.batch * args.seq_len / seconds
    fpt = flops_per_token(model.config, args.seq_len)
    measured = measure_matmul_peak(device, torch.bfloat16)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    nominal = nominal_peak(name) if cuda else None
    report = {
        "device": name, "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "config": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "intermediate": args.intermediate,
                   "vocab": args.vocab, "seq_len": args.seq_len, "tied_embeddings": True, "attention": "sdpa",
                   "parameters": sum(p.numel() for p in model.parameters())},
        "batch": args.batch, "micro_batch": args.micro_batch, "grad_accum": accum, "compile": args.compile,
        "precision": "bf16 autocast, fp32 master weights", "optimizer": "AdamW fused", "steps": args.steps,
        "warmup_steps_untimed": args.warmup, "warmup_s": compile_s, "timed_s": seconds,
        "step_s": seconds / timed_steps, "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
        "model_tflops_per_s": tokens_per_s * fpt / 1e12,
        "nominal_bf16_peak_flops": nominal, "measured_bf16_matmul_peak_flops": measured,
        "mfu_vs_nominal": mfu(tokens_per_s, fpt, nominal) if nominal else None,
        "mfu_vs_measured": mfu(tokens_per_s, fpt, measured),
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "log": log,
    }
    out = Path(os.environ.get("OUT", ".")) / "gpu_mfu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
