"""Reference intervals over seeds (benchmarks/evidence.json): is a run's headline number inside seed noise?

benchmarks/evidence.py (the stream) and benchmarks/evidence_chain.py (cyber gain, student, studies) write mean,
spread and a 95 % interval per headline effect over >= 3 seeds. A run's
number inside the interval is consistent with seed noise; outside it is a change worth a look (a regression, or
another scale or CPU than the reference's). A missing or unreadable file is said, never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE = Path("benchmarks") / "evidence.json"


def against_reference(effect: str, value: float, path: Path = REFERENCE) -> str:
    """``inside/outside the reference interval [lo, hi] (n seeds, profile p)``, or why there is no comparison."""
    if not path.exists():
        return f"no reference interval ({path} is missing: run benchmarks/evidence.py)"
    try:
        record = json.loads(path.read_text())
        e = record["effects"][effect]
        lo, hi = (float(x) for x in e["ci95"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        return f"no reference interval for {effect} in {path} ({type(err).__name__}: {err})"
    where = "inside" if lo <= value <= hi else "OUTSIDE"
    profile = e.get("profile", record.get("profile", "?"))  # an effect measured by another benchmark names its own
    return f"{where} the reference interval [{lo:+.3f}, {hi:+.3f}] ({e.get('n', '?')} seeds, profile {profile})"
