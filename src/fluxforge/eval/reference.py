"""Reference intervals over seeds (benchmarks/evidence.json): is a run's headline number inside seed noise?

benchmarks/evidence.py (the stream) and benchmarks/evidence_chain.py (cyber gain, student, studies) write, per
headline effect over >= 3 seeds, the mean, the spread, the 95 % interval of the mean (``ci95``) and the 95 %
prediction interval of one more run (``pi95``). One run is compared with ``pi95``: that is the range a single run
of the reference's code and profile lands in 19 times out of 20, so outside it is a change worth a look (a
regression, or another scale or CPU than the reference's); the interval of the mean is for comparing means. A
missing or unreadable file is said, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REFERENCE = Path("benchmarks") / "evidence.json"


def reference_file(gate_reference: str | None) -> Path:
    """The intervals a run's numbers are set against: its profile's ``register.gate.reference`` (profiles/full.yaml
    names benchmarks/evidence-full.json), else the default run's. A profile without a gate rule (tiny) is still
    described against the default run's range: the summary says which profile that range is from."""
    return Path(gate_reference) if gate_reference else REFERENCE


@dataclass(frozen=True)
class Reference:
    """One effect's range for a single run: [lo, hi] from ``n`` seeds on ``profile``."""

    effect: str
    lo: float
    hi: float
    n: int | str
    profile: str

    def __str__(self) -> str:
        return f"[{self.lo:+.3f}, {self.hi:+.3f}] (one run's 95 % range over {self.n} seeds, profile {self.profile})"


def reference(effect: str, path: Path = REFERENCE) -> Reference | str:
    """The effect's single-run range, or a sentence saying why there is none."""
    if not path.exists():
        return f"no reference interval ({path} is missing: run benchmarks/evidence.py)"
    try:
        record = json.loads(path.read_text())
        e = record["effects"][effect]
        lo, hi = (float(x) for x in e["pi95"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        return f"no reference interval for {effect} in {path} ({type(err).__name__}: {err})"
    profile = e.get("profile", record.get("profile", "?"))  # an effect measured by another benchmark names its own
    return Reference(effect, lo, hi, e.get("n", "?"), profile)


def against_reference(effect: str, value: float, path: Path = REFERENCE) -> str:
    """``inside/OUTSIDE the reference interval [lo, hi] (...)``, or why there is no comparison."""
    ref = reference(effect, path)
    if isinstance(ref, str):
        return ref
    where = "inside" if ref.lo <= value <= ref.hi else "OUTSIDE"
    return f"{where} the reference interval {ref}"
