"""Learning-rate schedules as multiplicative factors of the peak LR (``cfg.lr``), for ``LambdaLR``.

Five schedules (``cfg.schedule``):

- ``cosine``: linear warmup, then cosine to ``min_lr_ratio``. The final LR is exactly
  ``lr * min_lr_ratio``; a *moderate* ratio (not ~0) keeps the last data useful, which matters
  when the best data comes last (Luo et al. 2025, arXiv 2511.18903).
- ``wsd``: warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024, arXiv 2405.18392):
  warmup, a stable peak, then a decay over the last ``decay_fraction`` of the steps to
  ``min_lr_ratio``, shaped by ``decay_shape`` as in the epfml ``wsd_schedule``: ``sqrt``
  (1-sqrt, the paper's best), ``linear``, ``cosine``, ``exp`` (``final**t``), ``square``.
- ``infinite`` (Ibrahim et al. 2024, arXiv 2403.08763; Janson et al. 2025, arXiv 2503.02844):
  warmup -> cooldown from the peak to ``const_ratio`` (``cosine`` "InfCos", ``inv_sqrt`` with
  timescale α, or ``linear``) -> constant -> exponential anneal to ``min_ratio``. The constant
  phase can run "forever": the LR before the anneal depends on no horizon, so a run can be
  extended, or continued on new data, without re-warming.
- ``constant``: warmup, then the peak.
- ``rsqrt`` (FoMo-in-Flux's ``rsqrt``, methods.md section 8): warmup, then ``floor + (1 - floor) sqrt(W / s)``
  (W warmup steps, floor ``min_lr_ratio``), then a linear cooldown over the last ``decay_fraction`` of the
  steps to ``min_lr_ratio`` (FoMo cools down to 0 over the last 10%; here the final ratio is the repo's).

Step convention (all schedules): the factor for step ``s`` (0-based) is the LR of the ``s``-th
optimizer step, as ``LambdaLR`` applies it. Warmup is ``(s+1)/W`` for ``s < W`` (the repo's
convention: it reaches the peak on step ``W-1`` and never spends a step at LR 0, where the Janson
code uses ``s/W``), so ``η(W) = η_max`` and the factor is continuous into the next phase. Every
decay ends *exactly* at its final ratio on the last step ``steps-1`` (the Janson code reaches
``η_min`` one step past the end, which is never applied); later steps stay there.

Continual learning (``continuing``, ``anneal``): ``lr_factor(cfg)`` is the schedule of a run that
starts from scratch and ends deployable (task 0, annealed). A task that *continues* a trunk
trained on an ``infinite`` or ``wsd`` schedule passes ``continuing=True``: there is no warmup and,
for ``infinite``, no cooldown; it starts at the level the trunk left off (``η_const``; the WSD
stable peak). ``anneal=False`` gives the *trunk* schedule, which never leaves the constant/stable
level, so the next task can continue from its checkpoint; ``anneal=True`` gives the deployable
copy, which anneals over the last part of the task. Both agree on every step before
:func:`anneal_start`, so a deployable copy is a fork of the trunk run at that step (Janson et al.:
"anneal from a fork of the constant-phase checkpoint").
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fluxforge.config import TrainConfig, wsd_decay_steps

Schedule = Callable[[int], float]

# schedules whose LR a later task can pick up without re-warming (cosine has already decayed by then)
CONTINUABLE = frozenset({"wsd", "infinite", "constant"})


def lr_factor(cfg: TrainConfig, continuing: bool = False, anneal: bool = True) -> Schedule:
    """Return ``step -> LR / cfg.lr`` for ``cfg.schedule``.

    ``continuing``: this task continues a trunk trained on the same kind of schedule (continual
    task >= 1): no warmup; ``infinite`` runs constant (at ``const_ratio``) + anneal only, ``wsd``
    starts on its stable peak, ``constant`` on the peak. ``anneal``: ``True`` decays to the
    final ratio at the end (a deployable model); ``False`` stays on the constant/stable level to
    the end (the trunk the next task continues from). ``cosine`` cannot be continued or left
    un-annealed (its decay spans the whole run), so either flag raises ``ValueError`` for it;
    ``constant`` has no anneal, so ``anneal`` changes nothing there.
    """
    if cfg.schedule == "cosine" and (continuing or not anneal):
        raise ValueError(
            f"schedule 'cosine' decays over the whole run, so it cannot be continued without re-warming or "
            f"kept un-annealed (continuing={continuing}, anneal={anneal}); use 'infinite' or 'wsd' ({sorted(CONTINUABLE)})"
        )
    warm = 0 if continuing else _warmup_steps(cfg)
    last = cfg.steps - 1

    def with_warmup(rest: Schedule) -> Schedule:
        return lambda step: (step + 1) / warm if step < warm else rest(step)

    if cfg.schedule == "cosine":
        floor = cfg.min_lr_ratio
        return with_warmup(lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * _progress(step, warm, last))))
    if cfg.schedule == "wsd":
        return with_warmup(_wsd(cfg, anneal))
    if cfg.schedule == "infinite":
        return with_warmup(_infinite(cfg, continuing, anneal))
    if cfg.schedule == "rsqrt":
        return with_warmup(_rsqrt(cfg))
    return with_warmup(lambda step: 1.0)


def anneal_start(cfg: TrainConfig, continuing: bool = False) -> int | None:
    """First step of the final decay (``wsd``) or anneal (``infinite``); ``None`` when there is none to fork.

    ``lr_factor(cfg, continuing, anneal=True)`` and ``anneal=False`` agree on every step before it.
    """
    if cfg.schedule == "wsd":
        return cfg.steps - wsd_decay_steps(cfg.steps, cfg.decay_fraction)
    if cfg.schedule == "infinite":
        return cfg.infinite.boundaries(cfg.steps, cfg.warmup_steps)[2]
    return None


def decay_shape(shape: str, p: float, final: float) -> float:
    """WSD decay factor at progress ``p`` in [0, 1]: 1 at ``p=0``, ``final`` at ``p=1`` (epfml ``wsd_schedule``)."""
    if shape == "exp":
        return final**p
    remaining = {
        "sqrt": lambda: 1 - math.sqrt(p),
        "linear": lambda: 1 - p,
        "cosine": lambda: 0.5 * (1 + math.cos(math.pi * p)),
        "square": lambda: 1 - p * p,
    }
    if shape not in remaining:
        raise ValueError(f"unknown WSD decay shape '{shape}' (known: exp, {', '.join(remaining)})")
    return final + (1 - final) * remaining[shape]()


def cooldown_shape(shape: str, p: float, const: float, alpha: float = 10.0) -> float:
    """Infinite-schedule cooldown factor at progress ``p`` in [0, 1]: 1 at ``p=0``, ``const`` at ``p=1``.

    ``inv_sqrt`` is Ibrahim et al.'s ``g(t) = 1/sqrt(1+αt) - 1`` rescaled so ``g(p)/g(1)`` runs 0 -> 1.
    """
    if shape == "cosine":
        return const + (1 - const) / 2 * (1 + math.cos(math.pi * p))
    if shape == "inv_sqrt":
        def g(t: float) -> float:
            return 1 / math.sqrt(1 + alpha * t) - 1

        return 1 + (const - 1) * g(p) / g(1)
    if shape == "linear":
        return 1 + (const - 1) * p
    raise ValueError(f"unknown cooldown shape '{shape}' (known: cosine, inv_sqrt, linear)")


def _warmup_steps(cfg: TrainConfig) -> int:
    if cfg.schedule == "infinite":
        return cfg.infinite.boundaries(cfg.steps, cfg.warmup_steps)[0]
    return cfg.warmup_steps


def _progress(step: int, start: int, end: int) -> float:
    """Share of the segment [start, end] done at ``step``, clamped to [0, 1]; a one-step segment is already done.

    The one-step case is where the earlier version of this module was wrong: a one-step WSD decay (or a cosine with
    one step after warmup) stayed at the peak instead of reaching the final ratio.
    """
    if end <= start:
        return 1.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


def _wsd(cfg: TrainConfig, anneal: bool) -> Schedule:
    start, last = anneal_start(cfg), cfg.steps - 1
    assert start is not None

    def f(step: int) -> float:
        if not anneal or step < start:
            return 1.0
        return decay_shape(cfg.decay_shape, _progress(step, start, last), cfg.min_lr_ratio)

    return f


def _infinite(cfg: TrainConfig, continuing: bool, anneal: bool) -> Schedule:
    inf = cfg.infinite
    warm, cool_end, const_end = inf.boundaries(cfg.steps, cfg.warmup_steps)
    const, final, last = inf.const_ratio, cfg.infinite_min_ratio, cfg.steps - 1
    rate = math.log(const / final)  # the anneal is geometric: const * exp(-rate * p), p: 0 -> 1

    def f(step: int) -> float:
        if not continuing and step <= cool_end:
            return cooldown_shape(inf.cooldown, _progress(step, warm, cool_end), const, inf.inv_sqrt_alpha)
        if anneal and step >= const_end:
            return const * math.exp(-rate * _progress(step, const_end, last))
        return const

    return f


def _rsqrt(cfg: TrainConfig) -> Schedule:
    floor, warm, last = cfg.min_lr_ratio, cfg.warmup_steps, cfg.steps - 1
    start = cfg.steps - wsd_decay_steps(cfg.steps, cfg.decay_fraction)

    def rsqrt(step: int) -> float:
        return floor + (1 - floor) * math.sqrt(warm / max(step, warm))

    def f(step: int) -> float:
        if step < start:
            return rsqrt(step)
        ref = rsqrt(start)  # the cooldown runs linearly from where the decay left off down to the final ratio
        return ref + (floor - ref) * _progress(step, start, last)

    return f


def meta_rsqrt_peak(lr: float, min_lr: float, task: int, steps: int, warmup: int) -> float:
    """Task ``task``'s peak LR under FoMo-in-Flux's autoregressive ``rsqrt_with_recovery`` meta-schedule.

    ``base_lr_t = min + sqrt((t + 1) W / (t S + W)) (lr - min)`` for ``t >= 1`` (S steps per task, W warmup
    steps), ``lr`` for the first task: each task re-warms to the LR an rsqrt decay over all the steps so far
    would have reached, so the peaks fall as ``1/sqrt(t)`` (FoMo's ``base_continual_learner.py``).
    """
    if task == 0:
        return lr
    ratio = math.sqrt((task + 1) * warmup / (task * steps + warmup))
    return min_lr + min(ratio, 1.0) * (lr - min_lr)


def meta_cosine_peak(lr: float, min_lr: float, task: int, steps: int, warmup: int) -> float:
    """Task ``task``'s peak LR under FoMo-in-Flux's autoregressive cosine meta-schedule (methods.md section 8).

    ``base_lr_t = min + 1/2 (1 + cos(pi e / es)) (lr - min)`` with ``e = t (S - W) + 1`` and
    ``es = (t + 1)(S - W)``: the first task peaks at ~lr, later tasks at ever lower peaks.
    """
    span = max(steps - warmup, 1)
    e, es = task * span + 1, (task + 1) * span
    return min_lr + 0.5 * (1 + math.cos(math.pi * e / es)) * (lr - min_lr)
