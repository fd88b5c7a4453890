"""Where each stage reads and writes, relative to the repository root (mirrors dvc.yaml)."""

import json
from pathlib import Path

DATA = Path("data")
WORLD = DATA / "world"
RAW = DATA / "raw"
FILTERED = DATA / "filtered"
CURATED = DATA / "curated"
TOKENS = DATA / "tokens"
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
