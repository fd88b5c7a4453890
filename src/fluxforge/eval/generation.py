"""Score a :class:`~fluxforge.eval.tasks.Task` by greedy generation plus answer parsing, or by log-likelihood.

Generation follows each benchmark's official script, because published numbers (CTI-MCQ,
CyberMetric, SecEval) are only comparable under the same prompt and parser:

- CTI-MCQ (``xashru/cti-bench``): the file's ``Prompt`` column; the answer is the last line,
  a single letter. :func:`parse_cti` is lenient in the ways listed in its docstring.
- CyberMetric (``CyberMetric_evaluator.py``): ``Question: ...\\nOptions: A) ..., B) ...`` plus the
  instruction to reply ``ANSWER: X``; parsed with ``ANSWER:?\\s*([A-D])``, case-insensitive.
  The official script re-asks up to 5 times on an unparsable reply; greedy decoding would
  repeat itself, so an unparsable reply is simply wrong here.
- SecEval (``XuanwuAI/SecEval`` ``eval/eval.py``, base-model branch): instruction, 5 solved
  examples, then ``Question: {question}{choices joined by " "}`` with newlines flattened, at most
  5 new tokens; ``Answer:`` is removed and the letters are ``sorted(set(re.findall('[A-D]', out)))``.
  Only an exact letter set scores (partial answers get 0). The official examples are 5 fixed
  questions from the benchmark; here they are drawn from the task's *other* questions, seeded
  by the question id, so any SecEval-format file works and a run is reproducible. Per-topic
  accuracy counts a question in each of its topics, as the official script does; the overall
  accuracy is the plain mean over questions. (The official script adds a question's score to
  "Overall" once per topic but divides by the number of questions, which inflates it by up to
  the mean topics per question, about 1.9 by the README's counts; that line is not followed.)

A base model continues text rather than answering a chat turn, so every generation prompt
ends with a newline where the reply would start (the CTI and CyberMetric prompts are
otherwise verbatim; SecEval's already ends so).

The generation scorer takes any ``generate(prompts) -> outputs`` callable: :func:`hf_generator`
wraps an HF model (batched, left-padded, greedy), and tests pass plain functions.

Log-likelihood scoring (lm-evaluation-harness 0.4.13's requests and metrics, via
:func:`fluxforge.eval.scoring.score_mcq`) is for single-answer tasks: ``acc``/``acc_norm`` rank the
option texts after ``Question: ...\\nAnswer:`` (:func:`loglik_requests`: exactly what lm-eval
scores for a task written with :func:`fluxforge.eval.lm_eval_task.write_lm_eval_task`);
``acc_letter`` ranks the letters after a prompt that lists the options. For SecEval the letters
of all 15 non-empty subsets are ranked, so a multi-answer question is right only if its exact set
is the most likely. Each question's record holds what a row-by-row diff with lm-eval's
``--log_samples`` output needs (context, continuations, per-option log-likelihoods, is_greedy,
predictions; :mod:`fluxforge.eval.lm_eval_samples` does the diff).

Generation encodes a prompt as lm-eval's ``HFLM`` does (the tokenizer's own special tokens,
``add_bos_token``; see :mod:`fluxforge.eval.scoring`), so both methods see the same prefix.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from fluxforge.eval.scoring import TARGET_DELIMITER, encode, lm_eval_tokenizer, resolve_max_length, score_mcq
from fluxforge.eval.tasks import LETTERS, Question, Task

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str]], list[str]]

SECEVAL_INSTRUCTION = ("Below are multiple-choice questions concerning cybersecurity. "
                       "Please select the correct answers and respond with the letters ABCD only.")
CYBERMETRIC_PROMPT = ("Question: {question}\nOptions: {options}\n\n"
                      "Choose the correct answer (A, B, C, or D) only. Always return in this format: 'ANSWER: X' ")
# new-token budgets: SecEval's is official; the others leave room for "ANSWER: X" or a letter and a line break
MAX_NEW_TOKENS = {"cti-mcq": 16, "cybermetric": 16, "seceval": 5, "native": 5}
SUBSETS = tuple("".join(c) for r in range(1, 5) for c in itertools.combinations(LETTERS, r))  # "A" .. "ABCD", 15 of them

_CYBERMETRIC_RE = re.compile(r"ANSWER:?\s*([A-D])", re.IGNORECASE)
_CTI_LEAD = re.compile(r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answer|option)(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE)
_DECOR = "*_`#'\"()[]{}.:;, \t"


# ---------------------------------------------------------------------------------------------- parsers
def parse_cybermetric(output: str) -> str | None:
    """The official extractor: first ``ANSWER: X`` (any case, colon optional), upper-cased."""
    if not output.strip():
        return None
    m = _CYBERMETRIC_RE.search(output)
    return m.group(1).upper() if m else None


def parse_seceval(output: str) -> str:
    """The official parser: drop ``Answer:``, then the sorted set of capital letters A-D anywhere in the reply."""
    output = output.replace("Answer:", "")
    return "".join(sorted(set(re.findall(r"[A-D]", output))))


def _cti_letter(line: str) -> str | None:
    s = _CTI_LEAD.sub("", line.strip().strip(_DECOR), count=1).strip(_DECOR)
    return s.upper() if len(s) == 1 and s.upper() in LETTERS else None


def parse_cti(output: str) -> str | None:
    """The letter on the last line that holds only a letter.

    Official rule: the reply's last line is the answer, compared after ``upper()``. Lenient in
    three ways, so a format slip is not scored as a wrong fact: (1) whitespace, markdown and
    brackets/punctuation around the letter are ignored (``**B**``, ``(b)``, ``B.``); (2) a lead-in
    such as ``Answer:``, ``Option`` or ``The correct answer is`` is ignored; (3) when the last
    non-empty line is not a letter, earlier lines are tried from the end, which covers a base
    model that answers and then keeps writing. Otherwise None (scored wrong).
    """
    for line in reversed(output.splitlines()):
        if line.strip() and (letter := _cti_letter(line)):
            return letter
    return None


def parse_native(output: str) -> str | None:
    """The world's questions are not an official benchmark: the reply's first letter token, any case."""
    m = re.match(r"^[\s*_`(\[]*([A-Da-d])\b", output)
    return m.group(1).upper() if m else None


PARSERS: dict[str, Callable[[str], str | None]] = {
    "cti-mcq": parse_cti, "cybermetric": parse_cybermetric, "seceval": parse_seceval, "native": parse_native,
}


# ---------------------------------------------------------------------------------------------- prompts
def listed_prompt(q: Question) -> str:
    """``Question: ...`` with the options listed as ``A. ...`` and an ``Answer:`` cue (letter log-likelihood, native generation)."""
    opts = "\n".join(f"{x}. {o}" for x, o in zip(q.letters, q.options))
    return f"Question: {q.question}\n{opts}\nAnswer:"


def _seceval_block(q: Question) -> str:
    choices = q.choices or tuple(f"{x}: {o}" for x, o in zip(q.letters, q.options))
    # verbatim from eval.py: no separator between the question and the first choice
    return ("Question: " + q.question + " ".join(choices)).replace("\n", " ")


def seceval_shots(task: Task, q: Question, k: int) -> list[Question]:
    """``k`` other questions of the task, chosen by a generator seeded with the question id (stable across runs and --limit)."""
    pool = [o for o in task.questions if o.id != q.id]
    return random.Random(f"seceval-shots:{q.id}").sample(pool, min(k, len(pool)))


def build_prompt(task: Task, q: Question, shots: int = 5) -> str:
    if task.format == "cti-mcq":
        return (q.prompt or "").rstrip() + "\n"
    if task.format == "cybermetric":
        options = ", ".join(f"{x}) {o}" for x, o in zip(q.letters, q.options))
        return CYBERMETRIC_PROMPT.format(question=q.question, options=options).rstrip() + "\n"
    if task.format == "seceval":
        examples = "".join(f"{_seceval_block(s)}\nAnswer: {s.answer}\n" for s in seceval_shots(task, q, shots))
        return SECEVAL_INSTRUCTION + "\n" + examples + _seceval_block(q) + "\n"
    return listed_prompt(q)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class TaskResult:
    """Accuracy overall and per topic, one record per question, and the rows of the file that were skipped."""

    task: str
    format: str
    method: str
    n: int
    metrics: dict[str, float]
    per_topic: dict[str, dict[str, float]] = field(default_factory=dict)
    questions: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip_reasons(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped))

    def to_dict(self) -> dict:
        return {"task": self.task, "format": self.format, "method": self.method, "n": self.n, "n_scored": self.n,
                "n_skipped": len(self.skipped), "skip_reasons": self.skip_reasons(), "skipped": self.skipped,
                "metrics": self.metrics, "per_topic": self.per_topic, "questions": self.questions}


def _aggregate(task: Task, method: str, rows: list[dict], keys: Sequence[str], extra: dict[str, float] | None = None) -> TaskResult:
    n = len(rows)
    metrics = {k: sum(bool(r[f"correct{k[3:]}"]) for r in rows) / max(n, 1) for k in keys}
    per_topic: dict[str, dict[str, float]] = {}
    topics = sorted({t for r in rows for t in r["topics"]})
    for t in topics:
        sub = [r for r in rows if t in r["topics"]]
        per_topic[t] = {**{k: sum(bool(r[f"correct{k[3:]}"]) for r in sub) / len(sub) for k in keys}, "n": len(sub)}
    skipped = [{"row": s.row, "kind": s.kind, "reason": s.reason, "detail": s.detail} for s in task.skipped]
    return TaskResult(task=task.name, format=task.format, method=method, n=n, metrics={**metrics, **(extra or {})},
                      per_topic=per_topic, questions=rows, skipped=skipped)


def _selected(task: Task, limit: int | None) -> list[Question]:
    return task.questions[:limit] if limit else list(task.questions)


# ---------------------------------------------------------------------------------------------- scoring
def score_generate(task: Task, generate: GenerateFn, limit: int | None = None, shots: int = 5) -> TaskResult:
    """Prompt, generate, parse and exact-match every question (the first ``limit`` ones)."""
    qs = _selected(task, limit)
    prompts = [build_prompt(task, q, shots) for q in qs]
    outputs = generate(prompts)
    if len(outputs) != len(prompts):
        raise ValueError(f"generate returned {len(outputs)} outputs for {len(prompts)} prompts")
    parse = PARSERS[task.format]
    rows = []
    for q, prompt, out in zip(qs, prompts, outputs):
        pred = parse(out)
        rows.append({"id": q.id, "row": q.row, "gold": q.answer, "topics": list(q.topics), "prompt": prompt,
                     "output": out, "pred": pred, "correct": pred == q.answer})
    parsed = sum(r["pred"] not in (None, "") for r in rows) / max(len(rows), 1)
    return _aggregate(task, "generate", rows, ["acc"], {"parsed": parsed})


def text_prompt(q: Question) -> str:
    """The context whose continuations are the option texts (``acc`` / ``acc_norm``)."""
    return f"Question: {q.question}\nAnswer:"


def loglik_requests(task: Task, questions: Sequence[Question]) -> list[dict]:
    """The questions as :func:`~fluxforge.eval.scoring.score_mcq` ranks them for ``acc`` / ``acc_norm``.

    ``{id, question (the context), options, answer (an index)}``: option texts after :func:`text_prompt`,
    or for a multi-answer task the 15 letter sets after :func:`listed_prompt`. Written with
    :func:`~fluxforge.eval.lm_eval_task.write_lm_eval_task`, they are the task lm-eval scores the same way.
    """
    if task.multi_answer:
        return [{"id": q.id, "question": listed_prompt(q), "options": list(SUBSETS), "answer": SUBSETS.index(q.answer)}
                for q in questions]
    return [{"id": q.id, "question": text_prompt(q), "options": list(q.options), "answer": q.answer_index} for q in questions]


def _request_record(req: dict, res: dict, labels: Sequence[str]) -> dict:
    """What lm-eval's samples hold for one question: context, continuations, log-likelihoods, is_greedy, choices."""
    return {"context": req["question"], "continuations": [TARGET_DELIMITER + o for o in req["options"]],
            "loglik": res["loglik"], "is_greedy": res["is_greedy"], "pred": labels[res["pred"]],
            "pred_norm": labels[res["pred_norm"]]}


def score_loglik(task: Task, model: PreTrainedModel, tok: PreTrainedTokenizerFast, limit: int | None = None,
                 batch_size: int = 32, add_bos_token: bool | None = None, max_length: int | None = None) -> TaskResult:
    """Rank options by log-likelihood; see the module docstring for what each metric ranks.

    ``add_bos_token`` and ``max_length`` are lm-eval ``HFLM``'s model arguments (None: its defaults).
    """
    qs = _selected(task, limit)
    reqs = loglik_requests(task, qs)
    res = score_mcq(model, tok, reqs, batch_size, add_bos_token, max_length)
    if task.multi_answer:
        rows = [{"id": q.id, "row": q.row, "gold": q.answer, "topics": list(q.topics), **_request_record(req, r, SUBSETS),
                 "correct": r["correct"]} for q, req, r in zip(qs, reqs, res)]
        return _aggregate(task, "loglik", rows, ["acc"])
    letter_reqs = [{"id": q.id, "question": listed_prompt(q), "options": list(q.letters), "answer": q.answer_index} for q in qs]
    letter = score_mcq(model, tok, letter_reqs, batch_size, add_bos_token, max_length)
    rows = [{"id": q.id, "row": q.row, "gold": q.answer, "topics": list(q.topics), **_request_record(req, t, LETTERS),
             "correct": t["correct"], "correct_norm": t["correct_norm"], "pred_letter": LETTERS[x["pred"]],
             "correct_letter": x["correct"], "letter": _request_record(lreq, x, LETTERS)}
            for q, req, t, lreq, x in zip(qs, reqs, res, letter_reqs, letter)]
    return _aggregate(task, "loglik", rows, ["acc", "acc_norm", "acc_letter"])


# ---------------------------------------------------------------------------------------------- HF generation
@torch.no_grad()
def hf_generate(model: PreTrainedModel, tok: PreTrainedTokenizerFast, prompts: Sequence[str], max_new_tokens: int,
                batch_size: int = 8, progress: bool = True, add_bos_token: bool | None = None,
                max_length: int | None = None) -> list[str]:
    """Greedy continuations of ``prompts``, batched with left padding (so every row ends where generation starts).

    Prompts are encoded as lm-eval encodes them (the tokenizer's own special tokens, ``add_bos_token``);
    those longer than ``max_length`` (lm-eval's, see :mod:`scoring`) minus ``max_new_tokens`` keep their
    end (the question) and lose their start.
    """
    model.eval()
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = encode(lm_eval_tokenizer(tok, add_bos_token), list(prompts), add_bos_token)
    keep = max(resolve_max_length(model, tok, max_length) - max_new_tokens, 1)
    cut = sum(len(x) > keep for x in ids)
    if cut:
        log.warning("%d of %d prompts are longer than %d tokens and lose their start", cut, len(ids), keep)
    ids = [x[-keep:] for x in ids]
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together: less padding
    out: list[str] = [""] * len(ids)
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    quiet = not progress or os.environ.get("FLUXFORGE_PROGRESS", "1") == "0" or len(batches) < 2
    device = next(model.parameters()).device
    for batch in tqdm(batches, desc="generate", disable=quiet, mininterval=2.0, dynamic_ncols=True):
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, width - len(ids[i]):] = 1
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        for r, i in enumerate(batch):
            out[i] = tok.decode(gen[r, width:].tolist(), skip_special_tokens=True)
    return out


def hf_generator(model: PreTrainedModel, tok: PreTrainedTokenizerFast, max_new_tokens: int, batch_size: int = 8,
                 progress: bool = True, add_bos_token: bool | None = None, max_length: int | None = None) -> GenerateFn:
    """A ``prompts -> outputs`` callable over an HF model, for :func:`score_generate`."""
    return lambda prompts: hf_generate(model, tok, prompts, max_new_tokens, batch_size, progress, add_bos_token, max_length)


def evaluate_task(task: Task, model: PreTrainedModel, tok: PreTrainedTokenizerFast, method: str = "loglik",
                  limit: int | None = None, batch_size: int = 16, max_new_tokens: int | None = None, shots: int = 5,
                  add_bos_token: bool | None = None, max_length: int | None = None) -> TaskResult:
    """Score ``task`` with ``method`` ("loglik" or "generate"); ``add_bos_token``, ``max_length``: lm-eval's, default None."""
    if method == "loglik":
        return score_loglik(task, model, tok, limit, batch_size, add_bos_token, max_length)
    if method == "generate":
        budget = max_new_tokens or MAX_NEW_TOKENS[task.format]
        return score_generate(task, hf_generator(model, tok, budget, batch_size, add_bos_token=add_bos_token,
                                                 max_length=max_length), limit, shots)
    raise ValueError(f"unknown method '{method}' (use loglik or generate)")


def format_table(result: TaskResult) -> str:
    """A short plain-text table: overall, then one line per topic."""
    keys = [k for k in ("acc", "acc_norm", "acc_letter", "parsed") if k in result.metrics]
    name_w = max([len("overall"), *(len(t) for t in result.per_topic)])
    head = f"{'':{name_w}s}  " + "  ".join(f"{k:>10s}" for k in keys) + f"  {'n':>6s}"
    lines = [f"{result.task} ({result.format}, {result.method})", head,
             f"{'overall':{name_w}s}  " + "  ".join(f"{result.metrics[k]:10.4f}" for k in keys) + f"  {result.n:6d}"]
    for t, m in result.per_topic.items():
        lines.append(f"{t:{name_w}s}  " + "  ".join(f"{m[k]:10.4f}" if k in m else f"{'':10s}" for k in keys) + f"  {int(m['n']):6d}")
    if result.skipped:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.skip_reasons().items(), key=lambda x: -x[1]))
        lines.append(f"skipped {len(result.skipped)} row(s) that cannot be scored: {reasons}")
    return "\n".join(lines)
