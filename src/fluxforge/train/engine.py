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

Both expose the same small surface (``model``, ``micro_batches``, ``autocast``, ``loss_value``, ``backward``,
``step``, ``lr``, ``save``, ``load``, ``init_from``, ``export_state``, ``finish``), so the loop does not know
which one it drives.

Precision: the plain engine autocasts the forward pass (bf16 on CUDA, fp16 with a grad scaler where bf16
is missing, fp32 on CPU unless asked) and keeps fp32 master weights, as torch AMP recommends; under
DeepSpeed the JSON's ``bf16``/``fp16`` blocks decide, as DeepSpeed users expect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from fluxforge.config import TrainConfig
from fluxforge.errors import FluxForgeError
from fluxforge.train.sampler import Batch
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
    model: torch.nn.Module  # what the objective calls: the module, its compiled form, or the DeepSpeed engine
    signature: str  # joins the run fingerprint: a checkpoint is resumed only by the same engine setup
    is_main: bool
    device: torch.device
    compute_dtype: torch.dtype  # what the matmuls run in (for MFU against the right peak)

    def micro_batches(self, batch: Batch) -> list[Batch]: ...
    def autocast(self) -> contextlib.AbstractContextManager: ...
    def wrap(self, objective: Callable) -> Callable: ...
    def loss_value(self, loss: torch.Tensor) -> torch.Tensor: ...
    def backward(self, loss: torch.Tensor, n_micro: int) -> None: ...
    def step(self) -> None: ...
    def lr(self) -> float: ...
    def save(self, ckpt_dir: Path, meta: dict, keep: int = 1) -> None: ...
    def load(self, ckpt_dir: Path, fingerprint: str) -> dict | None: ...
    def init_from(self, state: dict, mode: str) -> None: ...
    def export_state(self) -> dict: ...
    def finish(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: ``auto`` is bf16 on a CUDA device that has it, else fp16 there, and fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise EngineError("precision: fp16 needs a CUDA device (CPU autocast supports bf16); use fp32 or bf16")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def split_rows(batch: Batch, start: int, rows: int, parts: int, device: torch.device) -> list[Batch]:
    """``parts`` micro-batches of ``rows // parts`` rows each, from rows ``start .. start+rows`` of the batch."""
    size = rows // parts
    return [batch.rows(start + i * size, start + (i + 1) * size).to(device) for i in range(parts)]


def load_trainer_state(path: Path) -> dict:
    """A ``trainer.pt`` written by :meth:`PlainEngine.export_state` (tensors only: ``weights_only=True``)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise EngineError(f"{path}: cannot read the training state ({type(err).__name__}: {err}); the file is "
                          "corrupt or was not written by FluxForge (only tensors and plain values are loaded, "
                          "never pickled code)") from err


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two groups: decayed matrices, and biases, norms and other 1-d ones undecayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:  # a frozen parameter (an adapter's base, a selective method's rest) has no optimizer state
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and other 1-d parameters (the usual GPT/Llama recipe).

    ``fused`` (CUDA): one kernel for the whole update instead of a few per parameter.
    """
    return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=BETAS, eps=EPS,
                             **({"fused": True} if fused else {}))


# builds the optimizer of a run: an update method's own (GaLore's AdamW, AdamW over an adapter), else adamw
OptimizerFactory = Callable[[torch.nn.Module, TrainConfig], torch.optim.Optimizer]


def make_engine(model: torch.nn.Module, cfg: TrainConfig, continuing: bool = False, anneal: bool = True,
                optimizer: OptimizerFactory | None = None) -> Engine:
    """The DeepSpeed engine when params or the launcher ask for one, else the plain one.

    ``continuing``: the run continues another run's schedule (init_mode full), so the LR does not re-warm.
    ``anneal``: False keeps a wsd/infinite schedule on its constant level to the end (a trunk that the next
    task continues; fluxforge.train.schedule.lr_factor). ``optimizer``: how to build the optimizer (default
    :func:`adamw`), e.g. :meth:`fluxforge.continual.methods.UpdateMethod.optimizer`.
    """
    if cfg.deepspeed.stage or os.environ.get(CONFIG_ENV):
        return DeepSpeedEngine(model, cfg, continuing, anneal, optimizer)
    return PlainEngine(model, cfg, continuing, anneal, optimizer)


# ----------------------------------------------------------------------------- plain torch
class PlainEngine:
    """One process, torch AdamW + LambdaLR + AMP; checkpoints are ``state-<step>.pt`` files, the newest K kept."""

    signature = ""
    is_main = True

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, continuing: bool = False, anneal: bool = True,
                 optimizer: OptimizerFactory | None = None) -> None:
        self.device = resolve_device(cfg.device)
        self.compute_dtype = resolve_precision(cfg.precision, self.device)
        self.home = next(model.parameters()).device
        self.module = self.model = model.to(self.device)
        self.compile = cfg.compile
        self.grad_clip, self.grad_accum = cfg.grad_clip, cfg.grad_accum
        self.opt = optimizer(model, cfg) if optimizer else adamw(model, cfg, fused=self.device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg, continuing=continuing, anneal=anneal))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute_dtype == torch.float16)

    def micro_batches(self, batch: Batch) -> list[Batch]:
        return split_rows(batch, 0, len(batch), self.grad_accum, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def wrap(self, objective: Callable) -> Callable:
        """``torch.compile`` the objective, model call and loss together (the fp32 upcast of the logits and the
        cross-entropy fuse instead of writing a batch x seq x vocab fp32 tensor), when ``compile`` is on."""
        return torch.compile(objective) if self.compile else objective

    def loss_value(self, loss: torch.Tensor) -> torch.Tensor:
        return loss.detach().float()  # no host sync here: the loop reads losses back only when it logs

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        self.scaler.scale(loss / n_micro if n_micro > 1 else loss).backward()

    def step(self) -> None:
        self.scaler.unscale_(self.opt)  # clip the true gradients (a no-op without fp16)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def _rng(self) -> dict:
        return {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if self.device.type == "cuda" else {})}

    def save(self, ckpt_dir: Path, meta: dict, keep: int = 1) -> None:
        """Write ``state-<step>.pt`` atomically (tmp + rename), then delete all but the newest ``keep``."""
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt = ckpt_dir / f"state-{meta['step']:08d}.pt"
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": self.module.state_dict(), "optim": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "scaler": self.scaler.state_dict(), "rng": self._rng(), **meta}, tmp)
        os.replace(tmp, ckpt)
        for old in checkpoints(ckpt_dir)[:-keep]:
            old.unlink(missing_ok=True)

    def load(self, ckpt_dir: Path, fingerprint: str) -> dict | None:
        found = checkpoints(ckpt_dir)
        if not found:
            return None
        ckpt = found[-1]
        try:
            state = torch.load(ckpt, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - truncated, garbage, or a pickle that is not plain tensors
            older = f"; {found[-2].name} is the previous one" if len(found) > 1 else ""
            raise EngineError(f"{ckpt}: the checkpoint cannot be read ({type(err).__name__}: {err}). Delete it to resume "
                              f"from an older checkpoint{older}, or delete {ckpt_dir} to start the run over") from err
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it was written by a run with another configuration", ckpt)
            return None
        self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        return state

    def init_from(self, state: dict, mode: str) -> None:
        """Start a new run from another run's final state: ``weights`` (nothing more to load), ``weights_optimizer``
        (AdamW moments; this run's own LR schedule, which warms up again) or ``full`` (the same moments, and the
        schedule was built ``continuing``, so it picks up where a wsd/infinite trunk left off without re-warming)."""
        if mode == "weights":
            return
        theirs = state.get("optimizer")
        if not theirs:
            raise EngineError(f"init_mode {mode!r}: the parent model has no optimizer state in training_state/ "
                              "(it was trained by DeepSpeed or before FluxForge saved it); use init_mode: weights")
        mine = self.opt.state_dict()
        sizes = [len(g["params"]) for g in mine["param_groups"]], [len(g["params"]) for g in theirs["param_groups"]]
        if sizes[0] != sizes[1]:
            raise EngineError(f"init_mode {mode!r}: the parent's optimizer holds parameter groups of sizes {sizes[1]}, "
                              f"this model needs {sizes[0]} (another architecture); use init_mode: weights")
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for i, st in theirs["state"].items():
            # GaLore (continual.methods) keeps the moments of a projected matrix in its rank-r subspace
            shape = st["exp_avg"].shape if "exp_avg" in st and "projector" not in st else None
            if shape is not None and shape != params[int(i)].shape:
                raise EngineError(f"init_mode {mode!r}: optimizer state {i} has shape {tuple(shape)} but the parameter "
                                  f"is {tuple(params[int(i)].shape)}; the parent is another architecture")
        self.opt.load_state_dict({"state": theirs["state"], "param_groups": mine["param_groups"]})  # keep our LRs

    def export_state(self) -> dict:
        """What a later run may start from: AdamW moments and the grad scaler. Not the RNG: its state depends on
        everything else the process did, and the model directory (a DVC output) must be reproducible."""
        return {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def finish(self) -> None:
        self.module.to(self.home)  # evaluation and saving happen where the model came from (CPU)


_STATE = re.compile(r"^state-(\d{8})\.pt$")


def checkpoints(ckpt_dir: Path | None) -> list[Path]:
    """The plain engine's checkpoints in ``ckpt_dir``, oldest first."""
    if ckpt_dir is None or not Path(ckpt_dir).is_dir():
        return []
    return sorted(p for p in Path(ckpt_dir).iterdir() if _STATE.match(p.name))


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
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise EngineError(f"batch_size {cfg.batch_size} does not split into {world_size} ranks x grad_accum "
                          f"{cfg.grad_accum} equal micro-batches; use a multiple of {world_size * cfg.grad_accum}")
    if cfg.precision not in ("auto", "fp32"):
        raise EngineError(f"precision {cfg.precision!r} with DeepSpeed: set the \"bf16\" or \"fp16\" block in {path} "
                          "instead (DeepSpeed owns mixed precision and the loss scaler); leave precision: auto")
    if cfg.compile:
        raise EngineError("compile: true is not supported with DeepSpeed here; set compile: false")
    ours = {"train_batch_size": cfg.batch_size,
            "train_micro_batch_size_per_gpu": cfg.batch_size // (world_size * cfg.grad_accum),
            "gradient_accumulation_steps": cfg.grad_accum, "gradient_clipping": cfg.grad_clip}
    changed = {k: (raw[k], v) for k, v in ours.items() if k in raw and raw[k] != v}
    if changed:
        log.info("DeepSpeed config %s: params override %s", path, changed)
    return {**raw, **ours}


# DeepSpeed's stage-1/2 bucket sizes when the JSON leaves them out (deepspeed/runtime/zero/config.py).
BUCKET_DEFAULTS = {"reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000}


def fit_buckets(config: dict, n_params: int) -> dict:
    """The config with ZeRO-1/2's gradient buckets no larger than the model.

    DeepSpeed allocates its reduce buckets at the configured size, 5e8 elements (2 GB of fp32) by default, on
    every backward pass; a model smaller than one bucket gains nothing from the excess, and on CPU each such
    allocation cost 0.1 s, so a tiny model's ZeRO-1/2 step took 0.4 s instead of 0.02 s. A bucket that already
    holds every gradient reduces them the same way whatever its size, so the result is bitwise unchanged.
    """
    zero = dict(config.get("zero_optimization", {}))
    if zero.get("stage") not in (1, 2):
        return config
    for key, default in BUCKET_DEFAULTS.items():
        zero[key] = min(int(zero.get(key, default)), max(n_params, 1))
    return {**config, "zero_optimization": zero}


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
    skip_shm_op(deepspeed)
    if "RANK" not in os.environ:  # no torchrun/deepspeed launcher: a single rank
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(verbose=False)  # gloo on CPU, nccl on CUDA: the accelerator's own backend


SHM_OP = "deepspeed_shm_comm"


def skip_shm_op(deepspeed) -> None:  # noqa: ANN001 - the deepspeed module, imported by the caller
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory all-reduce op when it starts a process group.

    DeepSpeed builds that op in every new environment the first time its CPU backend starts (23 s and 41 CPU-s on
    2 cores; BENCHMARKS.md "Test suite time"), yet only ``inference_all_reduce`` uses it: the tensor-parallel
    inference layers of ``deepspeed.init_inference``, which training never calls. Without the op that call falls
    back to the process group's all-reduce. Marking the op incompatible is the switch DeepSpeed itself reads
    (``deepspeed.comm.torch.build_shm_op``); nothing else changes.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__[SHM_OP] = False


_TAG = re.compile(r"step\d+")  # DeepSpeedEngine.save's tag names; state.json may name nothing else


def deepspeed_pickled_types() -> list[type]:
    """The only non-tensor types DeepSpeed's ZeRO 1/2/3 checkpoints hold (fp32 and bf16; DeepSpeed 0.19), found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint``: plain records, no code to run."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def tensors_only_checkpoint_engine(engine) -> object:  # noqa: ANN001 - a deepspeed.DeepSpeedEngine
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True`` instead of unpickling anything.

    DeepSpeed reads every checkpoint file through ``engine.checkpoint_engine.load``, which calls
    ``torch.load(..., weights_only=False)``: a replaced file would run its code on resume. This engine
    writes the same files but reads only tensors, plain containers and :func:`deepspeed_pickled_types`;
    anything else is refused with an :class:`EngineError` naming the file. A ZeRO JSON that chooses another
    writer (``checkpoint.writer``, DataStates) or universal checkpoints (read with their own ``torch.load``)
    is refused, because those paths unpickle around this hook.
    """
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    if type(engine.checkpoint_engine) is not TorchCheckpointEngine or engine.load_universal_checkpoint():
        raise EngineError(f"the ZeRO JSON's \"checkpoint\" block selects {type(engine.checkpoint_engine).__name__}"
                          f"{' with universal checkpoints' if engine.load_universal_checkpoint() else ''}, whose loader "
                          "unpickles arbitrary objects; remove the block (FluxForge loads checkpoints tensors-only)")

    class TensorsOnly(TorchCheckpointEngine):
        def load(self, path: str, map_location=None) -> object:  # noqa: ANN001 - DeepSpeed's signature
            try:
                with torch.serialization.safe_globals(deepspeed_pickled_types()):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as err:  # noqa: BLE001 - truncated, garbage, or a pickle that is not plain data
                first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                raise EngineError(f"{path}: refused or unreadable DeepSpeed checkpoint file ({first}). Only tensors "
                                  "and DeepSpeed's plain records are loaded, never pickled code; delete the "
                                  "checkpoint folder to start the run over") from None

    safe = TensorsOnly()
    safe.__dict__.update(vars(engine.checkpoint_engine))  # the writer's own settings (serialization format) kept
    return safe


class DeepSpeedEngine:
    """ZeRO 1/2/3 around the caller's module; the same optimizer, schedule and clipping as :class:`PlainEngine`."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, continuing: bool = False, anneal: bool = True,
                 optimizer: OptimizerFactory | None = None) -> None:
        init_distributed()
        import deepspeed
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.config = deepspeed_config(cfg, self.world)
        self.micro = self.config["train_micro_batch_size_per_gpu"]
        self.grad_accum = cfg.grad_accum
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}
        self.compute_dtype = next((dt for k, dt in half.items() if self.config.get(k, {}).get("enabled")), torch.float32)
        self.signature = f"|deepspeed|world={self.world}|{json.dumps(self.config, sort_keys=True)}"
        # what finish() puts back: DeepSpeed moves and (bf16/fp16) casts the module in place
        self.module = model
        self.device0 = next(model.parameters()).device
        self.dtypes = {n: p.dtype for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        opt = optimizer(model, cfg) if optimizer else adamw(model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, continuing=continuing, anneal=anneal))
        n_params = sum(p.numel() for p in model.parameters())
        self.engine, _, _, self.sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                             config=fit_buckets(self.config, n_params))
        self.engine.checkpoint_engine = tensors_only_checkpoint_engine(self.engine)
        self.model = self.engine
        self.device = self.engine.device if isinstance(self.engine.device, torch.device) else torch.device(self.engine.device)
        log.info("DeepSpeed ZeRO-%d, rank %d of %d, micro-batch %d", self.config["zero_optimization"]["stage"],
                 self.rank, self.world, self.micro)

    def micro_batches(self, batch: Batch) -> list[Batch]:
        """This rank's rows of the global batch (rank r: rows r*b*a .. (r+1)*b*a-1), as ``a`` micro-batches of ``b``."""
        rows = self.micro * self.grad_accum
        return split_rows(batch, self.rank * rows, rows, self.grad_accum, self.engine.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed casts the module itself (bf16/fp16 blocks of its JSON)

    def wrap(self, objective: Callable) -> Callable:
        return objective

    def loss_value(self, loss: torch.Tensor) -> torch.Tensor:
        """The global batch's mean loss (equal shards, so the mean of the ranks' means), the same on every rank."""
        import torch.distributed as dist

        value = loss.detach().float().clone()
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return value

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        # backward scales by 1/gradient_accumulation_steps and averages over ranks; step() acts only on the
        # last micro-batch of a step (the accumulation boundary): clip, AdamW, schedule, zero grads
        self.engine.backward(loss)
        self.engine.step()

    def step(self) -> None:
        """Nothing left to do: DeepSpeed stepped at the accumulation boundary inside :meth:`backward`."""

    def init_from(self, state: dict, mode: str) -> None:
        if mode != "weights":
            raise EngineError(f"init_mode {mode!r} is not supported with DeepSpeed (its optimizer state is sharded "
                              "across ranks); use init_mode: weights")

    def export_state(self) -> dict:
        return {}  # ZeRO's optimizer state is sharded; a later task can initialise from the weights only

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, ckpt_dir: Path, meta: dict, keep: int = 1) -> None:
        """Every rank writes its shards under a new tag; then rank 0 points ``state.json`` at it, atomically.

        ``state.json`` moves only after all shards are on disk, so a crash mid-save resumes from the
        previous complete tag; then all but the newest ``keep`` tags are deleted.
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
            tags = sorted((d for d in root.iterdir() if d.is_dir() and _TAG.fullmatch(d.name)),
                          key=lambda d: int(d.name[4:]))
            for old in tags[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load(self, ckpt_dir: Path, fingerprint: str) -> dict | None:
        """Resume from the tag ``state.json`` names; every file of it is read tensors-only (no pickled code runs).

        A tag that is missing, not this run's (``step<N>``), unreadable, or holding another step than
        ``state.json`` says is an error naming the file: resuming from the wrong state, or silently starting
        over, would both be worse than stopping.
        """
        state_file = ckpt_dir / "deepspeed" / "state.json"
        if not state_file.exists():
            return None
        try:
            state = json.loads(state_file.read_text())
            tag, step = state["tag"], int(state["step"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise EngineError(f"{state_file}: not a checkpoint state written by FluxForge ({err!r}); delete "
                              f"{ckpt_dir} to start the run over") from None
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it was written by a run with another configuration", state_file)
            return None
        restart = f"delete {ckpt_dir} to start the run over"
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise EngineError(f"{state_file} names tag {tag!r}, which is not a checkpoint tag (step<N>); {restart}")
        if not (state_file.parent / tag).is_dir():
            raise EngineError(f"{state_file} names tag {tag}, but {state_file.parent / tag} does not exist; {restart}")
        path, _ = self.engine.load_checkpoint(str(state_file.parent), tag=tag)
        if path is None:
            raise EngineError(f"{state_file} names tag {tag}, which DeepSpeed could not load; {restart}")
        if self.engine.global_steps != step:
            raise EngineError(f"{state_file.parent / tag} holds step {self.engine.global_steps}, but {state_file} "
                              f"says {step}; {restart}")
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
