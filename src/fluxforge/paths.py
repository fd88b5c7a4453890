"""Where each stage reads and writes, relative to the repository root (mirrors dvc.yaml)."""

import json
from pathlib import Path, PurePosixPath

from fluxforge.errors import FluxForgeError

DATA = Path("data")
WORLD = DATA / "world"
RAW = DATA / "raw"
FILTERED = DATA / "filtered"
CURATED = DATA / "curated"
TOKENS = DATA / "tokens"
MM_WORLD = DATA / "mm" / "world"  # the image world (shapes, digits, labels, vocabulary)
MM_CURATED = DATA / "mm" / "curated"  # its curated tables and rejected rows
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
CHECKPOINTS = Path("checkpoints")  # scratch for resumable training; not a DVC output


def model_dir(name: str) -> Path:
    """'pretrain', 'continual/<task>', 'student' -> models/<name>."""
    return MODELS / name


def train_metrics_file(name: str) -> Path:
    """metrics/train/<name with / as _>.json: what a training stage reports for model ``name``."""
    return METRICS / "train" / f"{name.replace('/', '_')}.json"


def train_metrics(name: str) -> dict:
    """What the training stage of model ``name`` reported ({} before it has run)."""
    path = train_metrics_file(name)
    return json.loads(path.read_text()) if path.exists() else {}


def model_info(path: Path | str) -> dict:
    """A model directory's lineage record (``training_state/info.json``; {} for a plain HF checkpoint)."""
    file = Path(path) / "training_state" / "info.json"
    return json.loads(file.read_text()) if file.exists() else {}


class UnsafeNameError(FluxForgeError, ValueError):
    """A name read from a file or a store that would leave the folder it is meant to live in."""

    def __init__(self, name: str, root: Path | str, why: str) -> None:
        super().__init__(f"{name!r} cannot be a path under {root}: {why}")
        self.name, self.why = name, why


def escape_reason(name: str) -> str:
    """Why ``name`` would leave any folder it is joined to ("" when it stays inside)."""
    if not name:
        return "it is empty"
    if "\x00" in name:
        return "it holds a NUL byte"
    if name.startswith("/"):
        return "it is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "it climbs out with '..'"
    return ""


def within(root: Path | str, name: str) -> Path:
    """``root / name`` for a name that is data, not a path someone chose: an S3 key, an index entry, a tag.

    Such a name that is absolute, climbs with ``..`` or holds a NUL byte would reach outside ``root`` (or
    confuse the OS), so it is refused before anything touches the disk; so is one that resolves outside
    ``root`` through a symbolic link already there.
    """
    path = Path(root) / name
    why = escape_reason(name)
    if not why and not path.resolve().is_relative_to(Path(root).resolve()):
        why = "it resolves outside through a symbolic link"
    if why:
        raise UnsafeNameError(name, root, why)
    return path
