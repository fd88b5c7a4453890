"""LR schedules: the property tests of methods.md §2 (infinite / WSD) and §5 test 6 (final LR = peak × ratio).

Sweeps use a seeded ``random.Random`` instead of hypothesis (no extra dependency); each sweep asserts
how many valid configurations it drew, so a too-strict validator cannot make it pass vacuously.
"""

import math
import random

import pytest
import torch
import yaml
from pydantic import ValidationError

from fluxforge.config import InfiniteSchedule, ParamsError, TrainConfig, parse_params
from fluxforge.train.schedule import CONTINUABLE, anneal_start, cooldown_shape, decay_shape, lr_factor

SHAPES = ["sqrt", "linear", "cosine", "exp", "square"]
COOLDOWNS = ["cosine", "inv_sqrt", "linear"]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"slices": ["x"], **kw})


def _inf(steps=1000, **inf) -> TrainConfig:
    return _cfg(steps=steps, schedule="infinite", infinite=InfiniteSchedule(**inf))


def _curve(f, steps):
    return [f(s) for s in range(steps)]


def _non_increasing(vals, tol=1e-12):
    return all(b <= a + tol for a, b in zip(vals, vals[1:]))


def _rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- infinite: the six properties of §2
@pytest.mark.parametrize("cooldown", COOLDOWNS)
def test_infinite_is_continuous_at_every_boundary(cooldown):
    cfg = _inf(steps=10_000, cooldown=cooldown)
    w, cd, const_end = cfg.infinite.boundaries(cfg.steps, cfg.warmup_steps)
    assert (w, cd, const_end) == (500, 3000, 8000)  # Janson defaults 0.05 / 0.3 / 0.8
    f, c = lr_factor(cfg), cfg.infinite.const_ratio
    assert f(w - 1) == pytest.approx(1.0) and f(w) == pytest.approx(1.0)  # warmup reaches η_max, cooldown starts there
    assert f(cd) == pytest.approx(c) and f(cd + 1) == pytest.approx(c)  # cooldown lands on η_const
    assert f(const_end) == pytest.approx(c)  # the anneal starts at η_const
    vals = _curve(f, cfg.steps)
    # no jumps anywhere: the largest step-to-step change is the warmup increment or a smooth slope, never a drop
    # like 1 -> η_const at a badly joined boundary
    assert max(abs(b - a) for a, b in zip(vals, vals[1:])) < 0.01


@pytest.mark.parametrize("cooldown", COOLDOWNS)
def test_infinite_is_non_increasing_after_warmup_and_ends_at_eta_min(cooldown):
    cfg = _inf(steps=2000, cooldown=cooldown)
    w = cfg.infinite.boundaries(cfg.steps, cfg.warmup_steps)[0]
    f = lr_factor(cfg)
    assert _non_increasing(_curve(f, cfg.steps)[w:])
    assert _rel(f(cfg.steps - 1), 0.01) < 1e-9  # η(N_end) = η_min, on the last applied step
    assert f(cfg.steps) == f(cfg.steps + 50) == f(cfg.steps - 1)  # it stays there


def test_inverse_sqrt_cooldown_endpoints():
    for alpha in (0.5, 10.0, 100.0):
        for c in (0.25, 0.5, 0.75):
            assert cooldown_shape("inv_sqrt", 0.0, c, alpha) == pytest.approx(1.0, rel=1e-12)
            assert cooldown_shape("inv_sqrt", 1.0, c, alpha) == pytest.approx(c, rel=1e-12)
            mid = [cooldown_shape("inv_sqrt", p / 100, c, alpha) for p in range(101)]
            assert _non_increasing(mid)
    # through the schedule: η(p=0) = η_max at the warmup end, η(p=1) = η_const at the cooldown end
    cfg = _inf(steps=1000, cooldown="inv_sqrt", const_ratio=0.5)
    w, cd, _ = cfg.infinite.boundaries(cfg.steps, cfg.warmup_steps)
    f = lr_factor(cfg)
    assert f(w) == pytest.approx(1.0) and f(cd) == pytest.approx(0.5)
    # inverse sqrt front-loads the drop: past half the cooldown's change within the first 20% of it
    assert f(w + (cd - w) // 5) < 1 - 0.5 * (1 - 0.5)


def test_a_continuing_task_never_rewarms():
    cfg = _inf(steps=500)
    c = cfg.infinite.const_ratio
    for anneal in (True, False):
        vals = _curve(lr_factor(cfg, continuing=True, anneal=anneal), cfg.steps + 5)
        assert max(vals) <= c + 1e-12
        assert vals[0] == pytest.approx(c)  # starts where the trunk left off, no warmup from 0
        assert _non_increasing(vals)
    assert lr_factor(cfg, continuing=True)(cfg.steps - 1) == pytest.approx(0.01, rel=1e-9)
    assert lr_factor(cfg, continuing=True, anneal=False)(cfg.steps - 1) == pytest.approx(c)


def test_extending_the_constant_phase_does_not_change_the_lr_before_the_anneal():
    # same absolute warmup/cooldown, a run twice as long: identical until the shorter run's anneal starts
    short = _cfg(steps=1000, warmup_steps=50, schedule="infinite",
                 infinite=InfiniteSchedule(warmup_fraction=None, cooldown_end=0.3, constant_end=0.8))
    long = _cfg(steps=2000, warmup_steps=50, schedule="infinite",
                infinite=InfiniteSchedule(warmup_fraction=None, cooldown_end=0.15, constant_end=0.9))
    k = anneal_start(short)
    assert k == 800 and anneal_start(long) == 1800
    fs, fl = lr_factor(short), lr_factor(long)
    assert [fs(s) for s in range(k)] == [fl(s) for s in range(k)]
    assert fs(k + 1) < fl(k + 1)  # and the test could fail: after it they differ
    # the trunk (anneal=False) and the deployable copy agree before the anneal, for both task kinds
    for continuing in (False, True):
        a, t = lr_factor(short, continuing, anneal=True), lr_factor(short, continuing, anneal=False)
        assert [a(s) for s in range(k)] == [t(s) for s in range(k)]
        assert t(short.steps - 1) == short.infinite.const_ratio and a(short.steps - 1) < t(short.steps - 1)


def test_infinite_anneal_is_geometric():
    cfg = _inf(steps=1001, warmup_fraction=0.1, cooldown_end=0.2, constant_end=0.5)
    k, last = anneal_start(cfg), cfg.steps - 1
    f = lr_factor(cfg)
    ratios = [f(s + 1) / f(s) for s in range(k, last)]
    assert max(ratios) - min(ratios) < 1e-12  # constant ratio per step: exponential in the step
    assert f((k + last) // 2) == pytest.approx(math.sqrt(0.25 * 0.01))  # geometric mean at the midpoint


def test_infinite_property_sweep():
    """Random step counts, fractions, ratios and shapes: properties 1-3, 5, 6 hold for every valid draw."""
    rng, valid = random.Random(1234), 0
    for _ in range(300):
        steps = rng.randint(8, 3000)
        cuts = sorted(rng.uniform(0, 0.99) for _ in range(3))
        const = rng.uniform(0.05, 1.0)
        try:
            cfg = _inf(steps=steps, warmup_fraction=cuts[0], cooldown_end=cuts[1], constant_end=cuts[2],
                       const_ratio=const, min_ratio=rng.uniform(1e-4, const), cooldown=rng.choice(COOLDOWNS),
                       inv_sqrt_alpha=rng.uniform(0.1, 50))
        except ValidationError:
            continue  # e.g. two phase ends on the same step of a short run
        valid += 1
        inf = cfg.infinite
        w, cd, k = inf.boundaries(steps, cfg.warmup_steps)
        f = lr_factor(cfg)
        vals = _curve(f, steps)
        if w:
            assert vals[w - 1] == pytest.approx(1.0)
        assert vals[w] == pytest.approx(1.0) and vals[cd] == pytest.approx(inf.const_ratio)
        assert vals[k] == pytest.approx(inf.const_ratio)
        assert _non_increasing(vals[w:]), (steps, inf)
        assert _rel(vals[-1], inf.min_ratio) < 1e-9
        cont = _curve(lr_factor(cfg, continuing=True), steps)
        assert max(cont) <= inf.const_ratio + 1e-12 and _rel(cont[-1], inf.min_ratio) < 1e-9
        trunk = _curve(lr_factor(cfg, anneal=False), steps)
        assert trunk[:k] == vals[:k] and trunk[-1] == pytest.approx(inf.const_ratio)
    assert valid >= 200


# ---------------------------------------------------------------- WSD
@pytest.mark.parametrize("shape", SHAPES)
def test_wsd_shapes_hold_then_decay_monotonically_to_the_final_ratio(shape):
    cfg = _cfg(steps=200, warmup_steps=20, schedule="wsd", decay_fraction=0.25, decay_shape=shape, min_lr_ratio=0.2)
    start = anneal_start(cfg)
    assert start == 150
    f = lr_factor(cfg)
    vals = _curve(f, cfg.steps)
    assert vals[19] == pytest.approx(1.0) and vals[20:start + 1] == [1.0] * (start - 19)  # stable up to the decay
    assert vals[start + 1] < 1.0
    assert _non_increasing(vals[20:]) and min(vals[20:]) >= 0.2 - 1e-12
    assert vals[-1] == pytest.approx(0.2, rel=1e-12)


def test_wsd_decay_shapes_are_ordered_and_hit_both_endpoints():
    for final in (0.0, 0.1, 0.5):
        for shape in SHAPES:
            if shape == "exp" and final == 0:
                continue
            assert decay_shape(shape, 0.0, final) == pytest.approx(1.0)
            assert decay_shape(shape, 1.0, final) == pytest.approx(final, abs=1e-15)
        for i in range(1, 100):
            p = i / 100
            sq, lin, sqrt, cos = (decay_shape(s, p, final) for s in ("square", "linear", "sqrt", "cosine"))
            assert sq > lin > sqrt  # 1-p² > 1-p > 1-√p inside (0, 1): 1-sqrt drops fastest (Hägele et al.'s best)
            assert cos > lin if p < 0.5 else (cos == pytest.approx(lin) if p == 0.5 else cos < lin)
            if final > 0 and p <= 0.5:  # exp is geometric: the factors of two half-way decays multiply
                assert decay_shape("exp", 2 * p, final) == pytest.approx(decay_shape("exp", p, final) ** 2)
    with pytest.raises(ValueError, match="unknown WSD decay shape 'step'"):
        decay_shape("step", 0.5, 0.1)


def test_wsd_default_is_todays_one_minus_sqrt():
    cfg = _cfg(steps=100, warmup_steps=10, schedule="wsd", min_lr_ratio=0.1)  # decay_fraction 0.2 -> decay from 80
    f = lr_factor(cfg)
    assert f(79) == 1.0 and f(80) == 1.0
    assert f(89) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(9 / 19)))
    assert f(99) == pytest.approx(0.1)


def test_wsd_continuing_starts_on_the_stable_peak_and_the_trunk_never_decays():
    cfg = _cfg(steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.3)
    cont = _curve(lr_factor(cfg, continuing=True), 100)
    assert cont[:70] == [1.0] * 70 and cont[-1] == pytest.approx(0.1)  # no re-warm; decays at the end
    assert _curve(lr_factor(cfg, continuing=True, anneal=False), 100) == [1.0] * 100
    trunk = _curve(lr_factor(cfg, anneal=False), 100)
    assert trunk[0] == pytest.approx(0.1) and trunk[9:] == [1.0] * 91


def test_one_step_decays_reach_the_final_ratio():
    # the earlier code left these at the peak: its progress divided by max(1, n-1) and so stayed 0
    wsd = _cfg(steps=10, warmup_steps=2, schedule="wsd", decay_fraction=0.1, min_lr_ratio=0.3)
    assert lr_factor(wsd)(8) == 1.0 and lr_factor(wsd)(9) == pytest.approx(0.3)
    cos = _cfg(steps=10, warmup_steps=9, schedule="cosine", min_lr_ratio=0.3)
    assert lr_factor(cos)(8) == pytest.approx(1.0) and lr_factor(cos)(9) == pytest.approx(0.3)


def test_wsd_sweep():
    rng, valid = random.Random(99), 0
    for _ in range(300):
        steps = rng.randint(2, 2000)
        try:
            cfg = _cfg(steps=steps, warmup_steps=rng.randint(0, steps - 1), schedule="wsd",
                       decay_fraction=rng.random(), decay_shape=rng.choice(SHAPES), min_lr_ratio=rng.uniform(0.001, 1))
        except ValidationError:
            continue  # decay overlapping the warmup
        valid += 1
        vals = _curve(lr_factor(cfg), steps)
        assert _non_increasing(vals[cfg.warmup_steps:]) and max(vals) <= 1.0 + 1e-12
        assert vals[-1] == pytest.approx(cfg.min_lr_ratio, rel=1e-12)
    assert valid >= 150


# ---------------------------------------------------------------- cosine and constant
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.33, 0.5])
def test_cosine_final_lr_is_peak_times_ratio(ratio):
    cfg = _cfg(steps=123, warmup_steps=7, lr=2e-3, min_lr_ratio=ratio)
    f = lr_factor(cfg)
    assert cfg.lr * f(cfg.steps - 1) == pytest.approx(cfg.lr * ratio, rel=1e-12)
    assert _non_increasing(_curve(f, cfg.steps)[7:]) and f(7) == pytest.approx(1.0)


def test_cosine_cannot_be_continued_or_left_unannealed_and_constant_can():
    cfg = _cfg(steps=50, warmup_steps=5)
    for kw in ({"continuing": True}, {"anneal": False}):
        with pytest.raises(ValueError, match="'cosine' decays over the whole run"):
            lr_factor(cfg, **kw)
    assert "cosine" not in CONTINUABLE and {"wsd", "infinite", "constant"} <= CONTINUABLE
    const = _cfg(steps=50, warmup_steps=5, schedule="constant")
    assert _curve(lr_factor(const, continuing=True), 50) == [1.0] * 50
    assert _curve(lr_factor(const, anneal=False), 50) == _curve(lr_factor(const), 50)
    assert anneal_start(cfg) is None and anneal_start(const) is None


# ---------------------------------------------------------------- through a real optimizer
@pytest.mark.parametrize("schedule,continuing", [("cosine", False), ("wsd", True), ("infinite", False),
                                                 ("infinite", True)])
def test_adamw_lambdalr_follows_the_factor(schedule, continuing):
    extra = {} if schedule == "infinite" else {"warmup_steps": 6}
    cfg = _cfg(steps=60, lr=1e-3, schedule=schedule, **extra)
    f = lr_factor(cfg, continuing=continuing)
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([w], lr=cfg.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    applied = []
    for _ in range(cfg.steps):
        applied.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
        sched.step()
    assert applied == pytest.approx([cfg.lr * f(s) for s in range(cfg.steps)], rel=1e-12)
    final = cfg.infinite.min_ratio if schedule == "infinite" else cfg.min_lr_ratio
    assert applied[-1] == pytest.approx(cfg.lr * final, rel=1e-9)
    assert w.detach().abs().max() < 1.0  # the optimizer really stepped with these LRs


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("inf,match", [
    ({"cooldown_end": 0.05}, "warmup_fraction < cooldown_end <= constant_end < 1"),
    ({"cooldown_end": 0.5, "constant_end": 0.4}, "warmup_fraction < cooldown_end <= constant_end < 1"),
    ({"constant_end": 1.0}, "constant_end < 1"),
    ({"const_ratio": 0.0}, "greater than 0"),
    ({"cooldown": "exp"}, "'cosine', 'inv_sqrt' or 'linear'"),
    ({"cooldown_end": "0.3"}, "valid number"),  # strict: a quoted number in a params file is a mistake
    ({"warmup": 0.1}, "Extra inputs"),
])
def test_infinite_config_errors(inf, match):
    with pytest.raises(ValidationError, match=match):
        InfiniteSchedule(**inf)


@pytest.mark.parametrize("kw,match", [
    (dict(schedule="infinite", infinite={"min_ratio": 0.5}), r"final LR ratio \(0.5\) .* at most const_ratio \(0.25\)"),
    (dict(schedule="infinite", steps=4), "with 4 steps the phases end at warmup 0, cooldown 1, constant 3"),
    (dict(schedule="infinite", warmup_steps=10), "warmup_steps is set, but schedule 'infinite' reads infinite.warmup_fraction"),
    (dict(schedule="infinite", min_lr_ratio=0.1), "min_lr_ratio is set, but schedule 'infinite' reads infinite.min_ratio"),
    (dict(schedule="wsd", steps=100, warmup_steps=50, decay_fraction=0.6), "would start at step 40, inside the warmup"),
    (dict(schedule="wsd", decay_shape="exp", min_lr_ratio=0.0), "'exp' .* must be above 0"),
    (dict(schedule="wsd", decay_shape="sqrtt"), "'sqrt', 'linear', 'cosine', 'exp' or 'square'"),
    (dict(schedule="step"), "'cosine', 'wsd', 'infinite', 'constant' or 'rsqrt'"),
])
def test_train_config_schedule_errors(kw, match):
    with pytest.raises(ValidationError, match=match):
        _cfg(**kw)


def test_infinite_can_use_the_top_level_warmup_and_final_ratio():
    cfg = _cfg(steps=100, warmup_steps=10, min_lr_ratio=0.05, schedule="infinite",
               infinite={"warmup_fraction": None, "min_ratio": None})
    f = lr_factor(cfg)
    assert f(9) == pytest.approx(1.0) and f(0) == pytest.approx(0.1)
    assert cfg.infinite_min_ratio == 0.05 and f(99) == pytest.approx(0.05, rel=1e-9)
    # its warmup is a fraction, so the top-level warmup_steps default (30) need not fit a short run
    assert _cfg(steps=20, schedule="infinite").infinite.boundaries(20, 30) == (1, 6, 16)


def test_params_yaml_parses_unchanged_and_switching_a_section_to_infinite_names_it():
    raw = yaml.safe_load(open("params.yaml"))
    params = parse_params(raw)
    assert params.pretrain.schedule == raw["pretrain"]["schedule"]
    assert params.pretrain.decay_shape == "sqrt" and params.pretrain.infinite == InfiniteSchedule()
    raw["pretrain"]["schedule"] = "infinite"  # params.yaml sets warmup_steps and min_lr_ratio explicitly
    with pytest.raises(ParamsError, match=r"pretrain: .*warmup_steps is set, but schedule 'infinite'"):
        parse_params(raw, "params.yaml")
    raw["pretrain"]["infinite"] = {"warmup_fraction": None, "min_ratio": None, "cooldown": "inv_sqrt"}
    assert parse_params(raw).pretrain.infinite.cooldown == "inv_sqrt"


def test_rsqrt_warms_up_decays_as_rsqrt_and_cools_down_linearly_to_the_final_ratio():
    """FoMo-in-Flux's rsqrt (methods.md section 8): warmup, floor + (1 - floor) sqrt(W / s), a linear cooldown at the end."""
    cfg = _cfg(steps=100, warmup_steps=10, schedule="rsqrt", min_lr_ratio=0.1, decay_fraction=0.1)
    f = lr_factor(cfg)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3]) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(40) == pytest.approx(0.1 + 0.9 * 0.5)  # sqrt(10/40) = 1/2
    ref = 0.1 + 0.9 * math.sqrt(10 / 90)  # where the cooldown starts (the last 10 steps)
    assert f(89) == pytest.approx(0.1 + 0.9 * math.sqrt(10 / 89)) and f(90) == pytest.approx(ref)
    assert f(99) == pytest.approx(0.1) and f(95) == pytest.approx(ref + (0.1 - ref) * 5 / 9)
    assert _non_increasing(_curve(f, 100)[10:])
    with pytest.raises(ValidationError, match="warmup_steps must be at least 1"):
        _cfg(steps=100, warmup_steps=0, schedule="rsqrt")


def test_meta_rsqrt_task_peaks_are_non_increasing_from_the_peak():
    """FoMo's rsqrt_with_recovery, autoregressive: task t re-warms to min + sqrt((t+1) W / (t S + W)) (lr - min)."""
    from fluxforge.train.schedule import meta_rsqrt_peak

    peaks = [meta_rsqrt_peak(1e-3, 1e-4, t, steps=100, warmup=10) for t in range(8)]
    assert peaks[0] == 1e-3 and _non_increasing(peaks) and peaks[-1] > 1e-4
    assert peaks[1] == pytest.approx(1e-4 + math.sqrt(20 / 110) * 9e-4)
    assert peaks[7] == pytest.approx(1e-4 + math.sqrt(80 / 710) * 9e-4)
