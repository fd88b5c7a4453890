"""CMR planner (Gu et al. 2024, methods.md section 3): fits recover known laws, the CMR behaves as defined, clear errors."""

import json
import math

import numpy as np
import pytest

from fluxforge.continual.cmr import (
    CMRError,
    critical_ratio,
    fit_cmr_law,
    fit_power_law,
    fit_ratio_law,
    plan_ratio,
)

T0 = 1e6
PILOT_T = np.geomspace(1e6, 1e8, 8)
GRID = [round(0.05 * i, 2) for i in range(11)]  # 0 .. 0.5, methods.md's example grid
BASELINE = 2.8  # L_G(0): general loss before CPT


def _general(r: float, t: np.ndarray) -> np.ndarray:
    """The general loss drifts by ``rise(R)`` along a T^-0.3 power law: down for R = 0, up as R grows."""
    rise = 0.5 * r - 0.05
    return BASELINE + rise * (1 - (t / T0) ** -0.3)


def _domain(r: float, t: np.ndarray) -> np.ndarray:
    return 3.0 - r + (1 + r) * (t / T0) ** -0.25


def _curves(t: np.ndarray = PILOT_T, grid=GRID, noise: float = 0.0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for r in grid:
        g = _general(r, t) + rng.normal(0, noise, t.size)
        d = _domain(r, t) + rng.normal(0, noise, t.size)
        out[r] = list(zip(t.tolist(), g.tolist(), d.tolist()))
    return out


def _surface(**kw):
    curves = _curves(**kw)
    return fit_ratio_law(list(curves), [[p[0] for p in c] for c in curves.values()],
                         [[p[1] for p in c] for c in curves.values()], [[p[2] for p in c] for c in curves.values()])


@pytest.mark.parametrize("a,alpha,e", [(3.0 * T0**0.3, 0.3, 2.5), (-0.2 * T0**0.3, 0.3, 3.0), (5e3, 0.6, 2.2)])
def test_fitter_recovers_known_power_laws(a, alpha, e):
    y = a * PILOT_T**-alpha + e
    law = fit_power_law(PILOT_T, y)
    assert law.A == pytest.approx(a, rel=1e-6) and law.alpha == pytest.approx(alpha, rel=1e-6)
    assert law.E == pytest.approx(e, rel=1e-6) and law.r2 > 0.99
    np.testing.assert_allclose(law(PILOT_T), y, rtol=1e-9)
    assert law.decreasing() == (a > 0)


def test_fitter_with_noise_stays_close_and_keeps_r2_high():
    a, alpha, e = 3.0 * T0**0.3, 0.3, 2.5
    rng = np.random.default_rng(1)
    t = np.geomspace(1e6, 1e8, 12)
    law = fit_power_law(t, a * t**-alpha + e + rng.normal(0, 2e-3, t.size))
    assert law.r2 > 0.99
    assert law.alpha == pytest.approx(alpha, rel=0.05) and law.E == pytest.approx(e, abs=0.02)
    t_new = 3e8  # extrapolation beyond the pilot range stays within a few noise levels
    assert law(t_new) == pytest.approx(a * t_new**-alpha + e, abs=0.01)


def test_ratio_surface_fits_every_curve_and_sorts_the_grid():
    curves = _curves(noise=1e-3)
    shuffled = dict(reversed(list(curves.items())))
    s = fit_ratio_law(list(shuffled), [[p[0] for p in c] for c in shuffled.values()],
                      [[p[1] for p in c] for c in shuffled.values()], [[p[2] for p in c] for c in shuffled.values()])
    assert s.ratios == tuple(GRID)
    assert all(d.r2 > 0.99 for d in s.domain)
    # the general curves with a visible drift are fitted well; R = 0.1 has rise 0 (flat) and is pure noise
    assert all(g.r2 > 0.99 for r, g in zip(s.ratios, s.general) if abs(0.5 * r - 0.05) >= 0.05)
    i = GRID.index(0.4)
    assert s.general[i](1e9) == pytest.approx(_general(0.4, np.array(1e9)), abs=0.01)


def test_cmr_matches_the_definition_on_known_curves():
    s = _surface()
    t, eps = 1e8, 0.05
    expect = max(r for r in GRID if _general(r, np.array(t)) <= BASELINE + eps)
    assert critical_ratio(s, t, BASELINE, eps) == (expect, True)
    assert 0 < expect < max(GRID)  # the case is not trivial: some ratios are refused


def test_cmr_is_monotone_in_epsilon():
    s = _surface(noise=1e-3)
    cmrs = [critical_ratio(s, 1e9, BASELINE, eps).ratio for eps in np.linspace(0.0, 0.3, 31)]
    assert all(a <= b for a, b in zip(cmrs, cmrs[1:])), cmrs
    assert cmrs[0] < cmrs[-1]


def test_infinite_epsilon_gives_the_largest_ratio_of_the_grid():
    s = _surface(noise=1e-3)
    for constraint in ("final", "max"):
        assert critical_ratio(s, 1e10, BASELINE, math.inf, constraint) == (max(GRID), True)


def test_a_ratio_whose_domain_loss_does_not_fall_is_never_critical():
    curves = _curves()
    curves[0.5] = [(t, BASELINE - 0.1, 3.0 - 0.02 * (t / T0) ** -0.25) for t, _, _ in curves[0.5]]  # domain loss rises
    plan = plan_ratio(curves, BASELINE, math.inf, 1e9)
    assert plan.ratio == 0.45 and plan.feasible


def test_max_constraint_is_stricter_than_final_along_a_stability_gap():
    # R = 0.3's general loss spikes early (3.2 at the first pilot point) and recovers below the baseline
    curves = _curves()
    curves[0.3] = [(t, 2.75 + 0.45 * (t / T0) ** -0.5, _domain(0.3, np.array(t))) for t in PILOT_T]
    curves = {r: c for r, c in curves.items() if r <= 0.3}
    final = plan_ratio(curves, BASELINE, 0.02, 1e8, "final")
    strict = plan_ratio(curves, BASELINE, 0.02, 1e8, "max")
    assert final.ratio == 0.3 and strict.ratio < 0.3 and strict.feasible


def test_no_feasible_ratio_falls_back_to_the_smallest_general_rise_and_says_so():
    curves = {r: [(t, g + 0.5, d) for t, g, d in c] for r, c in _curves().items()}  # every curve 0.5 above L_G(0)
    plan = plan_ratio(curves, BASELINE, 0.01, 1e8)
    assert not plan.feasible and plan.ratio == 0.0  # rise(0) < 0: pure general data hurts least
    assert any("fell back to R=0.0" in n for n in plan.to_dict()["notes"])


def test_cmr_law_recovers_its_parameters_and_reproduces_the_points():
    t = np.geomspace(1e8, 1e10, 6)
    cmr = 0.6 - 2.0 * t**-0.15
    law = fit_cmr_law(t, cmr)
    assert (law.beta0, law.beta1, law.s) == pytest.approx((0.6, -2.0, -0.15), rel=1e-5)
    np.testing.assert_allclose(law(t), cmr, atol=1e-9)
    assert law.r2 > 0.99
    assert law.extrapolate(2e10) == pytest.approx(0.6 - 2.0 * 2e10**-0.15, rel=1e-6)
    rising = fit_cmr_law(t, np.minimum(0.05 + 1e-4 * t**0.3, 1.0))
    assert rising.extrapolate(1e15) == 1.0  # clipped: a ratio above 1 has no meaning


def test_cmr_law_over_the_planner_grid_points():
    # CMR(T) read off the fitted surface at several T, then R_CMR(T) fitted over those grid ratios
    s = _surface()
    ts = np.geomspace(1.5e6, 1e9, 12)
    cmrs = [critical_ratio(s, t, BASELINE, 0.05).ratio for t in ts]
    law = fit_cmr_law(ts, cmrs)
    assert cmrs[0] - cmrs[-1] >= 0.2 and cmrs == sorted(cmrs, reverse=True)  # CMR falls as the general loss drifts
    assert law.r2 > 0.95 and law.s < 0
    np.testing.assert_allclose(law(ts), cmrs, atol=0.05)  # within one grid step at every point


def test_plan_is_json_serialisable_and_records_its_inputs():
    plan = plan_ratio(_curves(noise=1e-3), BASELINE, 0.05, 5e9, "max")
    record = json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    assert record["ratio"] == plan.ratio and record["feasible"] is True and record["extrapolated"] is True
    assert record["grid"] == GRID and record["constraint"] == "max" and record["epsilon"] == 0.05
    assert record["fits"]["0.25"]["general"]["r2"] > 0.99
    assert record["cmr_law"] is not None and len(record["cmr_by_pilot_tokens"]) >= 8
    inf = plan_ratio(_curves(), BASELINE, math.inf, 1e8)
    assert json.loads(json.dumps(inf.to_dict(), allow_nan=False))["epsilon"] == "inf"


@pytest.mark.parametrize("mutate,message", [
    (lambda c: {**c, 0.2: c[0.2][:2]}, r"R=0\.2: the law has 3 parameters and needs >= 3"),
    (lambda c: {**c, 1.5: c[0.2]}, r"mixture ratio 1\.5 is outside \[0, 1\]"),
    (lambda c: {**c, -0.1: c[0.2]}, r"mixture ratio -0\.1 is outside"),
    (lambda c: {**c, 0.2: [(t, float("nan") if i == 3 else g, d) for i, (t, g, d) in enumerate(c[0.2])]},
     r"general loss at R=0\.2: value at T=\S+ is nan"),
    (lambda c: {**c, 0.1: [(t, g, float("inf")) for t, g, d in c[0.1]]}, r"domain loss at R=0\.1: value at T=\S+ is inf"),
    (lambda c: {**c, 0.1: [(t, g) for t, g, d in c[0.1]]}, r"pilot curve R=0\.1: point 0 is .* expected \(tokens"),
    (lambda c: {**c, 0.1: [(0.0, g, d) for t, g, d in c[0.1]]}, r"token counts must be finite and > 0"),
    (lambda c: {}, r"no pilot curves"),
])
def test_bad_pilot_curves_are_refused_with_the_ratio_named(mutate, message):
    with pytest.raises(CMRError, match=message):
        plan_ratio(mutate(_curves()), BASELINE, 0.05, 1e9)


def test_bad_settings_are_refused():
    curves = _curves()
    with pytest.raises(CMRError, match=r"epsilon is -0\.1: .* must be >= 0"):
        plan_ratio(curves, BASELINE, -0.1, 1e9)
    with pytest.raises(CMRError, match="epsilon is nan"):
        plan_ratio(curves, BASELINE, float("nan"), 1e9)
    with pytest.raises(CMRError, match="unknown CMR constraint 'mean'"):
        plan_ratio(curves, BASELINE, 0.1, 1e9, "mean")  # type: ignore[arg-type]
    with pytest.raises(CMRError, match="budget_tokens is 0"):
        plan_ratio(curves, BASELINE, 0.1, 0)
    with pytest.raises(CMRError, match=r"baseline general loss L_G\(0\) is nan"):
        plan_ratio(curves, float("nan"), 0.1, 1e9)
    with pytest.raises(CMRError, match="mixture ratio 0.2 is given twice"):
        fit_ratio_law([0.2, 0.2], [PILOT_T] * 2, [_general(0.2, PILOT_T)] * 2, [_domain(0.2, PILOT_T)] * 2)
    with pytest.raises(CMRError, match="2 ratios, 1 token lists"):
        fit_ratio_law([0.1, 0.2], [PILOT_T], [PILOT_T] * 2, [PILOT_T] * 2)
