"""CMR planner: the Critical Mixture Ratio of domain data for continual pretraining.

Gu et al. 2024, "CMR Scaling Law: Predicting Critical Mixture Ratios for Continual Pre-training of
Language Models" (arXiv 2407.17467; methods.md section 3). Continual pretraining mixes general and
domain data with domain ratio R. A ratio is *feasible* when the domain loss decreases while the
general loss stays within a tolerance epsilon of its pre-CPT value ``L_G(0)``; the CMR is the
largest feasible R. The paper fits ``R_CMR(T) = beta0 + beta1 * T^s`` over the training budget T.

Only the abstract could be checked: the loss functional form and epsilon are UNVERIFIED, so this
module follows methods.md's generic recipe and keeps both choices as arguments:

1. short pilot runs at each R of a grid log ``L_G(T;R)`` and ``L_D(T;R)`` at several T;
2. each curve is fitted with ``L(T) = A * T^(-alpha) + E`` (:func:`fit_power_law`);
3. ``CMR(T) = max{R : L_G(T;R) <= L_G(0) + eps and L_D(.;R) decreasing at T}``, where the general
   constraint is on the ``"final"`` loss at T or on the ``"max"`` loss along the run up to T;
4. ``R_CMR(T)`` is fitted over several T (:func:`fit_cmr_law`) and can be extrapolated.

:func:`plan_ratio` chooses the ratio for a budget by evaluating step 3 at the budget directly
on the fitted curves, so the chosen R is always a ratio that a pilot run actually trained with;
the step-4 law over the pilot token counts is logged beside it for comparison.

If no ratio is feasible, the fallback is the ratio with the smallest general-loss rise (preferring
those whose domain loss still decreases) with ``feasible=False``: the constraint protects the general
ability, so the least harmful mixture is the safe default, and the flag lets the caller stop or warn
rather than train on a ratio that silently breaks the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.optimize import curve_fit

from fluxforge.errors import FluxForgeError

Constraint = Literal["final", "max"]
CONSTRAINTS: tuple[str, ...] = ("final", "max")
MIN_POINTS = 3  # three parameters per law: fewer points leave it undetermined
# exponent grids for the variable-projection start: for a fixed exponent both laws are linear in
# the two remaining coefficients, so a 1-D scan gives a global starting point for curve_fit
_ALPHA_GRID = np.geomspace(1e-3, 4.0, 240)
_S_GRID = np.concatenate([-np.geomspace(4.0, 1e-3, 120), np.geomspace(1e-3, 4.0, 120)])


class CMRError(FluxForgeError):
    """Pilot curves or settings that cannot give a mixture ratio; the message names the ratio and the value."""


# ----------------------------------------------------------------------------- power law in T
@dataclass(frozen=True)
class PowerLaw:
    """``L(T) = A * T^(-alpha) + E``; ``A < 0`` is a loss that rises towards E (general loss under CPT)."""

    A: float
    alpha: float
    E: float
    r2: float
    n_points: int
    t_min: float
    t_max: float

    def __call__(self, tokens: float | np.ndarray) -> float | np.ndarray:
        t = np.asarray(tokens, dtype=np.float64)
        # A * T^-alpha in log form: A is in the units of T, and T^-alpha under- or overflows for T ~ 1e12
        value = np.sign(self.A) * np.exp(np.log(abs(self.A) + 1e-300) - self.alpha * np.log(t)) + self.E
        return float(value) if value.ndim == 0 else value

    def decreasing(self) -> bool:
        """``dL/dT = -alpha * A * T^(-alpha-1) < 0`` everywhere: the loss still falls as training goes on."""
        return self.A * self.alpha > 0

    def to_dict(self) -> dict[str, float | int]:
        return {"A": self.A, "alpha": self.alpha, "E": self.E, "r2": self.r2, "n_points": self.n_points,
                "t_min": self.t_min, "t_max": self.t_max}


def _as_curve(tokens: Sequence[float], losses: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(tokens, dtype=np.float64).ravel()
    y = np.asarray(losses, dtype=np.float64).ravel()
    if t.size != y.size:
        raise CMRError(f"{name}: {t.size} token counts but {y.size} losses")
    if not np.isfinite(t).all() or (t <= 0).any():
        raise CMRError(f"{name}: token counts must be finite and > 0, got {t.tolist()}")
    if np.unique(t).size < MIN_POINTS:
        raise CMRError(f"{name}: the law has 3 parameters and needs >= {MIN_POINTS} distinct token counts, "
                       f"got {np.unique(t).size} ({t.tolist()})")
    if not np.isfinite(y).all():
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise CMRError(f"{name}: value at T={t[bad]:g} is {y[bad]} (a non-finite loss means a diverged pilot run)")
    return t, y


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot <= 1e-24 * max(1.0, float((y**2).sum())):  # a flat curve: perfect if the fit is flat too
        return 1.0 if ss_res <= 1e-20 * max(1.0, float((y**2).sum())) else 0.0
    return 1.0 - ss_res / ss_tot


def _linear_in_basis(basis: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares ``y = c * basis + d``; returns (c, d, sse)."""
    design = np.stack([basis, np.ones_like(basis)], axis=1)
    (c, d), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(c), float(d), float(((design @ np.array([c, d]) - y) ** 2).sum())


def _profile_start(x: np.ndarray, y: np.ndarray, exponents: np.ndarray) -> tuple[float, float, float]:
    """Best (coefficient, exponent, offset) of ``c * x^p + d`` over the exponent grid (x scaled to ~1)."""
    best = (0.0, float(exponents[0]), float(y.mean()), math.inf)
    for p in exponents:
        c, d, sse = _linear_in_basis(x**p, y)
        if sse < best[3]:
            best = (c, float(p), d, sse)
    return best[0], best[1], best[2]


def fit_power_law(tokens: Sequence[float], losses: Sequence[float], name: str = "curve") -> PowerLaw:
    """Least-squares fit of ``L(T) = A * T^(-alpha) + E`` to one pilot curve.

    WHY this procedure: with alpha fixed the law is linear in (A, E), so a scan over alpha gives a
    global start and curve_fit (trust region, alpha in (0, 10]) only polishes it; a bare curve_fit
    from a guessed start often stalls on these nearly flat curves. T is scaled by its largest value
    inside the fit for conditioning. Residuals are in loss units (methods.md suggests log space; the
    losses of one curve span a narrow band, where the two weightings agree, and the linear form lets
    A take either sign: a general loss that rises under CPT has A < 0).
    """
    t, y = _as_curve(tokens, losses, name)
    scale = float(t.max())
    x = t / scale
    c0, p0, d0 = _profile_start(x, y, -_ALPHA_GRID)
    start = [c0, -p0, d0]

    def law(xx: np.ndarray, a: float, alpha: float, e: float) -> np.ndarray:
        return a * xx ** (-alpha) + e

    try:
        (a, alpha, e), _ = curve_fit(law, x, y, p0=start, bounds=([-np.inf, 1e-6, -np.inf], [np.inf, 10.0, np.inf]),
                                     method="trf", x_scale="jac", max_nfev=20000)
    except (RuntimeError, ValueError):  # no better optimum than the scan's: keep the start
        a, alpha, e = start
    if ((law(x, a, alpha, e) - y) ** 2).sum() > ((law(x, *start) - y) ** 2).sum():
        a, alpha, e = start
    pred = law(x, a, alpha, e)
    # back to raw T: a * (T/scale)^-alpha = (a * scale^alpha) * T^-alpha
    raw_a = float(np.sign(a) * np.exp(np.log(abs(a) + 1e-300) + alpha * np.log(scale))) if a != 0 else 0.0
    return PowerLaw(A=raw_a, alpha=float(alpha), E=float(e), r2=_r2(y, pred), n_points=int(t.size),
                    t_min=float(t.min()), t_max=float(t.max()))


# ----------------------------------------------------------------------------- loss surface over ratios
@dataclass(frozen=True)
class LossSurface:
    """General and domain loss laws per pilot ratio: ``L_G(T;R)`` and ``L_D(T;R)`` on the grid of R."""

    ratios: tuple[float, ...]
    general: tuple[PowerLaw, ...]
    domain: tuple[PowerLaw, ...]

    def constrained_general_loss(self, ratio_index: int, tokens: float, constraint: Constraint = "final") -> float:
        """General loss at T (``"final"``) or its largest value on [first pilot point, T] (``"max"``).

        The power law is monotone in T, so its maximum on an interval is at one of the two ends.
        """
        law = self.general[ratio_index]
        final = float(law(tokens))
        if constraint == "final":
            return final
        if constraint == "max":
            return max(final, float(law(min(law.t_min, tokens))))
        raise CMRError(f"unknown CMR constraint '{constraint}' (choose one of {', '.join(CONSTRAINTS)})")


def _check_ratio(r: float) -> float:
    r = float(r)
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise CMRError(f"mixture ratio {r} is outside [0, 1]: R is the share of domain data in the CPT mixture")
    return r


def fit_ratio_law(ratios: Sequence[float], tokens: Sequence[Sequence[float]], general_losses: Sequence[Sequence[float]],
                  domain_losses: Sequence[Sequence[float]]) -> LossSurface:
    """One :class:`PowerLaw` per ratio for the general loss and one for the domain loss.

    ``tokens[i]``, ``general_losses[i]`` and ``domain_losses[i]`` are the pilot curve of ``ratios[i]``
    (the runs may log at different token counts). The surface is sorted by ratio.
    """
    if not (len(ratios) == len(tokens) == len(general_losses) == len(domain_losses)):
        raise CMRError(f"{len(ratios)} ratios, {len(tokens)} token lists, {len(general_losses)} general and "
                       f"{len(domain_losses)} domain loss lists: one curve of each per ratio is needed")
    if not ratios:
        raise CMRError("no pilot curves: the CMR needs pilot runs at >= 1 mixture ratio")
    rs = [_check_ratio(r) for r in ratios]
    if len(set(rs)) != len(rs):
        dup = next(r for r in rs if rs.count(r) > 1)
        raise CMRError(f"mixture ratio {dup} is given twice: merge its pilot points into one curve")
    order = sorted(range(len(rs)), key=rs.__getitem__)
    general = tuple(fit_power_law(tokens[i], general_losses[i], f"general loss at R={rs[i]}") for i in order)
    domain = tuple(fit_power_law(tokens[i], domain_losses[i], f"domain loss at R={rs[i]}") for i in order)
    return LossSurface(tuple(rs[i] for i in order), general, domain)


# ----------------------------------------------------------------------------- critical ratio
class CriticalRatio(NamedTuple):
    """The CMR at one budget; ``feasible=False`` marks the fallback (smallest general-loss rise)."""

    ratio: float
    feasible: bool


def _check_tolerance(baseline_general_loss: float, epsilon: float) -> None:
    if not math.isfinite(float(baseline_general_loss)):
        raise CMRError(f"baseline general loss L_G(0) is {baseline_general_loss}: measure the model before CPT")
    if math.isnan(float(epsilon)) or epsilon < 0:
        raise CMRError(f"epsilon is {epsilon}: the tolerance on the general-loss rise must be >= 0 (inf = no constraint)")


def critical_ratio(surface: LossSurface, tokens: float, baseline_general_loss: float, epsilon: float,
                   constraint: Constraint = "final") -> CriticalRatio:
    """``max{R in grid : L_G(T;R) <= L_G(0) + eps and L_D(.;R) decreasing}`` (methods.md section 3, step 3).

    With no feasible R, falls back to the ratio of smallest general loss under the same constraint,
    among those whose domain loss decreases if there are any (see the module docstring for why).
    """
    _check_tolerance(baseline_general_loss, epsilon)
    if not (math.isfinite(float(tokens)) and tokens > 0):
        raise CMRError(f"token budget T is {tokens}: it must be finite and > 0")
    if constraint not in CONSTRAINTS:
        raise CMRError(f"unknown CMR constraint '{constraint}' (choose one of {', '.join(CONSTRAINTS)})")
    limit = baseline_general_loss + epsilon
    rises = [surface.constrained_general_loss(i, tokens, constraint) for i in range(len(surface.ratios))]
    learns = [d.decreasing() for d in surface.domain]
    feasible = [r for r, g, ok in zip(surface.ratios, rises, learns) if ok and g <= limit]
    if feasible:
        return CriticalRatio(max(feasible), True)
    pool = [i for i, ok in enumerate(learns) if ok] or list(range(len(surface.ratios)))
    best = min(pool, key=lambda i: (rises[i], surface.ratios[i]))
    return CriticalRatio(surface.ratios[best], False)


# ----------------------------------------------------------------------------- R_CMR(T) law
@dataclass(frozen=True)
class CMRLaw:
    """``R_CMR(T) = beta0 + beta1 * T^s`` (Gu et al. 2024); ``__call__`` is the raw law."""

    beta0: float
    beta1: float
    s: float
    r2: float

    def __call__(self, tokens: float | np.ndarray) -> float | np.ndarray:
        t = np.asarray(tokens, dtype=np.float64)
        value = self.beta0 + np.sign(self.beta1) * np.exp(np.log(abs(self.beta1) + 1e-300) + self.s * np.log(t))
        return float(value) if value.ndim == 0 else value

    def extrapolate(self, t_max: float) -> float:
        """The law at ``t_max``, clipped to [0, 1] because a mixture ratio outside it has no meaning."""
        if not (math.isfinite(float(t_max)) and t_max > 0):
            raise CMRError(f"T_max is {t_max}: it must be finite and > 0")
        return float(min(1.0, max(0.0, self(t_max))))

    def to_dict(self) -> dict[str, float]:
        return {"beta0": self.beta0, "beta1": self.beta1, "s": self.s, "r2": self.r2}


def fit_cmr_law(tokens: Sequence[float], cmrs: Sequence[float]) -> CMRLaw:
    """Least-squares ``R_CMR(T) = beta0 + beta1 * T^s`` over (T, CMR(T)) points (methods.md section 3, step 4).

    Same procedure as :func:`fit_power_law`: a scan over s (either sign) in which the law is linear in
    (beta0, beta1), polished by curve_fit. Constant CMRs give ``beta1 = 0``.
    """
    t, y = _as_curve(tokens, cmrs, "CMR law")
    for r in y:
        _check_ratio(r)
    scale = float(t.max())
    x = t / scale
    b1, s, b0 = _profile_start(x, y, _S_GRID)
    start = [b0, b1, s]

    def law(xx: np.ndarray, beta0: float, beta1: float, ss: float) -> np.ndarray:
        return beta0 + beta1 * xx**ss

    try:
        params, _ = curve_fit(law, x, y, p0=start, bounds=([-np.inf, -np.inf, -10.0], [np.inf, np.inf, 10.0]),
                              method="trf", x_scale="jac", max_nfev=20000)
        if ((law(x, *params) - y) ** 2).sum() <= ((law(x, *start) - y) ** 2).sum():
            b0, b1, s = (float(p) for p in params)
    except (RuntimeError, ValueError):
        pass
    pred = law(x, b0, b1, s)
    raw_b1 = float(np.sign(b1) * np.exp(np.log(abs(b1) + 1e-300) - s * np.log(scale))) if b1 != 0 else 0.0
    return CMRLaw(beta0=float(b0), beta1=raw_b1, s=float(s), r2=_r2(y, pred))


# ----------------------------------------------------------------------------- plan
PilotCurves = Mapping[float, Sequence[tuple[float, float, float]]]


@dataclass(frozen=True)
class CMRPlan:
    """The chosen domain ratio for a budget and everything it was derived from, for the run's log."""

    grid: tuple[float, ...]
    general_fits: tuple[PowerLaw, ...]
    domain_fits: tuple[PowerLaw, ...]
    baseline_general_loss: float
    epsilon: float
    constraint: str
    budget_tokens: float
    ratio: float
    feasible: bool
    extrapolated: bool  # the budget lies beyond the longest pilot run: the fits are extrapolated
    general_loss_at_budget: tuple[float, ...]
    domain_loss_at_budget: tuple[float, ...]
    cmr_by_pilot_tokens: tuple[tuple[float, float, bool], ...] = ()
    cmr_law: CMRLaw | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON record (no NaN/Infinity: an infinite epsilon is written as the string "inf")."""
        per_ratio = {
            _key(r): {"general": g.to_dict(), "domain": d.to_dict(), "general_loss_at_budget": lg,
                      "domain_loss_at_budget": ld}
            for r, g, d, lg, ld in zip(self.grid, self.general_fits, self.domain_fits,
                                       self.general_loss_at_budget, self.domain_loss_at_budget)
        }
        record = {
            "method": "cmr (Gu et al. 2024, arXiv 2407.17467)",
            "grid": list(self.grid), "fits": per_ratio, "baseline_general_loss": self.baseline_general_loss,
            "epsilon": self.epsilon, "constraint": self.constraint, "budget_tokens": self.budget_tokens,
            "ratio": self.ratio, "feasible": self.feasible, "extrapolated": self.extrapolated,
            "cmr_by_pilot_tokens": [{"tokens": t, "cmr": r, "feasible": f} for t, r, f in self.cmr_by_pilot_tokens],
            "cmr_law": self.cmr_law.to_dict() if self.cmr_law else None,
            "cmr_law_at_budget": self.cmr_law.extrapolate(self.budget_tokens) if self.cmr_law else None,
            "notes": list(self.notes),
        }
        return _finite(record)


def _key(r: float) -> str:
    return f"{r:g}"


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by strings so json.dumps(allow_nan=False) accepts the record."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else str(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _split_curves(pilot_curves: PilotCurves) -> tuple[list[float], list[list[float]], list[list[float]], list[list[float]]]:
    ratios, tokens, general, domain = [], [], [], []
    for r, points in pilot_curves.items():
        rows = [tuple(p) for p in points]
        bad = next((i for i, p in enumerate(rows) if len(p) != 3), None)
        if bad is not None:
            raise CMRError(f"pilot curve R={r}: point {bad} is {rows[bad]!r}, expected (tokens, general_loss, domain_loss)")
        ratios.append(r)
        tokens.append([float(p[0]) for p in rows])
        general.append([float(p[1]) for p in rows])
        domain.append([float(p[2]) for p in rows])
    return ratios, tokens, general, domain


def _cmr_law_over_pilots(surface: LossSurface, baseline: float, epsilon: float,
                         constraint: Constraint) -> tuple[tuple[tuple[float, float, bool], ...], CMRLaw | None, list[str]]:
    """CMR(T) at the pilot token counts and the R_CMR(T) law over its feasible points (logged, not used)."""
    ts = sorted({t for law in surface.general for t in (law.t_min, law.t_max)} |
                {float(t) for t in np.geomspace(min(g.t_min for g in surface.general),
                                                max(g.t_max for g in surface.general), 8)})
    points = tuple((t, *critical_ratio(surface, t, baseline, epsilon, constraint)) for t in ts)
    usable = [(t, r) for t, r, ok in points if ok]
    if len({t for t, _ in usable}) < MIN_POINTS:
        return points, None, [f"R_CMR(T) law not fitted: only {len(usable)} pilot token counts have a feasible ratio"]
    law = fit_cmr_law([t for t, _ in usable], [r for _, r in usable])
    return points, law, []


def plan_ratio(pilot_curves: PilotCurves, baseline_general_loss: float, epsilon: float, budget_tokens: float,
               constraint: Constraint = "final") -> CMRPlan:
    """Choose the domain mixture ratio for a CPT run of ``budget_tokens`` from short pilot runs.

    ``pilot_curves`` maps each pilot ratio R to its logged ``(tokens, general_loss, domain_loss)``
    points; ``baseline_general_loss`` is ``L_G(0)``, the general loss of the model before CPT, on
    the same general validation set.
    """
    _check_tolerance(baseline_general_loss, epsilon)
    if not (math.isfinite(float(budget_tokens)) and budget_tokens > 0):
        raise CMRError(f"budget_tokens is {budget_tokens}: it must be finite and > 0")
    if constraint not in CONSTRAINTS:
        raise CMRError(f"unknown CMR constraint '{constraint}' (choose one of {', '.join(CONSTRAINTS)})")
    surface = fit_ratio_law(*_split_curves(pilot_curves))
    choice = critical_ratio(surface, budget_tokens, baseline_general_loss, epsilon, constraint)
    points, law, notes = _cmr_law_over_pilots(surface, baseline_general_loss, epsilon, constraint)
    longest = max(g.t_max for g in surface.general)
    if not choice.feasible:
        notes.append(f"no pilot ratio keeps the general loss within {epsilon} of {baseline_general_loss} at "
                     f"T={budget_tokens:g}; fell back to R={choice.ratio}, the smallest general-loss rise")
    return CMRPlan(
        grid=surface.ratios, general_fits=surface.general, domain_fits=surface.domain,
        baseline_general_loss=float(baseline_general_loss), epsilon=float(epsilon), constraint=constraint,
        budget_tokens=float(budget_tokens), ratio=choice.ratio, feasible=choice.feasible,
        extrapolated=budget_tokens > longest,
        general_loss_at_budget=tuple(float(g(budget_tokens)) for g in surface.general),
        domain_loss_at_budget=tuple(float(d(budget_tokens)) for d in surface.domain),
        cmr_by_pilot_tokens=points, cmr_law=law, notes=tuple(notes),
    )
