"""Prefect entry points (deployments name ``flows/refresh.py:refresh`` and ``flows/refresh.py:gpu_stage``).

The flows live in ``fluxforge.orchestrate.flows``; see there and infra/README.md.

    python -m flows.refresh [ROOT]      # one local refresh, Prefect's temporary server
    fluxforge refresh --help            # the same with a profile, overrides and GPU routing
"""

from __future__ import annotations

import sys

from fluxforge.orchestrate.flows import gpu_stage, refresh

__all__ = ["gpu_stage", "refresh"]

if __name__ == "__main__":
    print(refresh(sys.argv[1] if len(sys.argv) > 1 else "."))
