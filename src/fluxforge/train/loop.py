"""The training loop: micro-batches with gradient accumulation, clipping, AdamW, the LR schedule,
autocast, progress (loss, tokens/s, MFU), live metrics, and periodic resumable checkpoints.

The optimizer step, the precision and the checkpoint format belong to an engine (``train/engine.py``):
plain torch, or DeepSpeed ZeRO 1/2/3 across ranks; the loop, the batches and the history are the same for both.

One loop serves pretraining, continual updates and distillation; they differ only in
the model they start from, the data mixture and the objective.

Resume and initialise-from are different things. *Resume* continues the same run after a crash from
``checkpoint_dir`` (weights, optimizer, scheduler, grad scaler, RNG and the sampler position, which is
the step): the result is bitwise what an uninterrupted run gives on CPU. *Initialise-from* starts a new
run (a continual task) from another run's final state, at one of three depths (``init_state``, see
:func:`fluxforge.train.engine.PlainEngine.init_from`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fluxforge.config import TrainConfig
from fluxforge.runtime import deterministic, set_threads
from fluxforge.train.engine import OptimizerFactory, make_engine
from fluxforge.train.flops import Peak, device_peak, flops_per_token
from fluxforge.train.packing import document_attention
from fluxforge.train.sampler import Batch, Sampler, as_batch

log = logging.getLogger(__name__)
Objective = Callable[[torch.nn.Module, Batch], torch.Tensor]
Probe = Callable[[torch.nn.Module], dict[str, float]]
StepHook = Callable[[int, torch.nn.Module], None]
LogHook = Callable[[dict], None]


def token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32, over the positions ``mask`` keeps (all when None)."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    if mask is None:
        return F.cross_entropy(flat, targets.reshape(-1))
    from fluxforge.train.meco import masked_causal_lm_loss

    return masked_causal_lm_loss(logits, targets, mask)


def lm_objective(doc_mask: bool = False, eos_id: int | None = None) -> Objective:
    """Causal LM loss; with ``doc_mask`` attention stops at EOS-delimited document boundaries (train/packing.py)."""
    if doc_mask and eos_id is None:
        raise ValueError("doc_mask needs the tokenizer's eos_id")

    def loss(model: torch.nn.Module, batch: Batch | torch.Tensor) -> torch.Tensor:
        batch = as_batch(batch)  # a bare token tensor is a batch without a loss mask
        inputs = batch.tokens[:, :-1]
        kwargs = {}
        if doc_mask:
            kwargs["attention_mask"], kwargs["position_ids"] = document_attention(inputs, eos_id)
        logits = model(input_ids=inputs, **kwargs).logits
        mask = None if batch.loss_mask is None else batch.loss_mask[:, 1:]
        return token_loss(logits, batch.tokens[:, 1:], mask)

    return loss


causal_lm_loss: Objective = lm_objective()


def run_fingerprint(model: torch.nn.Module, sampler: Sampler, cfg: TrainConfig, desc: str) -> str:
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


def train(
    model: torch.nn.Module,
    sampler: Sampler,
    cfg: TrainConfig,
    objective: Objective = causal_lm_loss,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int | None = None,
    desc: str = "train",
    probe: Probe | None = None,
    probe_every: int = 0,
    probes: list[dict] | None = None,
    init_state: dict | None = None,
    on_step: StepHook | None = None,
    on_log: LogHook | None = None,
    export: dict | None = None,
    anneal: bool = True,
    optimizer: OptimizerFactory | None = None,
) -> list[dict]:
    """Train in place and return the logged history (step, loss, lr, tokens, elapsed, tokens/s, MFU, resumed_from).

    If ``checkpoint_dir`` holds a checkpoint of this same run (same fingerprint), training resumes
    from it: weights, optimizer, scheduler, grad scaler, RNG and step are restored, and the sampler
    is a pure function of the step, so the continued run sees the same batches. Checkpoints are
    written every ``checkpoint_every`` steps (default ``cfg.checkpoint_every``), atomically, keeping
    the last ``cfg.keep_checkpoints``. Each history row's ``resumed_from`` is the step at which the process
    that logged it started: 0 for a run trained from the start, the checkpoint's step for the rows a resumed
    process adds (rows restored from the checkpoint keep theirs). Training is deterministic, so equal weights
    cannot tell a resume from a silent restart; this can.

    ``init_state`` (from :func:`fluxforge.train.engine.load_trainer_state`) initialises a *new* run from
    another run's optimizer state, as ``cfg.init_mode`` says; a resumed checkpoint takes precedence.

    ``probe(model)`` runs before the first step and every ``probe_every`` steps, in eval
    mode and without gradients; its results are appended to ``probes`` (restored on resume).
    Probes touch no random state, so a probed run trains exactly like an unprobed one.
    ``on_step(step, model)`` runs after each optimizer step (checkpoint averaging's snapshots);
    ``on_log(row)`` receives each history row as it is logged (live MLflow metrics, DVC plots).
    ``anneal=False`` keeps a wsd/infinite schedule on its constant level (a continual trunk; the annealed,
    deployable copy resumes the trunk's checkpoint at :func:`fluxforge.train.schedule.anneal_start` with
    ``anneal=True``: both schedules agree on every step before it).
    ``optimizer`` builds the optimizer (default: AdamW over the trainable parameters, engine.adamw); an update
    method brings its own (fluxforge.continual.methods).
    ``export``, when given, is filled with the final optimizer/scaler/RNG state (what a model directory's
    ``training_state/`` keeps so that a later task can initialise from it).
    """
    probes = probes if probes is not None else []
    every = checkpoint_every or cfg.checkpoint_every
    set_threads()
    deterministic()
    fingerprint = run_fingerprint(model, sampler, cfg, desc)  # before an engine shards or casts the weights
    continuing = init_state is not None and cfg.init_mode == "full"  # the schedule picks up without re-warming
    eng = make_engine(model, cfg, continuing, anneal, optimizer)  # plain torch, or DeepSpeed ZeRO (cfg.deepspeed / FLUXFORGE_DEEPSPEED_CONFIG)
    fingerprint += eng.signature
    start, history = 0, []
    state = eng.load(checkpoint_dir, fingerprint) if checkpoint_dir else None
    if state is not None:
        start, history = int(state["step"]), list(state["history"])
        probes[:] = state.get("probes", [])
        log.warning("resuming %s from checkpoint in %s at step %d", desc, checkpoint_dir, start)
    elif init_state is not None:
        eng.init_from(init_state, cfg.init_mode)

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
    flops_token, peak = _flops_and_peak(model, sampler.seq_len, eng) if eng.is_main else (0.0, None)
    t0 = time.perf_counter() - (history[-1]["elapsed"] if history else 0.0)
    window: list[torch.Tensor] = []  # each step's loss, still on the device: read back (one sync) only when needed
    t_window = time.perf_counter()
    step_loss = eng.wrap(objective)  # torch.compile'd with the model when cfg.compile
    bar = tqdm(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, mininterval=2.0,
               disable=os.environ.get("FLUXFORGE_PROGRESS", "1") == "0" or not eng.is_main, dynamic_ncols=True)

    def read_window(last: int) -> list[float]:
        """The window's losses as floats; a non-finite one stops the run before anything is saved."""
        values = torch.stack(window).tolist()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise FloatingPointError(f"{desc}: loss became {v} at step {last - len(values) + i}; "
                                         f"lower the learning rate ({cfg.lr})")
        return values

    for step in bar:
        micro = eng.micro_batches(as_batch(sampler.batch(step)))  # this rank's rows, split for accumulation
        value = None
        for mb in micro:
            with eng.autocast():
                loss = step_loss(eng.model, mb)
            part = eng.loss_value(loss)  # the global batch's loss, the same on every rank
            value = part if value is None else value + part
            eng.backward(loss, len(micro))
        eng.step()
        window.append(value / len(micro) if len(micro) > 1 else value)
        done = step + 1
        if on_step is not None:
            on_step(done, model)
        logging_due = done % cfg.log_every == 0 or done == cfg.steps
        saving_due = checkpoint_dir is not None and done % every == 0 and done < cfg.steps
        if logging_due or saving_due or device_type(eng) == "cpu":  # on CPU reading back costs nothing: fail fast
            values = read_window(done)
        if logging_due:
            now = time.perf_counter()
            tps = len(values) * tokens_per_step / max(now - t_window, 1e-9)
            row = {"step": done, "loss": sum(values) / len(values), "lr": eng.lr(),
                   "tokens": done * tokens_per_step, "elapsed": now - t0, "tokens_per_s": tps,
                   "mfu": peak.utilisation(tps * flops_token) if peak else 0.0,
                   "resumed_from": start, **({"peak_flops": peak.flops, "peak_source": peak.source} if peak else {})}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{tps:,.0f}",
                            **({"mfu": f"{row['mfu']:.1%}"} if peak else {}))  # no FLOP count (CLIP, MAE): no MFU shown
            if on_log is not None and eng.is_main:
                on_log(row)
            window, t_window = [], now
        spent = run_probe(done)
        t0 += spent
        t_window += spent
        if saving_due:
            eng.save(checkpoint_dir, {"step": done, "history": history, "fingerprint": fingerprint, "probes": probes},
                     keep=cfg.keep_checkpoints)
    eng.finish()  # DeepSpeed: full fp32 weights back into `model`, a plain module again
    model.eval()
    if export is not None:
        export.update(eng.export_state())
    return history


def device_type(eng) -> str:  # noqa: ANN001
    return getattr(getattr(eng, "device", None), "type", "cpu")


@cache
def measured_peak(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """The device peak, measured once per process (a stream trains a dozen times); cache_clear() forgets it."""
    peak = device_peak(device, dtype)
    return peak.flops, peak.source  # a fresh Peak per run: Peak.utilisation may raise its own copy


def _flops_and_peak(model: torch.nn.Module, seq_len: int, eng) -> tuple[float, Peak | None]:  # noqa: ANN001
    """Training FLOPs per token of this model and the peak to measure MFU against (:func:`device_peak`).

    A measured peak keeps MFU honest about *this* machine (a shared 2-core VM has no published peak);
    it costs about half a second, so it is measured once per process and device (a stream trains a dozen times).
    """
    config = getattr(model, "config", None)
    if config is None or os.environ.get("FLUXFORGE_MFU", "1") == "0":
        return 0.0, None
    try:
        return flops_per_token(config, seq_len), Peak(*measured_peak(str(eng.device), eng.compute_dtype))
    except (AttributeError, TypeError) as err:  # a model without Llama-style config fields: no MFU
        log.info("no MFU for %s: %s", type(model).__name__, err)
        return 0.0, None
