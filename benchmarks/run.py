"""Run the benchmarks (`make bench`: all of them). Each writes its own section of BENCHMARKS.md.

Usage: python benchmarks/run.py [NAME ...] [OPTIONS]   (names: dag_timing, flow_overhead, gpu_handoff, scoring_throughput, distill_variants,
minhash_vs_datasketch, filters_vs_datatrove, image_branch, mm_stream, ray_curation, evidence_chain; default: all; distill_variants needs the outputs of
`make run`; image_branch and mm_stream build their own world in a temporary folder)
Options after the names go to each benchmark run, e.g. `run.py scoring_throughput --threads 1`.
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = (
    "dag_timing",
    "flow_overhead",
    "gpu_handoff",
    "scoring_throughput",
    "distill_variants",
    "minhash_vs_datasketch",
    "filters_vs_datatrove",
    "image_branch",
    "mm_stream",
    "ray_curation",
    "evidence_chain",
)
DEFAULT_OPTIONS = {"ray_curation": ["--write"], "evidence_chain": ["--write"]}  # these print only, unless told to write

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run, of {', '.join(SCRIPTS)} (default: all)")
args, options = ap.parse_known_args()
names = args.names or list(SCRIPTS)
if unknown := sorted(set(names) - set(SCRIPTS)):
    ap.error(f"unknown benchmark(s) {unknown}; choose from {list(SCRIPTS)}")
for name in names:
    print(f"== {name}.py", flush=True)
    subprocess.run([sys.executable, str(HERE / f"{name}.py"), *DEFAULT_OPTIONS.get(name, []), *options], check=True)
