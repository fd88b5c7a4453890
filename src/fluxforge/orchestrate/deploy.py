"""Create the refresh deployments on a Prefect server, from code (``infra/prefect.yaml`` is the same, declared).

Two deployments: ``fluxforge-refresh/nightly`` on the CPU pool with a cron schedule and a
concurrency limit of 1 (a late refresh waits for the running one: two never share one checkout),
and ``fluxforge-gpu-stage/gpu`` on the GPU pool, which the nightly refresh calls for the GPU
stages. Pools that do not exist yet are created with the base job templates in
``infra/work-pools/`` so the GPU request and node selector are part of the pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fluxforge.errors import FluxForgeError

TEMPLATES = {"process": "process-gpu.json", "kubernetes": "kubernetes-gpu.json"}
REFRESH_CONCURRENCY = 1  # as infra/prefect.yaml: refreshes of one checkout run one at a time


class DeployError(FluxForgeError):
    """Deployments could not be created; the message says what to set up first."""


@dataclass
class DeploySpec:
    root: Path
    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    cpu_pool: str = "fluxforge-cpu"
    gpu_pool: str = "fluxforge-gpu"
    gpu_pool_type: str = "process"  # or "kubernetes" (needs prefect-kubernetes on the worker)
    gpu_job_variables: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)  # extra refresh parameters, e.g. {"overrides": [...]}
    gpu_root: Path | None = None  # the GPU machine's checkout of the same commit (default: root, one machine)


def _template(root: Path, pool_type: str, gpu: bool) -> dict | None:
    name = TEMPLATES[pool_type] if gpu else "process-cpu.json"
    path = root / "infra" / "work-pools" / name
    return json.loads(path.read_text()) if path.exists() else None


def ensure_pool(name: str, pool_type: str, template: Mapping | None) -> bool:
    """Create the work pool unless it exists; return whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=dict(template or {})))
            return True


def deploy(spec: DeploySpec) -> dict[str, str]:
    """Create or update both deployments; return {deployment name: id}."""
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    from fluxforge.orchestrate.flows import gpu_stage, refresh

    if not PREFECT_API_URL.value():
        raise DeployError("PREFECT_API_URL is not set: deployments live on a Prefect server. Start one "
                          "(`prefect server start`, or infra/README.md) and export PREFECT_API_URL=http://HOST:4200/api")
    root = spec.root.resolve()
    ensure_pool(spec.cpu_pool, "process", _template(root, "process", gpu=False))
    ensure_pool(spec.gpu_pool, spec.gpu_pool_type, _template(root, spec.gpu_pool_type, gpu=True))
    ids = {}
    gpu_root = (spec.gpu_root or spec.root).resolve()
    gpu = gpu_stage.from_source(source=str(gpu_root), entrypoint="flows/refresh.py:gpu_stage")
    ids["fluxforge-gpu-stage/gpu"] = str(gpu.deploy(
        name="gpu", work_pool_name=spec.gpu_pool, job_variables=spec.gpu_job_variables,
        parameters={"root": str(gpu_root)}, tags=["fluxforge", "gpu"], print_next_steps=False, ignore_warnings=True))
    nightly = refresh.from_source(source=str(root), entrypoint="flows/refresh.py:refresh")
    ids["fluxforge-refresh/nightly"] = str(nightly.deploy(
        name="nightly", work_pool_name=spec.cpu_pool, schedules=[Cron(spec.cron, timezone=spec.timezone)],
        concurrency_limit=REFRESH_CONCURRENCY,
        parameters={"root": str(root), "gpu_deployment": "fluxforge-gpu-stage/gpu", **spec.parameters},
        tags=["fluxforge"], print_next_steps=False, ignore_warnings=True))
    return ids
