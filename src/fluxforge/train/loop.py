"""The training loop: AdamW, warmup + schedule, clipping, progress, periodic resumable checkpoints.

One loop serves pretraining, continual updates and distillation; they differ only in
the model they start from, the data mixture and the objective.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fluxforge.config import TrainConfig
from fluxforge.train.sampler import MixtureSampler
from fluxforge.train.schedule import lr_factor

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
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    start, history = 0, []
    ckpt = checkpoint_dir / "state.pt" if checkpoint_dir else None
    fingerprint = run_fingerprint(model, sampler, cfg, desc)
    state = torch.load(ckpt, weights_only=True) if ckpt and ckpt.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: it was written by a run with another configuration", ckpt)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start, history = int(state["step"]), list(state["history"])
        probes[:] = state.get("probes", [])
        log.warning("resuming %s from checkpoint %s at step %d", desc, ckpt, start)

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
               disable=os.environ.get("FLUXFORGE_PROGRESS", "1") == "0", dynamic_ncols=True)
    for step in bar:
        batch = sampler.batch(step)
        loss = objective(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate ({cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        window_loss += loss.item()
        window_n += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            tps = window_n * tokens_per_step / max(now - t_window, 1e-9)
            row = {"step": done, "loss": window_loss / window_n, "lr": sched.get_last_lr()[0],
                   "tokens": done * tokens_per_step, "elapsed": now - t0, "tokens_per_s": tps}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{tps:,.0f}")
            window_loss, window_n, t_window = 0.0, 0, now
        spent = run_probe(done)
        t0 += spent
        t_window += spent
        if ckpt and done % checkpoint_every == 0 and done < cfg.steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                        "step": done, "history": history, "fingerprint": fingerprint, "probes": probes}, tmp)
            os.replace(tmp, ckpt)
    model.eval()
    return history
