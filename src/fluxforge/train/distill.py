"""Logit distillation: teachers (one or a committee), their targets, the KD loss, students cut from a teacher.

The loss is Hinton et al. (2015) per token, as in methods.md section 9:
``(1 - alpha) * CE(y, z_s) + alpha * T^2 * KL(p_t^T || p_s^T)``, averaged over positions.
A committee's members are combined by averaging their probabilities (the default) or
their logits. Targets may keep only each position's top-k teacher tokens, which is what
makes caching them on disk affordable (full vocabularies cost ``batch x seq x vocab``
floats per step). The other tokens are not dropped: their total mass is one more bucket,
so the loss is the exact KL between the two distributions coarsened to (top-k tokens,
everything else). Renormalising over the top k instead teaches the student that every
other token has probability zero: on the default world that raised the student's
held-out perplexity from 205 to 2500 at equal accuracy.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fluxforge.config import DistillConfig
from fluxforge.errors import DataError
from fluxforge.train.loop import Objective
from fluxforge.train.model import count_params, load_model, new_model
from fluxforge.train.sampler import Batch, as_batch

log = logging.getLogger(__name__)


@dataclass
class Targets:
    """Teacher log-probabilities at temperature T, over the whole vocabulary or the ``index`` tokens."""

    logp: torch.Tensor  # [B, S, V], or [B, S, K]: the teacher's own log-probabilities of its top k (not renormalised)
    index: torch.Tensor | None = None  # [B, S, K] token ids when sparse


@torch.no_grad()
def teacher_targets(teachers: Sequence[torch.nn.Module], inputs: torch.Tensor, temperature: float,
                    ensemble: str = "mean_probs", top_k: int = 0) -> Targets:
    """Combine the teachers' outputs on ``inputs`` into KD targets."""
    logits = [t(input_ids=inputs).logits.float() for t in teachers]
    if ensemble == "mean_logits" or len(logits) == 1:
        logp = F.log_softmax(torch.stack(logits).mean(0) / temperature, dim=-1)
    elif ensemble == "mean_probs":
        per = torch.stack([F.log_softmax(z / temperature, dim=-1) for z in logits])
        logp = torch.logsumexp(per, dim=0) - math.log(len(logits))
    else:
        raise ValueError(f"unknown ensemble rule '{ensemble}' (mean_probs or mean_logits)")
    if top_k and top_k < logp.size(-1):
        vals, idx = logp.topk(top_k, dim=-1)
        return Targets(vals, idx)
    return Targets(logp)


def _rest(logp: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside the kept tokens, ``log(1 - sum exp(logp))``, kept finite."""
    return torch.log((1 - logp.exp().sum(-1)).clamp_min(1e-12))


def kd_loss(student_logits: torch.Tensor, targets: Targets, temperature: float) -> torch.Tensor:
    """``T^2 * KL(p_t^T || p_s^T)`` averaged over positions (``batchmean`` over flattened tokens)."""
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)
    logp = targets.logp.float()
    if targets.index is None:
        kl = (logp.exp() * (logp - logq)).sum(-1)
    else:
        logq = logq.gather(-1, targets.index)
        rest_p, rest_q = _rest(logp), _rest(logq)
        kl = (logp.exp() * (logp - logq)).sum(-1) + rest_p.exp() * (rest_p - rest_q)
    return kl.mean() * temperature**2


class TargetCache:
    """Teacher targets on disk, addressed by the batch's content.

    The key covers the teachers' weights and every option that changes the targets, so a
    cache is reused exactly when the targets would be recomputed identically (a student
    sweep, a resumed run) and never otherwise. Files are written atomically.
    """

    FORMAT = "targets-v2"  # bump when what is stored changes meaning, so old files are never read

    def __init__(self, root: Path, teacher_dirs: Sequence[Path], temperature: float, ensemble: str, top_k: int) -> None:
        from fluxforge.io import digest_path

        h = hashlib.sha256(f"{self.FORMAT}|{temperature}|{ensemble}|{top_k}".encode())
        for d in teacher_dirs:
            for f in sorted(Path(d).glob("*.safetensors")):
                h.update(digest_path(f).encode())
        self.dir = Path(root) / h.hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _file(self, inputs: torch.Tensor) -> Path:
        return self.dir / (hashlib.sha1(inputs.numpy().tobytes()).hexdigest() + ".pt")

    def get(self, inputs: torch.Tensor, compute) -> Targets:  # noqa: ANN001 - a () -> Targets callable
        f = self._file(inputs)
        if f.exists():
            self.hits += 1
            d = torch.load(f, weights_only=True)
            return Targets(d["logp"].float(), d.get("index"))
        self.misses += 1
        t = compute()
        tmp = f.with_suffix(f".tmp{os.getpid()}")
        torch.save({"logp": t.logp.half(), **({"index": t.index.int()} if t.index is not None else {})}, tmp)
        os.replace(tmp, f)
        return Targets(t.logp.half().float(), t.index)  # the same precision as a later cache hit


def distillation_objective(teachers: Sequence[torch.nn.Module], temperature: float, alpha: float,
                           ensemble: str = "mean_probs", top_k: int = 0, cache: TargetCache | None = None) -> Objective:
    """The training objective: ``alpha`` on the KD term, ``1 - alpha`` on next-token cross-entropy."""
    for t in teachers:
        t.eval()
        for p in t.parameters():
            p.requires_grad_(False)

    def loss(model: torch.nn.Module, batch: Batch | torch.Tensor) -> torch.Tensor:
        tokens = as_batch(batch).tokens
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        logits = model(input_ids=inputs).logits.float()

        def compute() -> Targets:
            return teacher_targets(teachers, inputs, temperature, ensemble, top_k)

        targets = cache.get(inputs, compute) if cache else compute()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        return alpha * kd_loss(logits, targets, temperature) + (1 - alpha) * ce

    return loss


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def keep_layers(teacher: torch.nn.Module, layers: Sequence[int]) -> torch.nn.Module:
    """A student made of the teacher's embeddings, head and the chosen decoder layers (in the given order).

    Works for HF decoders that name their blocks ``model.layers.N`` (Llama, Qwen, Mistral).
    """
    n = teacher.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise DataError(f"distill.student_layers {list(layers)}: the teacher has layers 0..{n - 1}"
                        + (f"; {bad} do not exist" if bad else ""))
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    student = type(teacher)(cfg)
    state = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER.match(key)
        if m is None:
            state[key] = value.clone()
        elif int(m[1]) in layers:
            state[f"model.layers.{list(layers).index(int(m[1]))}.{m[2]}"] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise DataError(f"cannot cut layers from a {type(teacher).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return student


@dataclass
class DistillationSetup:
    student: torch.nn.Module
    objective: Objective
    cache: TargetCache | None
    info: dict  # the student's lineage: teachers, pinned registry versions, committee rule, how it was built


def distillation_setup(cfg: DistillConfig, names: Sequence[str], dirs: Sequence[Path], versions: dict[str, str],
                       token_dir: Path, cache_root: Path) -> DistillationSetup:
    """Load the teachers, build the student (cut from the first teacher's layers, or from its config) and the objective."""
    teachers = [load_model(d)[0] for d in dirs]
    student = keep_layers(teachers[0], cfg.student_layers) if cfg.student_layers else new_model(cfg.student, token_dir)
    cache = TargetCache(cache_root, dirs, cfg.temperature, cfg.ensemble, cfg.top_k) if cfg.teacher_cache else None
    objective = distillation_objective(teachers, cfg.temperature, cfg.alpha, cfg.ensemble, cfg.top_k, cache)
    info = {"teacher": ",".join(names), "teachers": list(names), "teacher_versions": versions,
            "ensemble": cfg.ensemble if len(names) > 1 else "", "teacher_parameters": max(count_params(t) for t in teachers),
            "student_init": f"layers {cfg.student_layers} of {names[0]}" if cfg.student_layers else "config"}
    return DistillationSetup(student, objective, cache, info)
