"""``register``: the registered model's name and the promotion gate."""

from __future__ import annotations

from fluxforge.config.base import Fraction, PosFloat, Strict


class GateConfig(Strict):
    """Promotion gate: the challenger becomes champion only if every rule holds."""

    min_cyber_acc_gain: float = 0.05  # over the pretrained model, absolute accuracy
    max_general_ppl_increase: float = 0.25  # relative to the pretrained model
    max_significance_p: Fraction = 0.05  # one-sided binomial test of the cyber gain
    min_student_ppl_ratio: Fraction = 0.0  # teacher_ppl / student_ppl (0 disables)
    min_student_acc_fraction: Fraction = 0.0  # student's above-chance accuracy / teacher's, worst domain (0 disables)
    must_beat_champion: bool = True  # better than the champion on the same questions: by the margin, or the paired test
    champion_margin: PosFloat = 0.02  # mean accuracy over both domains above the champion's, absolute
    champion_max_p: Fraction = 0.05  # or: one-sided paired McNemar test over every question, challenger vs champion
    # the multi-seed reference (benchmarks/evidence.json): the cyber gain must also reach the lower end of the range
    # one run of the reference's profile lands in (its 95 % prediction interval); null: no reference rule
    reference: str | None = None


class RegisterConfig(Strict):
    model_name: str = "fluxforge-lm"
    gate: GateConfig = GateConfig()
