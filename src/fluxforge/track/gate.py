"""The promotion gate: the rules a challenger must pass to become champion, and what it is compared with.

Most rules compare the challenger with the pretrained model it started from, on its own evaluation.
The champion rule compares it with the current champion as the registry holds it: the same
questions (the evaluation-set digest), and better by a stated margin of mean accuracy or by a
paired test over every question. A tie keeps the champion, so a refresh that changed nothing
measurable never moves it. A champion whose numbers cannot be read, or were measured on other
questions, stops the gate: promoting by default would mean trusting a comparison nobody made.

MLflow tags keep full precision (``repr`` of the float); the reasons people read are rounded.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from fluxforge.config import GateConfig

EVAL_KEYS = ("general_acc", "cyber_acc", "general_ppl", "cyber_ppl")
# (challenger's per-question correctness, champion's) -> {"gained", "lost", "p_value"}: fluxforge.eval.stats
# .mcnemar_one_sided, handed in by the register stage (track sits beside eval, not above it)
PairedTest = Callable[[Sequence[bool], Sequence[bool]], Mapping[str, float]]


class ReferenceRange(Protocol):
    """One run's range for an effect (fluxforge.eval.reference.Reference; str() describes it)."""

    lo: float
    hi: float


# the cyber gain's reference range, or the sentence saying why there is none (None: not read); read by the register
# stage from ``gate.reference`` and handed in, as the paired test is
CyberReference = ReferenceRange | str | None


@dataclass(frozen=True)
class Scores:
    """A model as the champion rule sees it: accuracies, which question set, and each answer (domain, id order)."""

    version: str
    eval_set: str
    general_acc: float
    cyber_acc: float
    correct: tuple[bool, ...] | None = None  # None: not recorded (versions registered before it was)

    @property
    def mean_acc(self) -> float:
        return (self.general_acc + self.cyber_acc) / 2


@dataclass(frozen=True)
class Unreadable:
    """A champion whose evaluation tags are missing or malformed: the champion rule cannot be decided."""

    version: str
    why: str


Champion = Scores | Unreadable | None


def headline(ev: Mapping, name: str) -> dict[str, float]:
    m = ev["models"][name]
    return {"general_ppl": m["general"]["ppl"], "cyber_ppl": m["cyber"]["ppl"],
            "general_acc": m["general"]["acc"], "cyber_acc": m["cyber"]["acc"]}


def question_results(per_q: pd.DataFrame, model: str) -> tuple[bool, ...]:
    """``model``'s answers from the evaluate stage's per-question table (model, domain, id, correct), in a fixed order."""
    rows = per_q[per_q["model"] == model].sort_values(["domain", "id"], kind="stable")
    return tuple(bool(c) for c in rows["correct"])


def encode_results(correct: Sequence[bool]) -> str:
    """Per-question correctness as a tag value: one bit per question, base64 (400 questions: 68 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def decode_results(text: str, n: int) -> tuple[bool, ...]:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8))
    if len(bits) < n or bits[n:].any():
        raise ValueError(f"{len(bits)} bits do not encode {n} answers")
    return tuple(bool(b) for b in bits[:n])


def evaluation_tags(ev: Mapping, correct: Sequence[bool]) -> dict[str, str]:
    """What a version records of its evaluation, at full precision, for the gates of later challengers."""
    nums = headline(ev, ev["final"])
    return {**{f"eval.{k}": repr(float(v)) for k, v in nums.items()}, "eval.set_digest": ev.get("eval_set_digest", ""),
            "eval.questions": str(len(correct)), "eval.correct": encode_results(correct)}


def scores_from_tags(version: str, tags: Mapping[str, str]) -> Scores | Unreadable:
    """A registered version's scores, or why they cannot be trusted (never a default that any challenger beats)."""
    try:
        acc = {k: float(tags[f"eval.{k}"]) for k in ("general_acc", "cyber_acc")}
    except KeyError as err:
        return Unreadable(version, f"its evaluation tag {err.args[0]} is missing")
    except ValueError as err:
        return Unreadable(version, f"its evaluation tags do not parse ({err})")
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in acc.values()):
        return Unreadable(version, f"its evaluation tags hold no accuracies ({acc})")
    if not tags.get("eval.set_digest"):
        return Unreadable(version, "it records no evaluation-set digest, so nobody knows which questions it was scored on")
    correct = None
    if "eval.correct" in tags:
        try:
            correct = decode_results(tags["eval.correct"], int(tags.get("eval.questions", "")))
        except ValueError as err:
            return Unreadable(version, f"its per-question results do not parse ({err})")
    return Scores(version, tags["eval.set_digest"], acc["general_acc"], acc["cyber_acc"], correct)


def champion_rule(me: Scores, champion: Champion, cfg: GateConfig, paired_test: PairedTest) -> tuple[bool, str]:
    """Better than the champion by ``champion_margin``, or by the paired test; equal keeps the champion."""
    if champion is None:
        return True, "no champion yet"
    if isinstance(champion, Unreadable):
        return False, (f"champion v{champion.version} cannot be compared: {champion.why}; it stays champion "
                       f"(check it, then promote by hand: fluxforge promote NAME {me.version} --force)")
    if champion.eval_set != me.eval_set:
        return False, (f"champion v{champion.version} was scored on another evaluation set ({champion.eval_set[:12]}, "
                       f"this one {me.eval_set[:12]}): no comparison was made, so it stays champion (re-evaluate it, "
                       f"or promote by hand: fluxforge promote NAME {me.version} --force)")
    gain = me.mean_acc - champion.mean_acc
    ok = gain >= cfg.champion_margin - 1e-9  # float noise only: accuracy moves in steps of 1/questions
    text = (f"mean accuracy {me.mean_acc:.3f} vs champion v{champion.version} {champion.mean_acc:.3f} "
            f"({gain:+.3f}, need >= +{cfg.champion_margin:.3f})")
    if me.correct is not None and champion.correct is not None and len(me.correct) == len(champion.correct):
        test = paired_test(me.correct, champion.correct)
        ok = ok or test["p_value"] <= cfg.champion_max_p
        text += (f" or paired test over {len(me.correct)} questions: {int(test['gained'])} gained, {int(test['lost'])} "
                 f"lost, p = {test['p_value']:.2g} (need <= {cfg.champion_max_p})")
        tie = test["gained"] == test["lost"]
    else:
        text += f"; no paired test (champion v{champion.version} has no per-question results on these questions)"
        tie = gain == 0
    if not ok:
        text += f"; {'equal to' if tie else 'not clearly better than'} the champion, so v{champion.version} stays"
    return ok, text


def reference_rule(gain: float, cfg: GateConfig, ref: CyberReference) -> tuple[bool, str]:
    """The cyber gain against the multi-seed reference: at least the lower end of one run's 95 % range.

    A fixed ``min_cyber_acc_gain`` is one number chosen once; the reference says what the same code and profile
    gave over several seeds, so a gain below its range is a regression seed noise does not explain. A gate told to
    use a reference it cannot read fails: passing would mean a comparison nobody made.
    """
    if ref is None or isinstance(ref, str):
        return False, (f"cyber accuracy gain {gain:+.3f} vs the reference in {cfg.reference}: {ref or 'not read'} "
                       "(fix the file, or set register.gate.reference: null)")
    return gain >= ref.lo, (f"cyber accuracy gain {gain:+.3f} vs the reference interval {ref} "
                            f"(need >= its lower end {ref.lo:+.3f}: below it, seed noise does not explain the gap)")


def gate(ev: Mapping, cfg: GateConfig, me: Scores, champion: Champion, paired_test: PairedTest,
         reference: CyberReference = None) -> tuple[bool, list[str]]:
    """Apply the promotion rules; return (passed, one human-readable line per rule)."""
    final, base = headline(ev, ev["final"]), headline(ev, "pretrain")
    reasons: list[tuple[bool, str]] = []
    gain = final["cyber_acc"] - base["cyber_acc"]
    reasons.append((gain >= cfg.min_cyber_acc_gain,
                    f"cyber accuracy gain {gain:+.3f} over pretrain (need >= {cfg.min_cyber_acc_gain:+.3f})"))
    if cfg.reference:
        reasons.append(reference_rule(gain, cfg, reference))
    p = ev["tests"]["cyber"]["p_final_vs_pretrain"]
    reasons.append((p <= cfg.max_significance_p, f"cyber gain one-sided p = {p:.2e} (need <= {cfg.max_significance_p})"))
    rise = final["general_ppl"] / base["general_ppl"] - 1
    reasons.append((rise <= cfg.max_general_ppl_increase,
                    f"general held-out perplexity {rise:+.1%} vs pretrain (need <= {cfg.max_general_ppl_increase:+.0%})"))
    if cfg.min_student_ppl_ratio > 0 and "student" in ev["models"]:
        ratio = final["general_ppl"] / ev["models"]["student"]["general"]["ppl"]
        reasons.append((ratio >= cfg.min_student_ppl_ratio,
                        f"student keeps {ratio:.2f} of the teacher's perplexity quality (need >= {cfg.min_student_ppl_ratio})"))
    if cfg.min_student_acc_fraction > 0 and ev.get("distill"):
        d = ev["distill"]
        worst = min(d["general_acc_fraction"], d["cyber_acc_fraction"])
        reasons.append((worst >= cfg.min_student_acc_fraction,
                        f"student keeps {worst:.0%} of the teacher's above-chance accuracy in its worst domain "
                        f"(need >= {cfg.min_student_acc_fraction:.0%})"))
    if cfg.must_beat_champion:
        reasons.append(champion_rule(me, champion, cfg, paired_test))
    return all(ok for ok, _ in reasons), [("PASS " if ok else "FAIL ") + text for ok, text in reasons]
