"""A finished run's headline numbers in a dozen lines: the end of `make run`, of `fluxforge run --profile`, and
`fluxforge summary [--rev]`.

A run in the workspace is read from its files; an experiment (`fluxforge run --profile`, `dvc exp run`) or any
commit is read at its revision through DVC's file system, since the metrics are DVC outputs that live in the cache
under that revision's dvc.lock, not in git. Each number is set against the multi-seed reference its own params name
(``register.gate.reference``), so a `full` experiment is not judged by the default's intervals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from fluxforge.eval.reference import against_reference, reference_file
from fluxforge.orchestrate import dag

Reader = Callable[[str], "str | None"]  # a path relative to the repository -> its text, None when absent


def workspace_reader(root: Path) -> Reader:
    def read(path: str) -> str | None:
        return (root / path).read_text() if (root / path).is_file() else None

    return read


def revision_reader(root: Path, rev: str) -> Reader:
    """Files as they are at ``rev`` (a commit, branch or DVC experiment name), git-tracked or DVC outputs alike."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(root), rev=rev)

    def read(path: str) -> str | None:
        try:
            return fs.read_text(path)
        except FileNotFoundError:
            return None

    return read


def summary_lines(root: Path, read: Reader) -> list[str] | None:
    """The headline lines of the run ``read`` sees, or None when it has no evaluation yet."""
    def metrics(stage: str, filename: str | None = None) -> dict | None:
        text = read(dag.metrics_file(stage, filename, root=root).relative_to(root).as_posix())
        return json.loads(text) if text is not None else None

    e = metrics("evaluate")
    if e is None:
        return None
    params = yaml.safe_load(read("params.yaml") or "{}") or {}
    ref = root / reference_file(params.get("register", {}).get("gate", {}).get("reference"))
    lines = [f"  {name:28s} general ppl {m['general']['ppl']:9.1f} acc {m['general']['acc']:.3f} | "
             f"cyber ppl {m['cyber']['ppl']:9.1f} acc {m['cyber']['acc']:.3f}" for name, m in e["models"].items()]
    t = e["tests"]["cyber"]
    lines += [f"  cyber accuracy {t['acc_pretrain']:.3f} -> {t['acc_final']:.3f} over {t['n']} questions "
              f"(one-sided exact McNemar p = {t['p_final_vs_pretrain']:.1e})",
              f"                 gain {t['gain']:+.3f} {against_reference('cyber_gain', t['gain'], ref)}"]
    if (st := metrics("study")) and "vs_baseline" in st:
        parts = [f"{k} {v['heldout_loss_change']:+.3f}" for k, v in st["vs_baseline"].items()]
        lines.append(f"  studies      : held-out loss vs plain pretraining: {', '.join(parts)} (lower is better)")
        lines += [f"                 {k} {against_reference(f'study_{k}', v['heldout_loss_change'], ref)}"
                  for k, v in st["vs_baseline"].items()]
    if (sm := metrics("stream")) and "general_ppl_rise" in sm:
        rise = sm["general_ppl_rise"]
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in sm["replay"]["ratios"].items())
        no = f", without replay {rise['without_replay']:+.1%}" if "without_replay" in rise else ""
        lines += [f"  stream       : {' -> '.join(sm['tasks'])}; replay {ratios} ({sm['replay']['mode']}); "
                  f"base-data ppl {rise['with_replay']:+.1%}{no}",
                  f"                 with replay {against_reference('stream_rise_planned', rise['with_replay'], ref)}"]
        if promise := sm["replay"].get("promise"):
            lines.append(f"                 planner promise held in {promise['held']} of {promise['planned']} planned tasks")
    lines += _registry_lines(metrics("register"))
    if (m := metrics("mm_eval")) is not None:
        lines += _image_lines(m, metrics("mm_stream", "metrics/mm_stream.json"), ref)
        lines += _registry_lines(metrics("mm_register"))
    return lines


def _registry_lines(r: dict | None) -> list[str]:
    if r is None:
        return []
    state = "promoted to champion" if r["promoted"] else "NOT promoted (champion unchanged)"
    return [f"  registry     : {r['model_name']} v{r['version']} challenger, {state}"]


def _image_lines(m: dict, stream: dict | None, ref: Path) -> list[str]:
    """The image branch: probe accuracies, CLIP zero-shot over chance, the stream's methods, each headline against
    its multi-seed reference."""
    probes = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in m["probes"].items())
    zs, r5 = m["clip"]["zero_shot.heldout"], m["clip"]["retrieval.heldout"]
    lines = [f"  images       : digits probe {probes}; CLIP zero-shot {zs['accuracy']:.3f} ({zs['over_chance']:.1f}x "
             f"chance), R@5 {r5['image_to_text.R5']:.3f} (chance {r5['image_to_text.R5_chance']:.3f})",
             f"                 zero-shot {zs['over_chance']:.1f}x "
             f"{against_reference('mm_clip_zero_shot_x', zs['over_chance'], ref)}"]
    if stream is not None:
        runs = "; ".join(f"{name} {r['metrics']['a_ka']:.3f}/{r['metrics']['a_zs']:.3f}" for name, r in stream["runs"].items())
        lines.append(f"  image stream : {len(stream['tasks'])} tasks, A_KA/A_ZS {runs}; deployed {stream['deploy']}")
        if gap := stream.get("claims", {}).get("replay_beats_no_replay"):
            lines.append(f"                 replay - no replay {gap['gap']:+.3f} "
                         f"{against_reference('mm_stream_replay_gap', gap['gap'], ref)}")
    return lines
