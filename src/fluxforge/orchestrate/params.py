"""Choose what a refresh runs: a params profile and ``key=value`` overrides, as ``dvc exp run -S`` takes them.

They are written into the repository's ``params.yaml`` (DVC reads params from there, and the
refresh commits it with ``dvc.lock``), then the whole file is validated before any stage runs,
so a typo fails the refresh in a second with the key named, not an hour in.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from fluxforge.config import ParamsError, load_params


def set_dotted(params: dict, override: str) -> str:
    """Apply one ``a.b.c=value`` (value parsed as YAML) to ``params``; return a line saying what changed."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override '{override}': expected KEY=VALUE, e.g. pretrain.steps=200")
    parts = key.strip().split(".")
    node = params
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), Mapping):
            raise ParamsError(f"override '{override}': '{'.'.join(parts[: i + 1])}' is not a section of params.yaml")
        node = node[part]
    value = yaml.safe_load(raw) if raw.strip() else ""
    old = node.get(parts[-1], "<unset>")
    node[parts[-1]] = value
    return f"{key.strip()}: {old!r} -> {value!r}"


def apply_params(root: Path, profile: str | None, overrides: Sequence[str]) -> list[str]:
    """Write the profile and overrides into ``root/params.yaml`` and validate it; return what changed."""
    target = Path(root) / "params.yaml"
    original = target.read_text()
    try:
        return _apply(target, Path(root), profile, overrides)
    except ParamsError:
        target.write_text(original)  # a refused refresh leaves the repository as it found it
        raise


def _apply(target: Path, root: Path, profile: str | None, overrides: Sequence[str]) -> list[str]:
    changed = []
    if profile:
        src = Path(profile) if Path(profile).is_absolute() else root / profile
        if not src.exists():
            raise ParamsError(f"params profile {src} does not exist")
        if src.resolve() != target.resolve():
            shutil.copyfile(src, target)
            changed.append(f"profile {profile}")
    if overrides:
        from dvc.utils.serialize import modify_yaml  # DVC's own round-trip writer: comments and order survive

        with modify_yaml(target) as params:
            changed += [set_dotted(params, o) for o in overrides]
    load_params(target)  # raises ParamsError naming the file and the dotted key
    return changed
