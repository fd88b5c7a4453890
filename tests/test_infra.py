"""infra/: the deployment files parse and say what they claim, checked with the tools' own loaders, offline.

Nothing here needs a Prefect server, a cluster, a Docker engine or a GPU: Prefect's prefect.yaml loader and
job-template renderer, its JSON-schema validation of job variables (the server's own), DeepSpeed's config and
hostfile parsers, `bash -n` and (when kubectl is installed) `kubectl kustomize` all run offline. What these
files do once started on real infrastructure is not checked here; infra/README.md says what was tried.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
POOLS = INFRA / "work-pools"
TEMPLATE_FILE = {"fluxforge-cpu": "process-cpu.json", "fluxforge-gpu": "process-gpu.json"}
K8S_SECRETS = {"fluxforge-postgres", "fluxforge-s3", "fluxforge-prefect"}


def _files(*suffixes: str) -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def _template(name: str) -> dict:
    return json.loads((POOLS / name).read_text())


@pytest.fixture(scope="module")
def deploy_config() -> tuple[dict[str, dict], dict, str]:
    """prefect.yaml through Prefect's own loader (what `prefect deploy --prefect-file` runs), and what it printed."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    console = Console(record=True, width=200)
    configs, actions = _load_deploy_configs_and_actions(INFRA / "prefect.yaml", console=console)
    return {c["name"]: c for c in configs}, actions, console.export_text()


@pytest.mark.parametrize("path", _files(".json", ".yaml", ".yml"), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_json_and_yaml_file_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    else:
        assert [d for d in yaml.safe_load_all(path.read_text()) if d], f"{path} is empty"


# ---------------------------------------------------------------- Prefect: prefect.yaml and work pools

def test_prefect_yaml_loads_with_prefects_loader(deploy_config) -> None:
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.schedules import CronSchedule

    configs, actions, printed = deploy_config
    assert printed.strip() == "", f"Prefect's loader complained (and would skip the file):\n{printed}"
    assert set(configs) == {"nightly", "gpu"}
    nightly, gpu = configs["nightly"], configs["gpu"]
    assert nightly["entrypoint"] == "flows/refresh.py:refresh" and gpu["entrypoint"] == "flows/refresh.py:gpu_stage"
    assert nightly["work_pool"]["name"] == "fluxforge-cpu" and gpu["work_pool"]["name"] == "fluxforge-gpu"
    [schedule] = [_schedule_config_to_deployment_schedule(s)["schedule"] for s in nightly["schedules"]]
    assert schedule == CronSchedule(cron="0 3 * * *", timezone="UTC")
    assert not gpu.get("schedules"), "the GPU deployment runs only when the refresh calls it"
    assert actions["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $FLUXFORGE_ROOT }}"}}]
    assert actions["build"] == [] and actions["push"] == []


def test_entrypoints_resolve_to_the_refresh_flows(deploy_config) -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    configs, _, _ = deploy_config
    expected = {"nightly": ("fluxforge-refresh", {"root", "profile", "overrides", "gpu_deployment", "push", "commit"}),
                "gpu": ("fluxforge-gpu-stage", {"root", "stages", "lock", "params", "commit"})}
    names = {}
    for name, (flow_name, params) in expected.items():
        flow = load_flow_from_entrypoint(configs[name]["entrypoint"])  # relative to the repo root, as `prefect deploy`
        schema = parameter_schema(flow).model_dump()
        assert flow.name == flow_name and set(schema["properties"]) == params
        assert set(configs[name]["parameters"]) <= params
        validate(configs[name]["parameters"], schema, raise_on_error=True, ignore_required=True)  # as deploy does
        names[name] = f"{flow.name}/{name}"
    assert configs["nightly"]["parameters"]["gpu_deployment"] == names["gpu"] == "fluxforge-gpu-stage/gpu"


class _NoClient:
    """Rendering a template without block or variable references never calls the API."""


def _render(cls: type, template: dict, values: dict) -> Any:
    return asyncio.run(cls.from_template_and_values(template, values, client=_NoClient()))


def _k8s_config_class() -> type:
    """prefect-kubernetes' own job configuration: what a Kubernetes worker builds from the pool's template."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    return KubernetesWorkerJobConfiguration


def _defaults(template: dict) -> dict:
    return {k: v["default"] for k, v in template["variables"]["properties"].items() if v.get("default") is not None}


@pytest.mark.parametrize("name", ["process-cpu.json", "process-gpu.json", "kubernetes-gpu.json"])
def test_pool_templates_are_valid_and_render(name: str) -> None:
    from prefect.utilities.schema_tools import is_valid_schema, validate
    from prefect.workers.process import ProcessJobConfiguration

    template = _template(name)
    is_valid_schema(template["variables"], preprocess=False)
    validate(_defaults(template), template["variables"], raise_on_error=True, preprocess=False, ignore_required=True)
    placeholders = set(re.findall(r"\{\{ *(\w+) *\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"]), "a placeholder with no variable is never filled"
    unused = set(template["variables"]["properties"]) - placeholders
    assert not unused, f"variables not referenced in job_configuration are silently ignored: {unused}"
    if name.startswith("process"):
        config = _render(ProcessJobConfiguration, template, {})
        assert config.env["DS_ACCELERATOR"] == ("cpu" if "cpu" in name else "cuda")
    else:
        config = _render(_k8s_config_class(), template, {"image": "registry.example/fluxforge:gpu"})
        assert config.namespace == "fluxforge" and config.job_manifest["kind"] == "Job"


def test_process_pools_route_gpus_by_cuda_visible_devices() -> None:
    from prefect.workers.process import ProcessJobConfiguration

    cpu = _render(ProcessJobConfiguration, _template("process-cpu.json"), {})
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == ""  # a stage left on the CPU pool never takes a GPU
    gpu = _render(ProcessJobConfiguration, _template("process-gpu.json"), {})
    assert gpu.env["CUDA_VISIBLE_DEVICES"] == "0"
    wider = _render(ProcessJobConfiguration, _template("process-gpu.json"), {"env": {"CUDA_VISIBLE_DEVICES": "0,1"}})
    assert wider.env["CUDA_VISIBLE_DEVICES"] == "0,1" and wider.env["DS_ACCELERATOR"] == "cuda"  # merged, not replaced


# prefect-kubernetes' minimal job manifest (_get_base_job_manifest): a template must keep these values.
_K8S_REQUIRED = {("apiVersion",): "batch/v1", ("kind",): "Job",
                 ("spec", "template", "spec", "parallelism"): 1, ("spec", "template", "spec", "completions"): 1,
                 ("spec", "template", "spec", "restartPolicy"): "Never"}


def test_kubernetes_template_requests_gpus_from_a_variable_with_node_selector() -> None:
    from prefect.utilities.schema_tools import ValidationError, validate

    template = _template("kubernetes-gpu.json")
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "prefect-job"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"
    variables = template["variables"]["properties"]
    assert variables["gpu_count"]["type"] == "integer" and variables["gpu_count"]["default"] >= 1
    assert variables["node_selector"]["default"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in variables["tolerations"]["default"]

    config = _render(_k8s_config_class(), template, {"image": "registry.example/fluxforge:gpu", "gpu_count": 4})
    manifest = config.job_manifest
    for path, value in _K8S_REQUIRED.items():
        node = manifest
        for key in path:
            node = node[key]
        assert node == value, path
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"]
    assert {"secretRef": {"name": "fluxforge-s3"}} in pod["containers"][0]["envFrom"]  # credentials by reference
    # No image, no run: the server refuses the flow run with this message (checked against a real server once).
    with pytest.raises(ValidationError, match="'image' is a required property"):
        validate(_defaults(template), template["variables"], raise_on_error=True, preprocess=True, ignore_required=False)


def test_deployment_job_variables_fit_their_pools(deploy_config) -> None:
    from prefect.utilities.schema_tools import validate

    configs, _, _ = deploy_config
    targets = {"nightly": ["process-cpu.json"], "gpu": ["process-gpu.json", "kubernetes-gpu.json"]}
    for name, templates in targets.items():
        for template in templates:
            variables = _template(template)["variables"]
            job_vars = {**_defaults(_template(template)), **configs[name]["work_pool"]["job_variables"]}
            # as the server validates a deployment's job variables (required keys are checked per flow run)
            validate(job_vars, variables, raise_on_error=True, preprocess=True, ignore_required=True,
                     allow_none_with_default=True)


# ---------------------------------------------------------------- DeepSpeed

_DS_CHECK = r"""
import json, sys
from deepspeed.launcher.runner import _parse_hostfile
from deepspeed.runtime.config import DeepSpeedConfig
folder, out = sys.argv[1], {}
for stage in (1, 2, 3):
    try:
        c = DeepSpeedConfig(json.load(open(f"{folder}/zero{stage}.json")))
        out[stage] = {"stage": int(c.zero_optimization_stage), "bf16": c.bfloat16_config.enabled,
                      "clip": c.gradient_clipping, "gather16": c.zero_config.gather_16bit_weights_on_model_save}
    except Exception as exc:
        out[stage] = {"error": f"{type(exc).__name__}: {exc}"}
out["hostfile"] = dict(_parse_hostfile(open(f"{folder}/hostfile.example").read().splitlines()))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def deepspeed_parsed():  # noqa: ANN201
    """DeepSpeed's own config and hostfile parsers, in a child process started with this file's first test.

    Importing DeepSpeed (torch included) takes as long as everything else here, so the two overlap; and
    DS_ACCELERATOR=cpu (no GPU here) stays out of the test process's environment.
    """
    proc = subprocess.Popen([sys.executable, "-c", _DS_CHECK, str(INFRA / "deepspeed")], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    result: dict = {}

    def parsed() -> dict:
        if not result:
            out, err = proc.communicate(timeout=180)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert proc.returncode == 0 and lines, f"DeepSpeed's parsers did not run:\n{err[-3000:]}"
            result.update(json.loads(lines[-1].removeprefix("RESULT ")))
        return result

    yield parsed
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_configs_parse_and_name_their_zero_stage(stage: int, deepspeed_parsed) -> None:
    raw = (INFRA / "deepspeed" / f"zero{stage}.json").read_text()
    assert '"auto"' not in raw, "'auto' is resolved only by the HF Trainer integration"
    config = json.loads(raw)
    assert config["zero_optimization"]["stage"] == stage
    assert "optimizer" not in config and "scheduler" not in config, "FluxForge's loop brings its own"
    # DeepSpeed's parser: unknown ZeRO keys are errors, the batch sizes must agree
    parsed = deepspeed_parsed()[str(stage)]
    assert "error" not in parsed, parsed.get("error")
    assert parsed == {"stage": stage, "bf16": True, "clip": 1.0, "gather16": stage == 3}


def test_hostfile_example_parses_with_deepspeed(deepspeed_parsed) -> None:
    pool = deepspeed_parsed()["hostfile"]
    assert len(pool) >= 2 and all(slots > 0 for slots in pool.values())


def _launch(stage: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"ZERO", "NUM_GPUS", "HOSTFILE", "LAUNCHER", "NNODES",
                                                              "NODE_RANK", "MASTER_ADDR", "DRY_RUN"}}
    return subprocess.run(["bash", str(INFRA / "deepspeed" / "launch.sh"), stage], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_launch_script_builds_the_launcher_commands() -> None:
    zero3 = str(INFRA / "deepspeed" / "zero3.json")
    ds = _launch("continual@cyber", DRY_RUN="1", ZERO="3", NUM_GPUS="4")
    assert ds.returncode == 0, ds.stderr
    assert ds.stdout.split() == [f"FLUXFORGE_DEEPSPEED_CONFIG={zero3}", "deepspeed", "--no_local_rank", "--master_port",
                                 "29500", "--num_gpus", "4", "--module", "stages.continual", "cyber"]
    hosts = _launch("pretrain", DRY_RUN="1", HOSTFILE=str(INFRA / "deepspeed" / "hostfile.example")).stdout
    assert f"--hostfile {INFRA / 'deepspeed' / 'hostfile.example'} --module stages.pretrain" in hosts
    no_ssh = _launch("pretrain", DRY_RUN="1", HOSTFILE="/h", NODE_RANK="1", MASTER_ADDR="node1").stdout
    assert "--master_addr node1 --hostfile /h --no_ssh --node_rank 1 --module stages.pretrain" in no_ssh
    assert _launch("pretrain", DRY_RUN="1", HOSTFILE="/h", NODE_RANK="1").returncode != 0  # no MASTER_ADDR to meet at
    tr = _launch("distill", DRY_RUN="1", LAUNCHER="torchrun", NNODES="2", NODE_RANK="1", MASTER_ADDR="node1").stdout
    assert "torchrun --nproc_per_node gpu --nnodes 2 --node_rank 1 --master_addr node1 --master_port 29500 -m stages.distill" in tr
    assert _launch("evaluate", DRY_RUN="1").returncode == 2  # not a training stage
    assert _launch("pretrain", DRY_RUN="1", ZERO="4").returncode == 2
    # the stages read the config the launcher passes: that is what turns the DeepSpeed engine on in every rank
    from fluxforge.train.engine import CONFIG_ENV

    assert CONFIG_ENV == "FLUXFORGE_DEEPSPEED_CONFIG" and ds.stdout.startswith(f"{CONFIG_ENV}=")


@pytest.mark.parametrize("path", _files(".sh", ".sbatch"), ids=lambda p: str(p.relative_to(INFRA)))
def test_shell_scripts_pass_bash_n(path: Path) -> None:
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert path.read_text().startswith("#!/usr/bin/env bash\n") and os.access(path, os.X_OK)


# ---------------------------------------------------------------- no credentials in any file

_SECRET_KEY = re.compile(r"(?i)[\w.-]*(password|passwd|secret|token|auth[-_]string)(?![a-z])[\w-]*[\"']?[ \t]*[:=][ \t]*"
                         r"(?P<value>[^\s,}\]]*)")
_URL_CREDENTIAL = re.compile(r"[a-z0-9+]+://[^/\s:@]+:(?P<value>[^@\s/]+)@")
_LEAKS = {"AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
          "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
          "40-character secret": re.compile(r"(?<![\w/+])(?=[\w/+]*\d)(?=[\w/+]*[a-z])(?=[\w/+]*[A-Z])[\w/+]{40}(?![\w/+=])")}
_HARMLESS = {"", "...", "testing"}  # empty, elided, moto's documented dummy credential


def _is_reference(value: str) -> bool:
    """${VAR}, $VAR, $(cmd), {{ $VAR }}: filled from the environment or a secret store where the file is used."""
    value = value.strip("\"'`")
    return "$" in value or value.startswith(("{", "[")) or value in _HARMLESS


@pytest.mark.parametrize("path", sorted(p for p in INFRA.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(INFRA)))
def test_no_file_holds_a_secret_value(path: Path) -> None:
    text = path.read_text()
    for line_no, line in enumerate(text.splitlines(), 1):
        for match in (*_SECRET_KEY.finditer(line), *_URL_CREDENTIAL.finditer(line)):
            assert _is_reference(match["value"]), f"{path.name}:{line_no}: literal secret? {match.group(0)!r}"
        for what, pattern in _LEAKS.items():
            assert not pattern.search(line), f"{path.name}:{line_no}: looks like a {what}"


# ---------------------------------------------------------------- compose and Kubernetes structure

def _compose_services() -> tuple[dict, dict]:
    """The stack's own services, and every service it ends up with (included files merged in)."""
    compose_dir = INFRA / "compose"
    stack = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    everything = dict(stack["services"])
    for item in stack["include"]:
        base, *overrides = [compose_dir / p for p in (item["path"] if isinstance(item["path"], list) else [item["path"]])]
        included = yaml.safe_load(base.read_text())["services"]
        for override in overrides:
            assert set(yaml.safe_load(override.read_text())["services"]) <= set(included), f"{override} adds services"
        everything.update(included)
    return stack["services"], everything


def test_compose_stack_is_complete_and_consistent() -> None:
    own, everything = _compose_services()
    assert {"prefect-server", "prefect-db", "worker-cpu", "mlflow", "postgres", "minio"} <= set(everything)
    for name, service in everything.items():
        for dep in service.get("depends_on", {}):
            assert dep in everything, f"{name} depends on unknown service {dep}"
        image = service.get("image")
        assert image or service.get("build"), name
        if image:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image})"
    for name, service in own.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH_STRING", key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), f"{name}.{key} must be ${{VAR}}"
    worker = own["worker-cpu"]
    assert "infra/work-pools/process-cpu.json" in " ".join(worker["command"])
    assert worker["environment"]["FLUXFORGE_ROOT"] == worker["working_dir"]
    assert (ROOT / worker["build"]["dockerfile"]).exists()


def _k8s_docs() -> list[dict]:
    return [d for p in sorted((INFRA / "k8s").glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_k8s_manifests_are_consistent_and_reference_secrets_only() -> None:
    docs = _k8s_docs()
    kustomization = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in (INFRA / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created by hand (infra/README.md), never stored"
    pod_labels = []
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]
            pod_labels.append(labels)
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    if re.search(r"PASSWORD|SECRET|TOKEN|AUTH_STRING", env["name"]) and not env["name"].endswith(
                            ("_SECRET_NAME", "_SECRET_KEY")):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
    for service in (d for d in docs if d["kind"] == "Service"):
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pod_labels), service["metadata"]
    referenced = {n["secretKeyRef"]["name"] for n in _walk(docs) if "secretKeyRef" in n}
    referenced |= {n["secretRef"]["name"] for n in _walk(docs) if "secretRef" in n}
    assert referenced == K8S_SECRETS
    readme = (INFRA / "README.md").read_text()
    for secret in K8S_SECRETS:
        assert f"create secret generic {secret}" in readme, f"README does not say how to create {secret}"


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed: kustomize rendering not checked")
def test_k8s_kustomization_renders() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(INFRA / "k8s")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert all(d["metadata"].get("namespace") == "fluxforge" for d in docs if d["kind"] != "Namespace")
    images = {c["image"] for n in _walk(docs) for c in n.get("containers", [])}
    assert "REGISTRY/fluxforge-mlflow:3.17.2" in images


def test_readme_covers_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file() and p.name != "README.md"):
        rel = path.relative_to(INFRA)
        assert rel.parts[0] in {"mlflow", "k8s"} or rel.name in readme, f"infra/README.md never mentions {rel}"
