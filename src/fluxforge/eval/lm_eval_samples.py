"""Diff our per-question results with lm-evaluation-harness's ``--log_samples`` file, question by question.

lm-eval (``lm_eval ... --log_samples --output_path DIR``) writes ``samples_<task>_<date>.jsonl``: per
document its requests (``arguments``: context and continuation per option) and responses
(``filtered_resps``: log-likelihood and is_greedy per option, as strings). ``fluxforge eval --out``
writes the same per question (``context``, ``continuations``, ``loglik``, ``is_greedy``). Questions
are paired by their requests, the context and the list of continuations, so neither side's ids or
order matter and a row one side skipped shows up as unpaired, not as a shifted diff.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fluxforge.errors import FluxForgeError
from fluxforge.eval.scoring import TARGET_DELIMITER, mcq_predictions

TOLERANCE = 1e-4  # nats: what the parity tests hold every option's log-likelihood to


class SamplesFileError(FluxForgeError):
    """An lm-eval samples file that cannot be read; the message names the file and the line."""


def _flag(value: object) -> bool:
    return value if isinstance(value, bool) else str(value) == "True"


def _sample(path: Path, lineno: int, rec: object) -> dict:
    where = f"{path}: line {lineno}"
    if not isinstance(rec, dict) or "arguments" not in rec or "filtered_resps" not in rec:
        raise SamplesFileError(f"{where}: not an lm-eval sample (no 'arguments' / 'filtered_resps'); "
                               "write samples with `lm_eval ... --log_samples --output_path DIR`")
    args = rec["arguments"]
    # the file holds {"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}; simple_evaluate's result lists pairs
    pairs = [(a["arg_0"], a["arg_1"]) for a in args.values()] if isinstance(args, dict) else [tuple(a[:2]) for a in args]
    resps = rec["filtered_resps"]
    try:
        loglik = [float(r[0]) for r in resps]
        greedy = [_flag(r[1]) for r in resps]
    except (TypeError, ValueError, IndexError):
        raise SamplesFileError(f"{where}: 'filtered_resps' are not (log-likelihood, is_greedy) pairs: only "
                               "log-likelihood (multiple_choice) tasks can be compared") from None
    contexts = {c for c, _ in pairs}
    if len(contexts) != 1 or len(pairs) != len(loglik):
        raise SamplesFileError(f"{where}: expected one context and one response per option, found {len(contexts)} "
                               f"context(s), {len(pairs)} request(s), {len(loglik)} response(s)")
    doc = rec.get("doc") if isinstance(rec.get("doc"), dict) else {}
    return {"doc_id": rec.get("doc_id"), "id": doc.get("id"), "context": pairs[0][0], "continuations": [x for _, x in pairs],
            "loglik": loglik, "is_greedy": greedy, "line": lineno}


def read_lm_eval_samples(path: Path | str) -> list[dict]:
    """Every sample of an lm-eval samples file as ``{doc_id, id, context, continuations, loglik, is_greedy, line}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise SamplesFileError(f"{path}: no such lm-eval samples file") from None
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise SamplesFileError(f"{path}: line {lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            out.append(_sample(path, lineno, rec))
    if not out:
        raise SamplesFileError(f"{path}: no samples in the file")
    return out


def _key(row: dict) -> tuple[str, tuple[str, ...]]:
    return row["context"], tuple(row["continuations"])


def _options(continuations: Sequence[str]) -> list[str]:
    """The options behind the continuations (lm-eval's acc_norm divides by the option's length, without the delimiter)."""
    return [c.removeprefix(TARGET_DELIMITER) for c in continuations]


def compare_samples(ours: Sequence[dict], theirs: Sequence[dict], tolerance: float = TOLERANCE) -> dict:
    """Pair our question records with lm-eval's samples and report every difference.

    Returns the counts (ours, theirs, matched), the unpaired ids (ours) and doc_ids (theirs), the
    largest |our log-likelihood - lm-eval's| over all options and where it is, the ids whose ``acc``
    or ``acc_norm`` choice (lm-eval's rules applied to each side's numbers) or is_greedy differ, and
    ``identical``: everything paired, every option within ``tolerance``, no choice differing.
    """
    queue: dict[tuple, deque] = defaultdict(deque)
    for s in theirs:
        queue[_key(s)].append(s)
    ours_only, worst, where = [], 0.0, None
    disagree: dict[str, list] = {"acc_disagree": [], "acc_norm_disagree": [], "greedy_disagree": []}
    matched = 0
    for r in ours:
        if not queue[_key(r)]:
            ours_only.append(r["id"])
            continue
        s = queue[_key(r)].popleft()
        matched += 1
        diff = np.abs(np.array(r["loglik"], dtype=float) - np.array(s["loglik"], dtype=float))
        if float(diff.max()) > worst or where is None:
            worst = max(worst, float(diff.max()))
            k = int(diff.argmax())
            where = {"id": r["id"], "doc_id": s["doc_id"], "option": k, "ours": r["loglik"][k], "theirs": s["loglik"][k]}
        options = _options(r["continuations"])
        a, b = mcq_predictions(r["loglik"], options), mcq_predictions(s["loglik"], options)
        for name, differs in (("acc_disagree", a[0] != b[0]), ("acc_norm_disagree", a[1] != b[1]),
                              ("greedy_disagree", list(map(bool, r["is_greedy"])) != s["is_greedy"])):
            if differs:
                disagree[name].append(r["id"])
    theirs_only = [s["doc_id"] for q in queue.values() for s in q]
    identical = not ours_only and not theirs_only and worst <= tolerance and not any(disagree.values())
    return {"ours": len(ours), "theirs": len(theirs), "matched": matched, "ours_only": ours_only, "theirs_only": theirs_only,
            "max_abs_loglik_diff": worst, "worst": where, **disagree, "tolerance": tolerance, "identical": identical}


def format_comparison(diff: dict, path: Path | str) -> str:
    """A few lines for a person: what was paired, the largest difference, the disagreeing choices."""
    lines = [f"lm-eval samples {path}: {diff['matched']} of {diff['ours']} questions paired with {diff['theirs']} samples"]
    if diff["ours_only"] or diff["theirs_only"]:
        lines.append(f"  unpaired: {len(diff['ours_only'])} of ours (e.g. {diff['ours_only'][:5]}), "
                     f"{len(diff['theirs_only'])} of lm-eval's (doc_id e.g. {diff['theirs_only'][:5]})")
    w = diff["worst"]
    if w is not None:
        lines.append(f"  max |loglik ours - lm-eval| = {diff['max_abs_loglik_diff']:.2e} nats "
                     f"(question {w['id']}, option {w['option']}: {w['ours']:.6f} vs {w['theirs']:.6f})")
    for name, what in (("acc", "acc choices differ"), ("acc_norm", "acc_norm choices differ"), ("greedy", "is_greedy differs")):
        ids = diff[f"{name}_disagree"]
        lines.append(f"  {what} on {len(ids)} question(s)" + (f": {ids[:10]}" if ids else ""))
    verdict = "identical" if diff["identical"] else "DIFFERENT"
    lines.append(f"  {verdict} (tolerance {diff['tolerance']:.0e} nats per option)")
    return "\n".join(lines)
