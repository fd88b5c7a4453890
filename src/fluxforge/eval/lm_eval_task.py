"""Write our multiple-choice questions as a local lm-evaluation-harness task.

The task asks lm-eval exactly the requests ``scoring.score_mcq`` makes (context = the
question, continuation = " " + option), so a user can check any FluxForge number with
lm-eval itself (``lm_eval --include_path DIR --tasks NAME``); the parity test and the
scoring benchmark use it for that. Writing it needs only YAML, not lm-eval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml


def write_lm_eval_task(questions: Sequence[dict], folder: Path, name: str) -> Path:
    """Write ``questions.jsonl`` and ``<name>.yaml`` into ``folder``; return the folder (lm-eval's include path).

    The first question without an empty option goes first: lm-eval 0.4.13 checks the first document's
    choices when it builds a task and fails on an empty one (``choice[0]``), though it scores empty
    choices anywhere else. The order changes nothing else (``--compare`` pairs questions by their requests).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = next((i for i, q in enumerate(questions) if all(q["options"])), 0)
    ordered = [*questions[first : first + 1], *questions[:first], *questions[first + 1 :]]
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({k: q[k] for k in ("id", "question", "options", "answer")}) + "\n" for q in ordered))
    task = {
        "task": name, "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "hf_cache")},
        "doc_to_text": "question", "doc_to_choice": "options", "doc_to_target": "answer", "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder
