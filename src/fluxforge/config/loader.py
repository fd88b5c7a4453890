"""One way from YAML to a typed model: ``params.yaml``, a profile over it, ``-S`` overrides, ``curate --config``.

Whatever goes wrong becomes one error that names the file and the dotted key: YAML that does not parse, a key
written twice in one mapping (PyYAML would silently keep the last), a top level that is not a mapping, and
every validation problem at once.

A profile (``profiles/NAME.yaml``) is an overlay: it holds only what it changes and is merged over
``params.yaml`` with OmegaConf. Mappings merge key by key; lists and scalars replace the base's value; a
mapping tagged ``!replace`` replaces the base's mapping whole (a profile's own ``continual.tasks``, say, rather
than the default tasks plus its own). ``-S a.b=value`` overrides are parsed as OmegaConf dotlists (values are
YAML) and applied last.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fluxforge.config.base import ParamsError
from fluxforge.config.params import Params
from fluxforge.errors import FluxForgeError
from fluxforge.paths import UnsafeNameError, within

M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------- reading YAML
class DuplicateKeyError(yaml.YAMLError):
    """A key written twice in one YAML mapping."""

    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: key {key!r} is written twice in one mapping (first on line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


class Replace(dict):
    """A mapping tagged ``!replace`` in an overlay: it replaces the base's mapping instead of merging into it."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys and knows the overlay tag ``!replace``."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges a mapping on purpose
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: the base class reports it
            line = key_node.start_mark.line + 1
            if key in first:
                raise DuplicateKeyError(key, line, first[key])
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def _construct_replace(loader: StrictLoader, node: yaml.Node) -> Replace:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "!replace tags a mapping (lists are replaced anyway)",
                                                node.start_mark)
    return Replace(loader.construct_mapping(node, deep=True))


StrictLoader.add_constructor("!replace", _construct_replace)


@dataclass(frozen=True)
class FileKind:
    """How the errors about one kind of YAML file are worded, and which error they raise."""

    what: str  # "invalid <what>" heads the validation problems
    noun: str  # "<noun> not found"
    top: str  # what the top level must be
    unknown_key: str  # said of a key the model does not have
    missing_hint: str = ""  # added to "not found"
    error: type[FluxForgeError] = ParamsError
    empty_is_mapping: bool = False  # an empty file is {} (else it is an error: a top level that is not a mapping)


PARAMS_FILE = FileKind(
    what="params", noun="params file", top="a mapping of sections at the top level",
    unknown_key="unknown key (typo? remove it or check the spelling against params.yaml's documented keys)",
    missing_hint=" (run from the repository root)")
PROFILE_FILE = FileKind(
    what="params", noun="params profile", top="a mapping of the params.yaml sections it changes",
    unknown_key=PARAMS_FILE.unknown_key)


def read_yaml(path: Path | str, kind: FileKind = PARAMS_FILE) -> dict[str, Any]:
    """The mapping at the top of a YAML file; any problem is ``kind.error`` naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise kind.error(f"{path}: {kind.noun} not found{kind.missing_hint}")
    try:
        raw = yaml.load(path.read_text(), Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        raise kind.error(f"{path}: {err}; remove one of them") from None
    except yaml.YAMLError as err:
        raise kind.error(f"{path}: not valid YAML: {err}") from None
    if raw is None and kind.empty_is_mapping:
        return {}
    if raw is None:
        raise kind.error(f"{path}: the file is empty (nothing but blanks or comments); expected {kind.top}")
    if not isinstance(raw, dict):
        raise kind.error(f"{path}: expected {kind.top}, got {type(raw).__name__}")
    return raw


def check_dvc_readable(raw: Mapping[str, Any], path: Path | str) -> None:
    """Stop on an unquoted date in a file DVC reads: DVC itself would crash on it before any stage runs.

    YAML reads ``2024-06-01`` as a date, and DVC loads the whole of params.yaml for its templating and stops
    with "Unsupported value of type 'date'". The params models take either form; only params.yaml needs quotes.
    """
    dates = list(_dates(raw))
    if not dates:
        return
    lines = _key_lines(Path(path))
    problems = [f"  - line {lines.get(key, '?')}: {'.'.join(map(str, key))}: write \"{_iso(value)}\", not {_iso(value)}"
                for key, value in dates]
    raise ParamsError(f"{path}: DVC cannot read a date written without quotes (`dvc repro` would stop with "
                      f"\"Unsupported value of type 'date'\"); quote it:\n" + "\n".join(problems))


def _iso(value: dt.date) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _dates(value: Any, key: tuple = ()) -> Iterator[tuple[tuple, dt.date]]:
    if isinstance(value, dt.date):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _dates(v, (*key, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _dates(v, (*key, i))


def _key_lines(path: Path) -> dict[tuple, int]:
    """The line of every value in a YAML file, by its key path (keys as the loader reads them)."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, key: tuple) -> None:
        lines[key] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                walk(v, (*key, int(k.value) if k.tag.endswith(":int") else k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*key, i))

    walk(yaml.compose(path.read_text(), Loader=yaml.SafeLoader), ())
    return lines


# ----------------------------------------------------------------------------- validating
def format_errors(err: ValidationError, where: Path | str, kind: FileKind = PARAMS_FILE, prefix: str = "") -> str:
    """Every problem of ``err`` on its own line, as ``dotted.key: message (got value)``, under the file's name."""
    n = err.error_count()
    lines = [f"{where}: invalid {kind.what} ({n} problem{'s' if n > 1 else ''}):"]
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "<top level>")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = kind.unknown_key
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def validate(model: type[M], raw: Mapping[str, Any], where: Path | str, kind: FileKind = PARAMS_FILE, prefix: str = "") -> M:
    """``raw`` as a ``model``; problems are ``kind.error`` listing each dotted key (``prefix`` + its place in ``raw``)."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise kind.error(format_errors(err, where, kind, prefix)) from None


def parse_params(raw: dict[str, Any], path: Path | str = "params.yaml") -> Params:
    """Validate a params mapping (already read); errors name ``path`` and each dotted key."""
    return validate(Params, raw, path)


# ----------------------------------------------------------------------------- overlays and overrides
def merge_overlay(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base`` (neither is changed): mappings merge, lists and scalars replace, ``!replace`` replaces."""
    from omegaconf import OmegaConf

    cleared = _plain(base)
    plain = _clear_replaced(cleared, overlay)
    merged = OmegaConf.merge(*(OmegaConf.create(d, flags={"allow_objects": True}) for d in (cleared, plain)))
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """A deep copy with plain dicts and lists (OmegaConf takes a dict subclass, such as a YAML round-trip map, for an
    object) and dates as ISO text (merged params are written to a params.yaml, and DVC cannot read dates there)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return copy.copy(value)


def _clear_replaced(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Empty each mapping of ``base`` that ``overlay`` replaces (the key keeps its place); return ``overlay`` untagged."""
    plain: dict[str, Any] = {}
    for key, value in overlay.items():
        if isinstance(value, Replace):
            base[key] = {}
        if isinstance(value, Mapping):
            value = _clear_replaced(base[key] if isinstance(base.get(key), dict) else {}, value)
        plain[key] = _plain(value)
    return plain


def set_dotted(params: MutableMapping[str, Any], override: str) -> str:
    """Apply one ``a.b.c=value`` (an OmegaConf dotlist item: the value is YAML) to ``params``; say what changed.

    Every key before the last must already be a section (a typo there is an error, not a new section).
    """
    from omegaconf import OmegaConf

    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"override '{override}': expected KEY=VALUE, e.g. pretrain.steps=200")
    parts = key.split(".")
    node = params
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), MutableMapping):
            raise ParamsError(f"override '{override}': '{'.'.join(parts[: i + 1])}' is not a section of params.yaml")
        node = node[part]
    value: Any = ""
    if raw.strip():
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]  # type: ignore[index]
    leaf: Any = parts[-1]
    if leaf.isdigit() and int(leaf) in node:  # a table keyed by numbers, e.g. gopher_repetition.top_n_grams.2
        leaf = int(leaf)
    old = node.get(leaf, "<unset>")
    node[leaf] = value
    return f"{key}: {old!r} -> {value!r}"


def profile_path(profile: str | Path, root: Path | str = ".") -> Path:
    """The overlay file of ``profile``: a name (``tiny`` = ``<root>/profiles/tiny.yaml``) or a path (from ``root``)."""
    root = Path(root)
    text = str(profile)
    if "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text) if Path(text).is_absolute() else root / text
    else:
        try:
            path = within(root / "profiles", f"{text}.yaml")  # a name stays a file of profiles/
        except UnsafeNameError as err:
            raise ParamsError(f"params profile {text!r} is not a profile name: {err.why}") from None
    if not path.is_file():
        names = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise ParamsError(f"params profile {path} does not exist (profiles in {root / 'profiles'}: {', '.join(names) or 'none'})")
    return path


def read_params(path: Path | str = "params.yaml", profile: str | Path | None = None,
                overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The params mapping: ``path``, with ``profile`` merged over it (profiles next to ``path``), then ``overrides``.

    An unquoted date in ``path`` is an error here (:func:`check_dvc_readable`): DVC reads that file too.
    """
    path = Path(path)
    raw = read_yaml(path)
    check_dvc_readable(raw, path)
    if profile is not None:
        raw = merge_overlay(raw, read_yaml(profile_path(profile, path.parent), PROFILE_FILE))
    for override in overrides:
        set_dotted(raw, override)
    return raw


def params_source(path: Path | str = "params.yaml", profile: str | Path | None = None, overrides: Sequence[str] = ()) -> str:
    """How errors name merged params: ``params.yaml + profiles/tiny.yaml + -S pretrain.steps=9``."""
    parts = [str(path)]
    if profile is not None:
        parts.append(str(profile_path(profile, Path(path).parent)))
    parts += [f"-S {o}" for o in overrides]
    return " + ".join(parts)


def load_params(path: Path | str = "params.yaml", profile: str | Path | None = None,
                overrides: Sequence[str] = ()) -> Params:
    """Read and validate the whole params file (with ``profile`` and ``overrides`` over it): every stage starts here."""
    return validate(Params, read_params(path, profile, overrides), params_source(path, profile, overrides))


def dump_params(raw: Mapping[str, Any], header: str = "") -> str:
    """YAML text of a params mapping (e.g. a profile merged over params.yaml), keys in their order."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True, width=120)
