"""Where `make test`'s wall goes: a per-test timeline of each pytest-xdist worker, and what it says.

Why: the suite's wall is set by two workers on two cores. Before reordering modules or adding a worker (both tried,
both slower: BENCHMARKS.md "Test suite time"), look at whether a worker ever waits with nothing to do, whether one
finishes long before the other, and how loaded the machine was meanwhile. junitxml gives each test's duration but
not when it ran; this plugin records both ends of every test on every worker.

Usage, from a clean clone (the plugin rides along through PYTEST_ADDOPTS, which xdist's workers inherit):
    FLUXFORGE_TIMELINE=/tmp/tl PYTHONPATH=benchmarks PYTEST_ADDOPTS="-p suite_timeline" make test
    python benchmarks/suite_timeline.py /tmp/tl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import pytest

ENV = "FLUXFORGE_TIMELINE"


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _out() -> Path | None:
    folder = os.environ.get(ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def pytest_sessionstart(session: pytest.Session) -> None:
    if (out := _out()) is not None:
        (out / f"start-{_worker()}").write_text(str(time.time()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    t0 = time.time()
    yield
    if (out := _out()) is not None:
        row = {"worker": _worker(), "test": item.nodeid, "t0": t0, "t1": time.time(), "load": os.getloadavg()[0]}
        with open(out / f"{_worker()}.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


def summarize(folder: Path, gap: float = 2.0) -> dict:
    """Per worker: when its first test started and its last ended (seconds from the controller's session start),
    the seconds inside tests, the gaps over ``gap`` s between consecutive tests; and the machine's load average."""
    start = float((folder / "start-main").read_text())
    rows = [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines() if line]
    if not rows:
        raise SystemExit(f"{folder}: no test was recorded (was {ENV} set and the plugin loaded with -p suite_timeline?)")
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_worker[row["worker"]].append(row)
    workers = {}
    for worker, tests in sorted(by_worker.items()):
        tests.sort(key=lambda r: r["t0"])
        gaps = [(round(b["t0"] - a["t1"], 1), b["test"]) for a, b in zip(tests, tests[1:]) if b["t0"] - a["t1"] > gap]
        workers[worker] = {"tests": len(tests), "first": round(tests[0]["t0"] - start, 1),
                           "last": round(tests[-1]["t1"] - start, 1),
                           "in_tests": round(sum(r["t1"] - r["t0"] for r in tests), 1), "gaps": gaps}
    lasts = [w["last"] for w in workers.values()]
    loads = [r["load"] for r in rows]
    return {"workers": workers, "tail": round(max(lasts) - min(lasts), 1),
            "load": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help=f"the folder {ENV} named during the run")
    ap.add_argument("--gap", type=float, default=2.0, help="report a worker's idle stretches longer than this (s)")
    args = ap.parse_args()
    s = summarize(args.folder, args.gap)
    for worker, w in s["workers"].items():
        print(f"{worker}: {w['tests']} tests from {w['first']} s to {w['last']} s, {w['in_tests']} s inside tests, "
              f"{len(w['gaps'])} gaps over {args.gap} s" + "".join(f"\n    {g} s before {t}" for g, t in w["gaps"]))
    print(f"the workers finished {s['tail']} s apart; 1-minute load average at test ends: "
          f"min {s['load']['min']:.2f}, median {s['load']['median']:.2f}, max {s['load']['max']:.2f}")


if __name__ == "__main__":
    main()
