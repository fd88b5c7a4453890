"""Training engines: how one step is taken, and how its state is checkpointed.

``loop.train`` is the only training loop; it asks :func:`make_engine` for the engine that
``TrainConfig.deepspeed`` (or the launcher's FLUXFORGE_DEEPSPEED_CONFIG) selects:

* :class:`PlainEngine` - torch AdamW + LambdaLR + ``clip_grad_norm_`` in one process; the reference
  path, bitwise resumable (tests/test_resume_sigkill.py).
* :class:`DeepSpeedEngine` - the same AdamW (betas, eps, weight-decay groups) and the same LR function,
  handed to ``deepspeed.initialize`` as a client optimizer and scheduler, so ZeRO 1/2/3 shards optimizer
  state, gradients and weights but trains the same model. Each rank takes its slice of the sampler's
  batch, so N ranks x micro-batch b is the one-process batch N*b. When training ends the fp32 master
  weights are gathered back into the caller's module, which is a plain module again: ``save_pretrained``
  writes a normal HF directory whatever the stage was.

Both expose the same small surface (``model``, ``shard``, ``loss_value``, ``step``, ``lr``, ``save``,
``load``, ``finish``), so the loop does not know which one it drives.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Protocol

import torch

from fluxforge.config import TrainConfig
from fluxforge.errors import FluxForgeError
from fluxforge.train.schedule import lr_factor

log = logging.getLogger(__name__)
# The launcher (infra/deepspeed/launch.sh) names the ZeRO JSON here; it overrides TrainConfig.deepspeed.config.
CONFIG_ENV = "FLUXFORGE_DEEPSPEED_CONFIG"
INFRA_CONFIGS = Path(__file__).resolve().parents[3] / "infra" / "deepspeed"
# AdamW hyper-parameters shared by both engines (Llama-style pretraining values).
BETAS, EPS = (0.9, 0.95), 1e-8


class EngineError(FluxForgeError, ValueError):
    """A DeepSpeed setup that cannot run as asked; the message names the file, key or variable."""


class Engine(Protocol):
    model: torch.nn.Module  # what the objective calls: the module itself, or the DeepSpeed engine wrapping it
    signature: str  # joins the run fingerprint: a checkpoint is resumed only by the same engine setup
    is_main: bool

    def shard(self, batch: torch.Tensor) -> torch.Tensor: ...
    def loss_value(self, loss: torch.Tensor) -> float: ...
    def step(self, loss: torch.Tensor) -> None: ...
    def lr(self) -> float: ...
    def save(self, ckpt_dir: Path, meta: dict) -> None: ...
    def load(self, ckpt_dir: Path, fingerprint: str) -> dict | None: ...
    def finish(self) -> None: ...


def adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and other 1-d parameters (the usual GPT/Llama recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=BETAS, eps=EPS,
    )


def make_engine(model: torch.nn.Module, cfg: TrainConfig) -> Engine:
    """The DeepSpeed engine when params or the launcher ask for one, else the plain one."""
    if cfg.deepspeed.stage or os.environ.get(CONFIG_ENV):
        return DeepSpeedEngine(model, cfg)
    return PlainEngine(model, cfg)


# ----------------------------------------------------------------------------- plain torch
class PlainEngine:
    """One process, torch AdamW + LambdaLR; checkpoints are one ``state.pt`` (weights, optimizer, scheduler, meta)."""

    signature = ""
    is_main = True

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig) -> None:
        self.model, self.grad_clip = model, cfg.grad_clip
        self.opt = adamw(model, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg))

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def loss_value(self, loss: torch.Tensor) -> float:
        return loss.item()

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, ckpt_dir: Path, meta: dict) -> None:
        ckpt = ckpt_dir / "state.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optim": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    **meta}, tmp)
        os.replace(tmp, ckpt)

    def load(self, ckpt_dir: Path, fingerprint: str) -> dict | None:
        ckpt = ckpt_dir / "state.pt"
        state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
        if state is not None and state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it was written by a run with another configuration", ckpt)
            return None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.sched.load_state_dict(state["sched"])
        return state

    def finish(self) -> None:
        pass


# ----------------------------------------------------------------------------- DeepSpeed
def config_path(cfg: TrainConfig) -> Path:
    """The ZeRO JSON to use: FLUXFORGE_DEEPSPEED_CONFIG, else ``deepspeed.config``, else infra's zero{stage}.json."""
    named = os.environ.get(CONFIG_ENV) or cfg.deepspeed.config
    path = Path(named) if named else INFRA_CONFIGS / f"zero{cfg.deepspeed.stage}.json"
    if not path.is_file():
        source = f"${CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else "deepspeed.config" if named else "deepspeed.stage"
        raise EngineError(f"DeepSpeed config {path} (from {source}) does not exist")
    return path


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The ZeRO JSON, checked against params, with batch and clipping taken from params.

    Params own the batch size, the clipping and the optimizer/schedule, so one params.yaml drives
    both engines; the JSON owns only how DeepSpeed shards and casts. Fields that would silently
    fight params (an ``optimizer``/``scheduler`` block, ``"auto"`` values only the HF Trainer
    resolves, another ZeRO stage than ``deepspeed.stage``) are errors.
    """
    path = config_path(cfg)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EngineError(f"DeepSpeed config {path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise EngineError(f"DeepSpeed config {path} must be a JSON object, not {type(raw).__name__}")
    for key in ("optimizer", "scheduler"):
        if key in raw:
            raise EngineError(f"DeepSpeed config {path} has an '{key}' block; remove it: the training loop brings its "
                              "own AdamW and LR schedule from params (lr, weight_decay, schedule, warmup_steps)")
    if '"auto"' in json.dumps(raw):
        raise EngineError(f"DeepSpeed config {path} has \"auto\" values; only the HF Trainer resolves them, give numbers")
    stage = raw.get("zero_optimization", {}).get("stage")
    if stage not in (1, 2, 3):
        raise EngineError(f"DeepSpeed config {path}: zero_optimization.stage must be 1, 2 or 3, not {stage!r}")
    if cfg.deepspeed.stage and stage != cfg.deepspeed.stage:
        raise EngineError(f"DeepSpeed config {path} has zero_optimization.stage {stage} but params ask for "
                          f"deepspeed.stage {cfg.deepspeed.stage}")
    if cfg.batch_size % world_size:
        raise EngineError(f"batch_size {cfg.batch_size} does not split over {world_size} ranks; "
                          f"use a multiple of {world_size}")
    ours = {"train_batch_size": cfg.batch_size, "train_micro_batch_size_per_gpu": cfg.batch_size // world_size,
            "gradient_accumulation_steps": 1, "gradient_clipping": cfg.grad_clip}
    changed = {k: (raw[k], v) for k, v in ours.items() if k in raw and raw[k] != v}
    if changed:
        log.info("DeepSpeed config %s: params override %s", path, changed)
    return {**raw, **ours}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Join the launcher's process group, or make a world of one when started without a launcher.

    DS_ACCELERATOR must be chosen before DeepSpeed is imported; set-but-empty is a hard ValueError
    inside DeepSpeed 0.19.8, so it is reported here with the fix.
    """
    accel = os.environ.get("DS_ACCELERATOR")
    if accel == "":
        raise EngineError("DS_ACCELERATOR is set but empty; unset it or set it to cpu or cuda")
    if accel is None and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"  # explicit and quiet (DeepSpeed would guess CPU with a warning)
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # no torchrun/deepspeed launcher: a single rank
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(verbose=False)  # gloo on CPU, nccl on CUDA: the accelerator's own backend


class DeepSpeedEngine:
    """ZeRO 1/2/3 around the caller's module; the same optimizer, schedule and clipping as :class:`PlainEngine`."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig) -> None:
        init_distributed()
        import deepspeed
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.config = deepspeed_config(cfg, self.world)
        self.micro = self.config["train_micro_batch_size_per_gpu"]
        self.signature = f"|deepspeed|world={self.world}|{json.dumps(self.config, sort_keys=True)}"
        # what finish() puts back: DeepSpeed moves and (bf16/fp16) casts the module in place
        self.module = model
        self.device0 = next(model.parameters()).device
        self.dtypes = {n: p.dtype for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        opt = adamw(model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
        self.engine, _, _, self.sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                             config=self.config)
        self.model = self.engine
        log.info("DeepSpeed ZeRO-%d, rank %d of %d, micro-batch %d", self.config["zero_optimization"]["stage"],
                 self.rank, self.world, self.micro)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the global batch (rank r: rows r*b .. r*b+b-1)."""
        return batch[self.rank * self.micro : (self.rank + 1) * self.micro].to(self.engine.device)

    def loss_value(self, loss: torch.Tensor) -> float:
        """The global batch's mean loss (equal shards, so the mean of the ranks' means), the same on every rank."""
        import torch.distributed as dist

        value = loss.detach().float().clone()
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return value.item()

    def step(self, loss: torch.Tensor) -> None:
        # backward averages gradients over ranks; step clips (gradient_clipping), steps AdamW and the schedule, zeroes grads
        self.engine.backward(loss)
        self.engine.step()

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, ckpt_dir: Path, meta: dict) -> None:
        """Every rank writes its shards under a new tag; then rank 0 points ``state.json`` at it, atomically.

        ``state.json`` moves only after all shards are on disk, so a crash mid-save resumes from the
        previous complete tag; older tags are then deleted.
        """
        import torch.distributed as dist

        root = ckpt_dir / "deepspeed"
        tag = f"step{meta['step']}"
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)
        dist.barrier()
        if self.is_main:
            tmp = root / "state.json.tmp"
            tmp.write_text(json.dumps({**meta, "tag": tag}))
            os.replace(tmp, root / "state.json")
            for old in root.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load(self, ckpt_dir: Path, fingerprint: str) -> dict | None:
        state_file = ckpt_dir / "deepspeed" / "state.json"
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it was written by a run with another configuration", state_file)
            return None
        path, _ = self.engine.load_checkpoint(str(state_file.parent), tag=state["tag"])
        if path is None:
            raise EngineError(f"{state_file} names tag {state['tag']}, which DeepSpeed could not load")
        return state

    def finish(self) -> None:
        """Gather the fp32 master weights into fresh parameters of the caller's module and drop the engine.

        ``safe_get_full_fp32_param`` is a collective (every rank calls it for every parameter, in the
        same order) and works for ZeRO 1, 2 and 3; afterwards the module holds full weights in its
        original dtype and device, with no DeepSpeed hooks or attributes, so ``save_pretrained`` writes
        the consolidated HF model and the module can be trained again by either engine.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        full = {}
        for name, p in self.module.named_parameters():
            value = safe_get_full_fp32_param(p)
            if value is None:
                raise EngineError(f"DeepSpeed holds no fp32 master copy of parameter {name}")
            full[name] = value.detach().reshape(getattr(p, "ds_shape", p.shape))
        self.engine.destroy()
        _replace_parameters(self.module, {n: full[n].to(self.device0, self.dtypes[n]) for n in full})
        for name, buf in self.module.named_buffers():
            buf.data = self.buffers[name].to(self.device0)
        del self.engine, self.model


def _replace_parameters(module: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """New ``nn.Parameter`` objects (no hooks, no ZeRO attributes), tied weights kept tied."""
    fresh: dict[int, torch.nn.Parameter] = {}
    by_id = {id(p): values[n] for n, p in module.named_parameters()}
    for name, p in list(module.named_parameters(remove_duplicate=False)):
        if id(p) not in fresh:
            fresh[id(p)] = torch.nn.Parameter(by_id[id(p)].clone(), requires_grad=p.requires_grad)
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, leaf, fresh[id(p)])


def is_main_process() -> bool:
    """Rank 0 of a launched job (or the only process): the one that should write outputs and log runs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
