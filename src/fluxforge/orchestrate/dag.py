"""The pipeline as dvc.yaml describes it, read through DVC's own API and nothing else.

dvc.yaml is the only description of the DAG: stage names and order, commands, outputs, metrics files and
which stages want a GPU (``meta: {gpu: true}``) are read from it here, never mirrored in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fluxforge.errors import FluxForgeError


class DagError(FluxForgeError):
    """A stage that dvc.yaml does not define, or a dvc.yaml DVC cannot read."""


@dataclass(frozen=True)
class Stage:
    """One stage of dvc.yaml (``foreach`` items expanded, e.g. ``continual@cyber``)."""

    name: str
    cmd: str
    desc: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # cached outputs that are neither metrics nor plots
    metrics: tuple[str, ...]
    plots: tuple[str, ...]
    gpu: bool  # meta: {gpu: true}: a refresh may hand it to a GPU work pool


def read(root: Path | str = ".") -> list[Stage]:
    """Every stage of ``root``/dvc.yaml, in dependency order (a stage after everything it depends on).

    Stages that do not depend on each other keep their order in dvc.yaml, ``foreach`` items in the order
    of their params (continual tasks in training order), so the order is the same on every read.
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            defined = {st: i for i, st in enumerate(repo.index.stages)}
            graph = repo.index.graph.reverse(copy=False)  # edges point from a stage to the stages that depend on it
            ordered = list(nx.lexicographical_topological_sort(graph, key=lambda st: defined.get(st, len(defined))))
    except DvcException as err:
        raise DagError(f"{Path(root) / 'dvc.yaml'}: DVC cannot read the pipeline: {err}") from err
    return [_stage(st) for st in ordered if hasattr(st, "cmd")]


def _stage(st) -> Stage:  # noqa: ANN001 - a dvc.stage.PipelineStage
    meta = st.meta or {}
    cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd)
    return Stage(
        name=st.addressing.rsplit(":", 1)[-1], cmd=cmd, desc=st.desc or "", deps=tuple(d.def_path for d in st.deps),
        outs=tuple(o.def_path for o in st.outs if not (o.metric or o.plot)),
        metrics=tuple(o.def_path for o in st.outs if o.metric), plots=tuple(o.def_path for o in st.outs if o.plot),
        gpu=bool(meta.get("gpu", False)),
    )


def names(root: Path | str = ".") -> list[str]:
    return [s.name for s in read(root)]


def get(name: str, root: Path | str = ".") -> Stage:
    """The stage called ``name``; a name dvc.yaml does not define is a clear error listing the ones it does."""
    stages = {s.name: s for s in read(root)}
    if name not in stages:
        raise DagError(f"no stage '{name}' in {Path(root) / 'dvc.yaml'} (stages: {', '.join(stages)})")
    return stages[name]


def metrics_file(stage: str, filename: str | None = None, root: Path | str = ".") -> Path:
    """The metrics file a stage writes (``filename``, a name or a path as dvc.yaml writes it, picks one of several)."""
    files = [m for m in get(stage, root).metrics if filename is None or filename in (m, Path(m).name)]
    if len(files) != 1:
        raise DagError(f"stage '{stage}' in dvc.yaml has metrics {list(get(stage, root).metrics)}; "
                       f"cannot pick one{f' named {filename}' if filename else ''}")
    return Path(root) / files[0]


def inputs_under(stage: str, folder: Path | str, root: Path | str = ".") -> list[Path]:
    """What ``stage`` reads from under ``folder`` (e.g. the models `evaluate` scores), in the order of its deps in
    dvc.yaml: a dep that is a folder other stages write into (models/continual) stands for what they write there,
    in DAG order (continual tasks in training order), so adding a model to the DAG needs no list in Python."""
    written = [Path(o) for s in read(root) for o in s.outs]
    deps = [Path(d) for d in get(stage, root).deps if Path(d).is_relative_to(folder)]
    return [m for d in deps for m in ([o for o in written if o.is_relative_to(d)] or [d])]


def downstream(names: set[str] | frozenset[str], root: Path | str = ".") -> set[str]:
    """``names`` and every stage that depends on one of them, directly or through others (DVC's own graph)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {st.addressing.rsplit(":", 1)[-1]: st for st in graph.nodes}
        unknown = set(names) - set(by_name)
        if unknown:
            raise DagError(f"no stage {sorted(unknown)} in {Path(root) / 'dvc.yaml'} (stages: {', '.join(by_name)})")
        return {n for name in names
                for n in [name, *(st.addressing.rsplit(":", 1)[-1] for st in nx.ancestors(graph, by_name[name]))]}
