"""Add, list and remove the sources ingest reads (``fluxforge source``): a ``data.sources`` entry in params.yaml
and the source's files as a dependency of ``ingest`` in dvc.yaml, always together.

Why both: DVC reruns ingest when a param it lists or a dependency changes. The params entry says how to read
the files; the dependency makes DVC notice when the files themselves change (a folder is hashed whole, an
``s3://`` prefix by its objects' ETags). The dependency is written into dvc.yaml next to the stage's other
deps, so dvc.yaml stays the only description of the graph.

A change is planned first (what was found, the guesses and why, the exact lines each file gets) and written only
when a person accepts it: both files are edited round-trip, so their comments and layout stay as they were.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxforge.config import ParamsError, Source, parse_params, read_params
from fluxforge.config import roundtrip as rt
from fluxforge.data import guess, s3
from fluxforge.data.connectors import SUFFIXES, IngestError, read_files
from fluxforge.data.sources import covers, dependency_path, matching_files
from fluxforge.errors import FluxForgeError
from fluxforge.io import atomic_file
from fluxforge.orchestrate import dag

PARAMS, PIPELINE, STAGE = "params.yaml", "dvc.yaml", "ingest"
TRIAL_FILES, TRIAL_BYTES = 20, 50 << 20  # how much of a source the trial read takes
S3_SAMPLE_BYTES = 1 << 20
FIELDS = ("text_field", "url_field", "timestamp_field")


@dataclass
class Plan:
    """What a ``source`` command would do: what it found, and each file's text before and after."""

    summary: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    edits: dict[Path, tuple[str, str]] = field(default_factory=dict)  # file: (text now, text after)

    def diff(self) -> str:
        """The lines each file gets or loses, as a unified diff."""
        return "".join("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(path), str(path)))
                       for path, (old, new) in self.edits.items() if old != new)

    def write(self) -> None:
        """Write every edited file; refuse if one changed since it was planned (nothing is written then)."""
        for path, (old, _) in self.edits.items():
            if path.read_text() != old:
                raise FluxForgeError(f"{path} changed while this command ran: nothing written; run it again")
        for path, (old, new) in self.edits.items():
            if new != old:
                with atomic_file(path) as fh:
                    fh.write(new)


@dataclass(frozen=True)
class Listed:
    """A source of params.yaml, what DVC should watch for it, and the ingest dependency that watches it (or None)."""

    source: Source
    watched: str
    dependency: str | None


# ----------------------------------------------------------------------------- add
@dataclass(frozen=True)
class Found:
    """What a path holds: its files (an S3 prefix: a local sample of its first object), described, and their format."""

    files: list[Path]
    kind: str  # a folder, a file, a glob, an S3 prefix
    what: str  # "a folder, 6 txt files"
    newest: dt.date  # the newest file's (object's) modification date
    format: guess.Pick


def plan_add(root: Path | str, path: str, domain: str, choices: Mapping[str, Any] | None = None) -> Plan:
    """Inspect ``path`` and plan its ``data.sources`` entry and ingest dependency.

    ``choices`` overrides a guess: ``name``, ``format``, ``text_field``, ``url_field``, ``timestamp_field``
    (None: the files have none), ``id_field``, ``default_timestamp``, ``txt_split``, ``heading_pattern``,
    ``licence``. Problems (nothing readable at ``path``, a name taken, every record rejected) raise a
    :class:`~fluxforge.errors.FluxForgeError` that says what to change.
    """
    root, choices = Path(root), dict(choices or {})
    raw = _current_params(root)
    path = path if path.startswith("s3://") else os.path.normpath(path)
    plan = Plan()
    with tempfile.TemporaryDirectory() as tmp:
        found = _find(root, path, choices.get("format"), Path(tmp))
        plan.summary.append(f"{path}: {found.what}")
        entry, notes = _entry(path, domain, found, choices, raw, plan)
        src = _validated(raw, entry, root)
        _trial_read(src, found.files, plan)
    params_text = (root / PARAMS).read_text()
    doc = rt.Document(params_text)
    written = {k: rt.quoted(v) if k == "default_timestamp" else v for k, v in entry.items()}
    doc.data["data"]["sources"].append(rt.mapping(written, notes))
    plan.edits[root / PARAMS] = (params_text, doc.dump())
    watched = dependency_path(src)
    if not watched.startswith("s3://") and covers(str(root / watched), str(root)):
        raise FluxForgeError(f"{path}: DVC would watch {watched}, which holds the whole repository (and ingest's own "
                             "outputs); put the files in a folder of their own")
    holder = _holder(root, watched, dag.get(STAGE, root).deps)
    pipeline_text = (root / PIPELINE).read_text()
    if holder is None:
        plan.edits[root / PIPELINE] = (pipeline_text, _with_dependency(pipeline_text, watched, src.name))
        plan.summary.append(f"DVC will watch {watched}: a change there reruns ingest and what depends on it")
    else:
        plan.edits[root / PIPELINE] = (pipeline_text, pipeline_text)
        plan.summary.append(f"DVC watches it already: {holder} is a dependency of ingest")
    if watched.startswith("s3://") and os.environ.get("FLUXFORGE_S3_ENDPOINT_URL") and not os.environ.get("AWS_ENDPOINT_URL_S3"):
        plan.warnings.append("DVC finds an S3-compatible store through AWS_ENDPOINT_URL_S3 only: export it (the value "
                             "of FLUXFORGE_S3_ENDPOINT_URL), or `dvc repro` cannot check this source for changes")
    return plan


def _current_params(root: Path) -> dict[str, Any]:
    for name in (PARAMS, PIPELINE):
        if not (root / name).is_file():
            raise FluxForgeError(f"no {name} in {root}: run `fluxforge source` from the repository root")
    return read_params(root / PARAMS)


def _holder(root: Path, watched: str, deps: Sequence[str]) -> str | None:
    """The ingest dependency a change under ``watched`` changes, if any (paths are relative to the repository)."""
    def at(path: str) -> str:
        return path if path.startswith("s3://") else str(root / path)

    return next((d for d in deps if covers(at(d), at(watched))), None)


def _find(root: Path, path: str, fmt: str | None, tmp: Path) -> Found:
    suffixes = SUFFIXES[fmt] if fmt else tuple(s for f in guess.FORMATS for s in SUFFIXES[f])
    if path.startswith("s3://"):
        objects, more = s3.list_objects(path, suffixes)
        if not objects:
            raise IngestError(f"no {' / '.join(suffixes)} objects under {path}")
        pick = guess.Pick(fmt, "--format") if fmt else guess.one_format([o["Key"] for o in objects])
        objects = [o for o in objects if guess.format_of(o["Key"]) == pick.value]
        first = objects[0]["Key"]
        whole = pick.value == "parquet" or first.endswith(".gz")
        sample = s3.download_head(path, first, tmp / Path(first).name, None if whole else S3_SAMPLE_BYTES)
        if not whole:
            _whole_lines(sample)
        what = f"an S3 prefix, {len(objects)}{'+' if more else ''} {pick.value} objects (the first one read as a sample)"
        return Found([sample], "an S3 prefix", what, max(o["LastModified"] for o in objects).date(), pick)
    where = root / path
    files = [f for f in matching_files(str(where), suffixes) if guess.format_of(f.name)]
    if not files:
        raise IngestError(f"{path}: no {' / '.join(suffixes)} files there")
    pick = guess.Pick(fmt, "--format") if fmt else guess.one_format([f.name for f in files])
    files = [f for f in files if guess.format_of(f.name) == pick.value]
    kind = "a folder" if where.is_dir() else "a file" if where.is_file() else "a glob"
    newest = dt.datetime.fromtimestamp(max(f.stat().st_mtime for f in files), dt.UTC).date()
    return Found(files, kind, f"{kind}, {len(files)} {pick.value} file{'s' * (len(files) > 1)}", newest, pick)


def _whole_lines(sample: Path) -> None:
    """Cut a sample of a text object after its last complete line (the head of an object ends mid-line)."""
    data = sample.read_bytes()
    if len(data) >= S3_SAMPLE_BYTES and b"\n" in data:
        sample.write_bytes(data[: data.rindex(b"\n") + 1])


def _entry(path: str, domain: str, found: Found, choices: dict[str, Any], raw: dict[str, Any],
           plan: Plan) -> tuple[dict[str, Any], dict[str, str]]:
    """The params entry (keys in the order written) and a comment per key saying where its value came from."""
    name = choices.get("name") or _name_of(path)
    if name in [s.get("name") for s in raw["data"]["sources"]]:
        raise FluxForgeError(f"a source named '{name}' exists already (fluxforge source list): choose another with --name")
    picks: dict[str, guess.Pick] = {"name": guess.Pick(name, "--name" if choices.get("name") else "from the path"),
                                    "format": found.format, "path": guess.Pick(path, found.kind)}
    if found.format.value == "txt":
        picks["txt_split"] = _chosen(choices, "txt_split") or guess.pick_txt_split(found.files)
        if choices.get("heading_pattern"):
            picks["heading_pattern"] = guess.Pick(choices["heading_pattern"], "--heading-pattern")
    else:
        picks.update(_fields(found.files[0], str(found.format.value), choices))
    picks["domain"] = guess.Pick(domain, "--domain")
    if choices.get("id_field"):
        picks["id_field"] = guess.Pick(choices["id_field"], "--id-field")
    picks["licence"] = _chosen(choices, "licence") or guess.Pick("unknown", "kept in each document's meta: set it with --licence")
    if choices.get("default_timestamp") or picks.get("timestamp_field", guess.Pick(None, "")).value is None:
        picks["default_timestamp"] = _default_timestamp(choices, found.newest, domain, raw, plan)
    for key, pick in picks.items():
        plan.summary.append(f"  {key:17s} {pick.value if pick.value is not None else 'null'}  ({pick.why}"
                            f"{'; ' + pick.seen if pick.seen else ''})")
    entry = {key: pick.value for key, pick in picks.items()}
    return entry, {"name": "added by `fluxforge source add`"} | {k: p.why for k, p in picks.items() if k != "name"}


def _chosen(choices: dict[str, Any], key: str) -> guess.Pick | None:
    """A person's choice for ``key`` (None may be one: "this source has none"), or None if they made none."""
    return guess.Pick(choices[key], f"--{key.replace('_', '-')}") if key in choices else None


def _name_of(path: str) -> str:
    """A source name from its path: the file or folder name without suffixes (a glob: its folder's)."""
    parts = [p for p in re.split(r"[/\\]", path.removeprefix("s3://")) if p and not re.search(r"[*?[]", p)]
    stem = (parts[-1] if parts else "source").split(".")[0]
    return re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9_.-]", "-", stem)) or "source"


def _fields(file: Path, fmt: str, choices: dict[str, Any]) -> dict[str, guess.Pick]:
    """text/url/timestamp fields from the first records of ``file``, unless chosen; a chosen one must exist there."""
    records = guess.first_records(file, fmt)
    if not records:
        raise IngestError(f"{file.name}: no records to guess the fields from (is it empty?)")
    columns = guess.columns_of(records)
    text = _chosen(choices, "text_field") or guess.pick_text(records)
    url = _chosen(choices, "url_field") or guess.pick_url(records, text.value)
    stamp = _chosen(choices, "timestamp_field") or guess.pick_timestamp(records, [text.value, url.value])
    picks = dict(zip(FIELDS, (text, url, stamp), strict=True))
    for key, pick in picks.items():
        if pick.value is not None and pick.value not in columns:
            raise IngestError(f"--{key.replace('_', '-')} {pick.value}: the first records of {file.name} have no field "
                              f"'{pick.value}' (fields: {', '.join(columns)})")
    return picks


def _default_timestamp(choices: dict[str, Any], newest: dt.date, domain: str, raw: dict[str, Any], plan: Plan) -> guess.Pick:
    """The date of documents that have none: the one chosen, else the newest file's (its year picks the slice)."""
    pick = _chosen(choices, "default_timestamp") or guess.Pick(
        newest.isoformat(), "the files have no dates: the newest file's date; the year picks the slice")
    try:
        year = dt.datetime.fromisoformat(str(pick.value)).year
    except ValueError:
        raise FluxForgeError(f"--default-timestamp {pick.value}: not an ISO date, such as 2024-06-01") from None
    years = raw.get("world", {}).get("years", [])
    if years and year not in years:
        plan.warnings.append(f"its documents are dated {year}: they land in slice {domain}-{year}, outside world.years "
                             f"{years}; to train on them with those slices, pass --default-timestamp {years[-1]}-06-01 "
                             f"(params.yaml gets it quoted: \"{years[-1]}-06-01\")")
    return pick


def _validated(raw: dict[str, Any], entry: dict[str, Any], root: Path) -> Source:
    """The entry as a Source, checked together with the rest of params.yaml (unique names, every section)."""
    params = parse_params({**raw, "data": {**raw["data"], "sources": [*raw["data"]["sources"], entry]}},
                          root / PARAMS)
    return params.data.sources[-1]


def _trial_read(src: Source, files: list[Path], plan: Plan) -> None:
    """Read the first files as ingest will (the same reader), so a wrong guess shows now, not in the DAG."""
    chosen, size = [], 0
    for f in files[:TRIAL_FILES]:
        size += f.stat().st_size
        if chosen and size > TRIAL_BYTES:
            break
        chosen.append(f)
    docs, rejected, n = read_files(src, [(f, str(f)) for f in chosen])
    reasons = rejected["reason"].value_counts().to_dict()
    shown = ", ".join(f"{r} {k}" for r, k in reasons.items())
    plan.summary.append(f"trial read of {len(chosen)} file{'s' * (len(chosen) > 1)}: {n} records -> {len(docs)} "
                        f"documents, {len(rejected)} rejected{f' ({shown})' if shown else ''}")
    if n and not len(docs):
        raise IngestError(f"every record of the trial read would be rejected ({shown}): check the fields "
                          "(--text-field, --timestamp-field, --default-timestamp)")
    if len(docs):
        sample = " ".join(docs["text"].iloc[0].split())
        plan.summary.append(f"first document: \"{sample[:100]}{'...' if len(sample) > 100 else ''}\"")


def _with_dependency(text: str, watched: str, name: str) -> str:
    doc = rt.Document(text)
    deps = doc.data["stages"][STAGE]["deps"]
    deps.append(watched)
    deps.yaml_add_eol_comment(f"# source {name} (fluxforge source add)", len(deps) - 1, column=len(watched) + 10)
    return doc.dump()


# ----------------------------------------------------------------------------- remove
def plan_remove(root: Path | str, name: str) -> Plan:
    """Plan removing source ``name`` and, when no other source needs it, its ingest dependency."""
    root = Path(root)
    raw = _current_params(root)
    names = [s.get("name") for s in raw["data"]["sources"]]
    if name not in names:
        raise FluxForgeError(f"no source named '{name}' in {root / PARAMS} (sources: {', '.join(map(str, names))})")
    index = names.index(name)
    rest = [s for i, s in enumerate(raw["data"]["sources"]) if i != index]
    try:
        params = parse_params({**raw, "data": {**raw["data"], "sources": rest}}, root / PARAMS)
    except ParamsError as err:
        raise FluxForgeError(f"cannot remove '{name}': {err}") from None
    plan = Plan()
    params_text = (root / PARAMS).read_text()
    doc = rt.Document(params_text)
    del doc.data["data"]["sources"][index]
    plan.edits[root / PARAMS] = (params_text, doc.dump())
    watched = dependency_path(parse_params(raw, root / PARAMS).data.sources[index])
    still = [dependency_path(s) for s in params.data.sources]
    pipeline_text = (root / PIPELINE).read_text()
    new_pipeline = pipeline_text
    if watched in dag.get(STAGE, root).deps and not any(_holder(root, w, [watched]) for w in still):
        pipe = rt.Document(pipeline_text)
        deps = pipe.data["stages"][STAGE]["deps"]
        del deps[deps.index(watched)]  # del, not list.remove: ruamel moves the comments of the items after it
        new_pipeline = pipe.dump()
        plan.summary.append(f"ingest no longer depends on {watched}")
    plan.edits[root / PIPELINE] = (pipeline_text, new_pipeline)
    plan.summary.insert(0, f"source '{name}' ({raw['data']['sources'][index].get('path')}) leaves data.sources")
    return plan


# ----------------------------------------------------------------------------- list
def list_sources(root: Path | str = ".") -> list[Listed]:
    """Every source of params.yaml with the ingest dependency that makes DVC see its files change (None: none does)."""
    root = Path(root)
    sources = parse_params(_current_params(root), root / PARAMS).data.sources
    deps = dag.get(STAGE, root).deps
    return [Listed(src, dependency_path(src), _holder(root, dependency_path(src), deps)) for src in sources]
