"""The shape of the house (ARCHITECTURE.md): imports point down, stages are recipes, dvc.yaml is the only registry.

These fail the moment someone imports upward or sideways, imports another module's private name, adds a
library module outside every layer, grows a stage script into a library, adds a stage that dvc.yaml
does not run, or gives a stage a command that does not run on stages/python.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fluxforge"
MAX_RECIPE_LINES = 40


def _contract_layers() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in cfg["contracts"] if c["type"] == "layers"]
    return [m.strip() for layer in layers for part in layer.split("|") for m in part.split(":")]


def test_import_contracts_hold():
    """`lint-imports` (import-linter) with the contracts in pyproject.toml: layers and independent siblings."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_library_module_sits_in_a_layer():
    """A new top-level module outside every layer would escape the contract unchecked."""
    modules = {f"fluxforge.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    modules |= {f"fluxforge.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert modules - set(_contract_layers()) == set()


def _python_files() -> list[Path]:
    return [p for d in ("src", "stages", "flows") for p in (ROOT / d).rglob("*.py")]


def test_no_private_name_crosses_a_module():
    """``from fluxforge.x import _name`` couples a caller to another module's internals: make it public instead."""
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("fluxforge", "stages", "flows")):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def _stage_scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("script", _stage_scripts(), ids=lambda p: p.stem)
def test_a_stage_script_is_a_short_recipe(script: Path):
    """One ``@stage`` function per script, at most 40 lines: the logic lives in the library."""
    tree = ast.parse(script.read_text())
    recipes = [n for n in tree.body if isinstance(n, ast.FunctionDef)
               and any(isinstance(d, ast.Name) and d.id == "stage" for d in n.decorator_list)]
    assert len(recipes) == 1, f"{script.name}: expected one @stage function"
    lines = recipes[0].end_lineno - recipes[0].lineno + 1
    assert lines <= MAX_RECIPE_LINES, f"{script.name}: main() is {lines} lines"


def test_dvc_yaml_is_the_only_stage_registry():
    """Every stage script is run by a dvc.yaml stage, every dvc.yaml stage runs a stage script; no other table."""
    from fluxforge.orchestrate import dag

    cmds = [s.cmd.split() for s in dag.read(ROOT)]  # "stages/python -m stages.<name> ..."
    assert {c[2] for c in cmds} == {f"stages.{p.stem}" for p in _stage_scripts()}
    # every stage runs on stages/python, which finds the venv: `.venv/bin/dvc repro` works without activating it
    assert {tuple(c[:2]) for c in cmds} == {("stages/python", "-m")}
    assert os.access(ROOT / "stages" / "python", os.X_OK)
    assert not (PACKAGE / "pipeline").exists()
