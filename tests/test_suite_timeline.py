"""benchmarks/suite_timeline.py: the plugin records when each test ran, and the summary finds a worker's idle stretch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_timeline_records_every_test_and_finds_the_idle_stretch_between_two(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from suite_timeline import ENV, summarize
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_a.py").write_text(
        "import time\n"
        "def test_one(): pass\n"
        "def test_two(): time.sleep(0.3)\n"
    )
    folder = tmp_path / "timeline"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # this test may run on a worker
    env.update({ENV: str(folder), "PYTHONPATH": str(ROOT / "benchmarks"), "PYTEST_ADDOPTS": ""})
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "suite_timeline",
                           str(inner)], env=env, capture_output=True, text=True, cwd=inner)
    assert done.returncode == 0, done.stdout + done.stderr

    summary = summarize(folder, gap=0.2)
    (worker,) = summary["workers"].values()
    assert worker["tests"] == 2 and worker["in_tests"] >= 0.3 and worker["gaps"] == []
    assert summary["tail"] == 0

    # a stretch with no test running, longer than the threshold, is named with the test that came after it
    rows = (folder / "main.jsonl").read_text().splitlines()
    late = json.loads(rows[1])
    late["t0"] += 5
    late["t1"] += 5
    (folder / "main.jsonl").write_text(rows[0] + "\n" + json.dumps(late) + "\n")
    (gap, after), = summarize(folder, gap=2)["workers"]["main"]["gaps"]
    assert gap >= 5 and after.endswith("test_a.py::test_two")
