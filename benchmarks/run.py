"""Run every benchmark (`make bench`). Each writes its own section of BENCHMARKS.md."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script in ("dag_timing.py",):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
