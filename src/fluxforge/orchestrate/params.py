"""Choose what a refresh runs: a params profile and ``key=value`` overrides, as ``dvc exp run -S`` takes them.

They are written into the repository's ``params.yaml`` (DVC reads params from there, and the refresh
commits it with ``dvc.lock``), then the whole file is validated before any stage runs, so a typo fails
the refresh in a second with the key named, not an hour in. The profile is an overlay merged over
``params.yaml`` and the overrides are OmegaConf dotlists, exactly as ``fluxforge run`` and the tests read
them (:mod:`fluxforge.config.loader`); DVC's round-trip writer keeps the file's comments and order.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from fluxforge.config import ParamsError, load_params, merge_overlay, profile_path, read_yaml, set_dotted
from fluxforge.config.loader import PROFILE_FILE

__all__ = ["apply_params", "set_dotted"]


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
    from dvc.utils.serialize import modify_yaml  # DVC's own round-trip writer: comments and order survive

    changed = []
    overlay = profile_path(profile, root) if profile else None
    if overlay and not overlay.resolve().is_relative_to(root.resolve()):  # a flow parameter: it comes from outside
        raise ParamsError(f"profile {profile}: {overlay} is outside the repository {root}; a refresh takes its "
                          "profiles from the repository it commits")
    if (overlay and overlay.resolve() != target.resolve()) or overrides:
        with modify_yaml(target) as params:
            if overlay and overlay.resolve() != target.resolve():
                sync_mapping(params, merge_overlay(params, read_yaml(overlay, PROFILE_FILE)))
                changed.append(f"profile {profile}")
            changed += [set_dotted(params, o) for o in overrides]
    load_params(target)  # raises ParamsError naming the file and the dotted key
    return changed


def sync_mapping(doc: MutableMapping[str, Any], new: Mapping[str, Any]) -> None:
    """Make ``doc`` (a round-trip YAML mapping) equal to ``new``, touching only what differs, in ``new``'s key order.

    Keys that stay keep their comments; a mapping that stays a mapping is synced key by key.
    """
    for key in [k for k in doc if k not in new]:
        del doc[key]
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(doc.get(key), MutableMapping):
            sync_mapping(doc[key], value)
        elif key not in doc or doc[key] != value:
            doc[key] = value
    if list(doc) != list(new):  # a replaced mapping brings its own order (continual tasks run in it)
        for key in new:
            doc.move_to_end(key)  # type: ignore[attr-defined]
