"""Read multiple-choice task files into one in-memory form.

Four formats are read, so a model trained here can be scored on public cyber benchmarks
with the same code that scores the generated world:

- ``native``: the world's ``eval/mcq.jsonl`` (``{id, question, options, answer: int, domain, ...}``);
- ``cti-mcq``: CTI-Bench's ``cti-mcq.tsv`` (``URL, Question, Option A..D, Prompt, GT``);
- ``cybermetric``: CyberMetric's JSON (``{"questions": [{question, answers: {A..D}, solution}]}``);
- ``seceval``: SecEval's JSON list (``{id, source, question, choices, answer, topics, keyword}``),
  where an answer may hold several letters ("ABD").

Every answer is kept as its sorted set of letters ("B", "ABD"), so single- and multi-answer
tasks are compared the same way (exact match).

Files from the wild have quirky rows. By default a row lm-eval would score is scored: an empty
option is a legal choice (its continuation is just the delimiter " "). A row that cannot be
scored (no question, an answer that is not a letter, the wrong number of fields or options,
malformed JSON on its line, an id already used) is skipped: a warning names it (the 1-based line
for TSV/JSONL, the 1-based record for JSON) and ``Task.skipped`` keeps it with its reason, so the
output counts it. ``strict=True`` refuses the whole file at the first such row instead, empty
options included. A file that cannot be read at all (no header, not JSON, no question left)
always raises :class:`TaskFileError` naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxforge.errors import FluxForgeError

log = logging.getLogger(__name__)

LETTERS = "ABCD"
FORMATS = ("native", "cti-mcq", "cybermetric", "seceval")
CTI_COLUMNS = ("URL", "Question", "Option A", "Option B", "Option C", "Option D", "Prompt", "GT")

# CTI-Bench's own wording, used only when a row's Prompt cell is empty (the released file always fills it)
CTI_PROMPT = (
    "You are given a multiple-choice question (MCQ) from a Cyber Threat Intelligence (CTI) knowledge benchmark dataset. "
    "Your task is to choose the best option among the four provided. Return your answer as a single uppercase letter: "
    "A, B, C, or D.  **Question:** {question}  **Options:** A) {a} B) {b} C) {c} D) {d}  **Important:** The last line of "
    "your answer should contain only the single letter corresponding to the best option, with no additional text. "
)
_CHOICE_PREFIX = re.compile(r"^\s*([A-Da-d])\s*[:.)]\s*")


class TaskFileError(FluxForgeError):
    """A task file that cannot be scored; the message names the file and the row."""


class _RowError(ValueError):
    """One row that cannot be scored: ``reason`` is the short kind counted in the output, ``detail`` the message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of a task (not strict), with why."""

    row: int
    kind: str  # "line" or "record"
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.row}: {self.detail}"


@dataclass(frozen=True)
class Question:
    """One question. ``options`` are the texts of A, B, ...; ``answer`` is the sorted correct letters."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: str
    topics: tuple[str, ...] = ()
    url: str | None = None
    prompt: str | None = None  # the benchmark's own generation prompt (CTI-MCQ's Prompt column)
    choices: tuple[str, ...] | None = None  # the choices as written in the file (SecEval's "A: ...")
    row: int = 0  # 1-based line (TSV/JSONL) or record (JSON) in the file
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    @property
    def answer_index(self) -> int:
        """Index of the single correct option (multi-answer questions have none)."""
        if len(self.answer) != 1:
            raise ValueError(f"question {self.id} has several answers ({self.answer})")
        return LETTERS.index(self.answer)


@dataclass
class Task:
    name: str
    format: str
    multi_answer: bool
    questions: list[Question]
    path: Path | None = None
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.questions)

    def skip_reasons(self) -> dict[str, int]:
        """How many rows were skipped for each reason."""
        return dict(Counter(s.reason for s in self.skipped))


def normalize_letters(value: str) -> str:
    """Sorted, de-duplicated upper-case letters: "b a" -> "AB" (non-letters are the caller's problem)."""
    return "".join(sorted(set(value.upper()) - set(" ,;")))


def detect_format(path: Path, text: str) -> str:
    """Guess the format from the extension, then from the content (first row or record)."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "cti-mcq"
    if suffix == ".jsonl":
        first = next((ln for ln in _lines(text) if ln.strip()), "")
        return "seceval" if '"choices"' in first else "native"
    head = text.lstrip()[:1]
    if head == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:  # JSONL under a .json name, or a broken JSON file
            first = next(ln for ln in _lines(text) if ln.strip())
            try:
                json.loads(first)
            except json.JSONDecodeError:
                raise TaskFileError(f"{path}: line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from None
            return "seceval" if '"choices"' in first else "native"
        return "cybermetric" if isinstance(data, dict) and "questions" in data else "native"
    if head == "[":  # the only format that is a JSON list
        return "seceval"
    if "\t" in text.partition("\n")[0]:
        return "cti-mcq"
    raise TaskFileError(f"{path}: cannot tell the task format (not TSV, JSON or JSONL); pass --format {{{','.join(FORMATS)}}}")


def load_task(path: Path | str, fmt: str | None = None, name: str | None = None, strict: bool = False) -> Task:
    """Read a task file in ``fmt`` (auto-detected when None) into a :class:`Task` (see the module docstring for ``strict``)."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise TaskFileError(f"{path}: unknown format '{fmt}' (use one of {', '.join(FORMATS)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such task file") from None
    except IsADirectoryError:
        raise TaskFileError(f"{path}: is a directory, not a task file") from None
    except UnicodeDecodeError as err:
        raise TaskFileError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not text.strip():
        raise TaskFileError(f"{path}: the file is empty; a task needs at least one question")
    fmt = fmt or detect_format(path, text)
    reader = {"native": _read_native, "cti-mcq": _read_cti, "cybermetric": _read_cybermetric, "seceval": _read_seceval}[fmt]
    rows, kind = reader(path, text)
    questions, skipped = _parse_rows(path, kind, rows, fmt, strict)
    if not questions:
        why = f"; every row was skipped: {'; '.join(map(str, skipped[:5]))}{'; ...' if len(skipped) > 5 else ''}" if skipped else ""
        raise TaskFileError(f"{path}: no questions found (read as {fmt}){why}")
    for s in skipped:
        log.warning("%s: %s skipped: %s", path, f"{s.kind} {s.row}", s.detail)
    return Task(name=name or path.stem, format=fmt, multi_answer=fmt == "seceval", questions=questions, path=path, skipped=skipped)


# a reader returns (row number, the row as read or a _RowError, a parser) for every row, and the kind of row number
Row = tuple[int, Any, Callable[[int, Any, bool], Question]]


def _parse_rows(path: Path, kind: str, rows: list[Row], fmt: str, strict: bool) -> tuple[list[Question], list[SkippedRow]]:
    """Parse every row; a row that cannot be scored fails the file (strict) or is kept aside with its reason."""
    out: list[Question] = []
    skipped: list[SkippedRow] = []
    seen: dict[str, int] = {}

    def reject(n: int, err: _RowError) -> None:
        if strict:
            raise _fail(path, f"{kind} {n}", err.detail)
        skipped.append(SkippedRow(n, kind, err.reason, err.detail))

    for n, rec, parse in rows:
        try:
            if isinstance(rec, _RowError):
                raise rec
            q = parse(n, rec, strict)
        except _RowError as err:
            reject(n, err)
            continue
        if q.id in seen:
            reject(n, _RowError("duplicate id", f"id '{q.id}' is already used at {kind} {seen[q.id]}"))
            continue
        seen[q.id] = n
        out.append(q)
    return out, skipped


def _fail(path: Path, where: str, why: str) -> TaskFileError:
    return TaskFileError(f"{path}: {where}: {why}")


def _lines(text: str) -> list[str]:
    """Physical lines split on "\n" only: ``str.splitlines`` would also split inside a field at U+2028, form feeds etc."""
    return [ln.removesuffix("\r") for ln in text.split("\n")]


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _option(value: object, where: str, strict: bool) -> str:
    """An option's text; empty is a legal choice unless ``strict`` (today's files fail on it), anything but a string is not."""
    if value is None:
        raise _RowError("bad options", f"{where} is missing")
    if not isinstance(value, str):
        raise _RowError("bad options", f"{where} is not a string")
    if strict and not value.strip():
        raise _RowError("empty option", f"{where} is empty")
    return value.strip()


def _json_lines(text: str) -> list[tuple[int, object]]:
    """(line number, object or _RowError) for each non-blank line of a JSONL file."""
    out: list[tuple[int, object]] = []
    for lineno, line in enumerate(_lines(text), 1):
        if line.strip():
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                out.append((lineno, _RowError("malformed JSON", f"malformed JSON ({err.msg} at column {err.colno})")))
    return out


# ---------------------------------------------------------------------------------------------- native JSONL
def _read_native(path: Path, text: str) -> tuple[list[Row], str]:
    return [(n, rec, _native_question) for n, rec in _json_lines(text)], "line"


def _native_question(lineno: int, rec: object, strict: bool) -> Question:
    if not isinstance(rec, dict):
        raise _RowError("not an object", "expected a JSON object per line")
    options = rec.get("options")
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        raise _RowError("bad options", f"'options' must be a list of 2 to {len(LETTERS)} strings")
    texts = tuple(_option(opt, f"option {LETTERS[i]}", strict) for i, opt in enumerate(options))
    answer = rec.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise _RowError("bad answer", f"'answer' must be an option index 0..{len(options) - 1}, got {answer!r}")
    # the world writes "Question: ...\nAnswer:"; keep the bare question so every format builds prompts alike
    stem = _text(rec.get("question")).removeprefix("Question:").removesuffix("Answer:").strip()
    if not stem:
        raise _RowError("no question", "'question' is missing or empty")
    domain = rec.get("domain")
    return Question(id=str(rec.get("id", f"line{lineno}")), question=stem, options=texts, answer=LETTERS[answer],
                    topics=(domain,) if isinstance(domain, str) else (), row=lineno,
                    meta={k: v for k, v in rec.items() if k not in ("id", "question", "options", "answer")})


# ---------------------------------------------------------------------------------------------- CTI-MCQ TSV
def _read_cti(path: Path, text: str) -> tuple[list[Row], str]:
    # one record per physical line, split on tabs: CTI-Bench fields hold literal quotes but never tabs or newlines
    rows = [line.split("\t") for line in _lines(text)]
    header = [h.strip() for h in rows[0]]
    missing = [c for c in CTI_COLUMNS if c not in header]
    if missing:
        hint = " (this looks like another CTI-Bench task: only CTI-MCQ has options)" if "GT" in header or "Prompt" in header else ""
        raise _fail(path, "line 1", f"header lacks column(s) {', '.join(missing)}; CTI-MCQ needs {', '.join(CTI_COLUMNS)}{hint}")
    col = {c: header.index(c) for c in CTI_COLUMNS}

    def parse(lineno: int, row: list[str], strict: bool) -> Question:
        if len(row) != len(header):
            raise _RowError("wrong field count", f"expected {len(header)} tab-separated fields as in the header, found {len(row)}")
        cell = {c: row[i].strip() for c, i in col.items()}
        options = tuple(_option(cell[f"Option {x}"], f"Option {x}", strict) for x in LETTERS)
        if not cell["Question"]:
            raise _RowError("no question", "Question is empty")
        gt = cell["GT"].upper()  # the official scorer upper-cases GT too
        if len(gt) != 1 or gt not in LETTERS:
            raise _RowError("bad answer", f"GT '{cell['GT']}' is not one of A, B, C, D")
        prompt = cell["Prompt"] or CTI_PROMPT.format(question=cell["Question"], a=options[0], b=options[1], c=options[2], d=options[3])
        return Question(id=f"line{lineno}", question=cell["Question"], options=options, answer=gt,
                        url=cell["URL"] or None, prompt=prompt, row=lineno)

    return [(n, row, parse) for n, row in enumerate(rows[1:], 2) if any(cell.strip() for cell in row)], "line"


# ---------------------------------------------------------------------------------------------- JSON formats
def _load_json(path: Path, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskFileError(f"{path}: line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from None


def _read_cybermetric(path: Path, text: str) -> tuple[list[Row], str]:
    data = _load_json(path, text)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise TaskFileError(f"{path}: a CyberMetric file is an object with a 'questions' list")
    return [(n, rec, _cybermetric_question) for n, rec in enumerate(data["questions"], 1)], "record"


def _cybermetric_question(n: int, rec: object, strict: bool) -> Question:
    if not isinstance(rec, dict):
        raise _RowError("not an object", "expected an object {question, answers, solution}")
    answers = rec.get("answers")
    if not isinstance(answers, dict):
        raise _RowError("bad options", "'answers' must be an object with keys A, B, C, D")
    extra = sorted(set(answers) - set(LETTERS))
    if extra:
        raise _RowError("bad options", f"'answers' has key(s) {', '.join(map(str, extra))}; only A, B, C, D are allowed")
    options = tuple(_option(answers.get(x), f"option {x}", strict) for x in LETTERS)
    solution = _text(rec.get("solution")).upper()
    if len(solution) != 1 or solution not in LETTERS:
        raise _RowError("bad answer", f"solution {rec.get('solution')!r} is not one of A, B, C, D")
    stem = _text(rec.get("question"))
    if not stem:
        raise _RowError("no question", "'question' is missing or empty")
    return Question(id=str(rec.get("id", f"q{n}")), question=stem, options=options, answer=solution, row=n)


def _read_seceval(path: Path, text: str) -> tuple[list[Row], str]:
    if text.lstrip().startswith("["):
        records = _load_json(path, text)
        if not isinstance(records, list):
            raise TaskFileError(f"{path}: a SecEval file is a JSON list of questions")
        return [(n, rec, _seceval_question) for n, rec in enumerate(records, 1)], "record"
    # the same objects one per line (as some mirrors ship it)
    return [(n, rec, _seceval_question) for n, rec in _json_lines(text)], "line"


def _seceval_question(n: int, rec: object, strict: bool) -> Question:
    if not isinstance(rec, dict):
        raise _RowError("not an object", "expected an object {id, question, choices, answer, topics}")
    choices = rec.get("choices")
    if not isinstance(choices, list) or len(choices) != len(LETTERS):
        raise _RowError("bad options", f"'choices' must be a list of {len(LETTERS)} strings (A-D)")
    options = []
    for i, choice in enumerate(choices):
        raw = _option(choice, f"option {LETTERS[i]}", False)
        m = _CHOICE_PREFIX.match(raw)
        if m and m.group(1).upper() != LETTERS[i]:
            raise _RowError("bad options", f"choice {i + 1} is labelled {m.group(1)}, expected {LETTERS[i]}")
        options.append(_option(raw[m.end():] if m else raw, f"option {LETTERS[i]}", strict))
    answer = normalize_letters(_text(rec.get("answer")))
    if not answer or set(answer) - set(LETTERS):
        raise _RowError("bad answer", f"answer {rec.get('answer')!r} must be one or more of the letters A, B, C, D")
    stem = _text(rec.get("question"))
    if not stem:
        raise _RowError("no question", "'question' is missing or empty")
    topics = rec.get("topics") or []
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise _RowError("bad topics", "'topics' must be a list of strings")
    return Question(id=str(rec.get("id", f"q{n}")), question=stem, options=tuple(options), answer=answer, topics=tuple(topics),
                    choices=tuple(str(c) for c in choices), row=n, meta={k: rec[k] for k in ("source", "keyword") if k in rec})
