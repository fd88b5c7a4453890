"""The training loop: AdamW, warmup + schedule, clipping, progress, periodic resumable checkpoints.

The optimizer step and the checkpoint format belong to an engine (``train/engine.py``): plain torch,
or DeepSpeed ZeRO 1/2/3 across ranks; the loop, the batches and the history are the same for both.

One loop serves pretraining, continual updates and distillation; they differ only in
the model they start from, the data mixture and the objective.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fluxforge.config import TrainConfig
from fluxforge.train.engine import make_engine
from fluxforge.train.sampler import MixtureSampler

log = logging.getLogger(__name__)
Objective = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
Probe = Callable[[torch.nn.Module], dict[str, float]]


def causal_lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))


def run_fingerprint(model: torch.nn.Module, sampler: MixtureSampler, cfg: TrainConfig, desc: str) -> str:
    """Identity of a training run: config, data mixture and starting weights.

    A checkpoint is resumed only by a run with the same fingerprint, so a crash followed by
    a change upstream (new tokens, another parent model, another config) starts afresh
    instead of continuing stale weights.
    """
    h = hashlib.sha256(f"{desc}|{cfg.model_dump_json()}|{sampler.signature()}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        if tensor.numel():
            h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def set_threads() -> None:
    """Use every core we were given (CI has 2); torch defaults can oversubscribe."""
    n = int(os.environ.get("FLUXFORGE_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)


def train(
    model: torch.nn.Module,
    sampler: MixtureSampler,
    cfg: TrainConfig,
    objective: Objective = causal_lm_loss,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 100,
    desc: str = "train",
    probe: Probe | None = None,
    probe_every: int = 0,
    probes: list[dict] | None = None,
) -> list[dict]:
    """Train in place and return the logged history (step, loss, lr, tokens, elapsed).

    If ``checkpoint_dir`` holds a checkpoint from an interrupted run, training resumes
    from it: weights, optimizer, scheduler and step are restored, and the sampler is a
    pure function of the step, so the continued run sees the same batches.

    ``probe(model)`` runs before the first step and every ``probe_every`` steps, in eval
    mode and without gradients; its results are appended to ``probes`` (restored on resume).
    Probes touch no random state, so a probed run trains exactly like an unprobed one.
    """
    probes = probes if probes is not None else []
    set_threads()
    fingerprint = run_fingerprint(model, sampler, cfg, desc)  # before an engine shards or casts the weights
    eng = make_engine(model, cfg)  # plain torch, or DeepSpeed ZeRO (cfg.deepspeed / FLUXFORGE_DEEPSPEED_CONFIG)
    fingerprint += eng.signature
    start, history = 0, []
    state = eng.load(checkpoint_dir, fingerprint) if checkpoint_dir else None
    if state is not None:
        start, history = int(state["step"]), list(state["history"])
        probes[:] = state.get("probes", [])
        log.warning("resuming %s from checkpoint in %s at step %d", desc, checkpoint_dir, start)

    def run_probe(step: int) -> float:
        """Probe if due; return the seconds it took, which are kept out of the training time."""
        if probe is None or not probe_every or (step % probe_every and step != cfg.steps):
            return 0.0
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            probes.append({"step": step, **probe(model)})
        model.train()
        return time.perf_counter() - t

    if start == 0:
        run_probe(0)
    model.train()
    tokens_per_step = sampler.batch_size * sampler.seq_len
    t0 = time.perf_counter() - (history[-1]["elapsed"] if history else 0.0)
    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, mininterval=2.0,
               disable=os.environ.get("FLUXFORGE_PROGRESS", "1") == "0" or not eng.is_main, dynamic_ncols=True)
    for step in bar:
        batch = eng.shard(sampler.batch(step))  # a rank's rows of the global batch (all of it on one process)
        loss = objective(eng.model, batch)
        value = eng.loss_value(loss)  # the global batch's loss, the same on every rank
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: loss became {value} at step {step}; lower the learning rate ({cfg.lr})")
        eng.step(loss)
        window_loss += value
        window_n += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            tps = window_n * tokens_per_step / max(now - t_window, 1e-9)
            row = {"step": done, "loss": window_loss / window_n, "lr": eng.lr(),
                   "tokens": done * tokens_per_step, "elapsed": now - t0, "tokens_per_s": tps}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{tps:,.0f}")
            window_loss, window_n, t_window = 0.0, 0, now
        spent = run_probe(done)
        t0 += spent
        t_window += spent
        if checkpoint_dir and done % checkpoint_every == 0 and done < cfg.steps:
            eng.save(checkpoint_dir, {"step": done, "history": history, "fingerprint": fingerprint, "probes": probes})
    eng.finish()  # DeepSpeed: full fp32 weights back into `model`, a plain module again
    model.eval()
    return history
