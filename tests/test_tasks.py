"""Task files (CTI-MCQ, CyberMetric, SecEval, native), their official parsers, and `fluxforge eval`."""

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from fluxforge.eval.generation import (
    SECEVAL_INSTRUCTION,
    build_prompt,
    format_table,
    hf_generate,
    parse_cti,
    parse_cybermetric,
    parse_native,
    parse_seceval,
    score_generate,
)
from fluxforge.eval.tasks import CTI_COLUMNS, CTI_PROMPT, LETTERS, TaskFileError, load_task

SHARED_CYBER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cyber"
TOPICS = ["WebSecurity", "PenTest", "Cryptography"]


# ---------------------------------------------------------------------------------------------- canned task files
def _stem(i: int) -> str:
    return f"Which control stops intrusion number {i:03d} on host zeta?"


def _options(i: int) -> list[str]:
    return [f"control {x.lower()}{i:03d} of the plan" for x in LETTERS]


def _answers(n: int, multi: bool) -> list[str]:
    rng = random.Random(7)
    pool = ["A", "A", "B", "C", "D", "AB", "ABD", "CD", "BCD"] if multi else ["A", "A", "A", "B", "C", "D"]
    return [rng.choice(pool) for _ in range(n)]


def write_task(tmp_path: Path, fmt: str, n: int = 20) -> tuple[Path, list[str]]:
    answers = _answers(n, multi=fmt == "seceval")
    if fmt == "cti-mcq":
        path = tmp_path / "cti-mcq.tsv"
        lines = ["\t".join(CTI_COLUMNS)]
        for i, a in enumerate(answers):
            o = _options(i)
            prompt = CTI_PROMPT.format(question=_stem(i), a=o[0], b=o[1], c=o[2], d=o[3])
            lines.append("\t".join([f"https://attack.mitre.org/techniques/T{1000 + i}/", _stem(i), *o, prompt, a]))
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "cybermetric":
        path = tmp_path / "CyberMetric-20-v1.json"
        qs = [{"question": _stem(i), "answers": dict(zip(LETTERS, _options(i))), "solution": a} for i, a in enumerate(answers)]
        path.write_text(json.dumps({"questions": qs}, indent=2))
    elif fmt == "seceval":
        path = tmp_path / "questions.json"
        qs = [{"id": f"s{i:03d}", "source": "cwe", "question": _stem(i), "choices": [f"{x}: {o}" for x, o in zip(LETTERS, _options(i))],
               "answer": a, "topics": TOPICS[: 1 + i % 3], "keyword": "k"} for i, a in enumerate(answers)]
        path.write_text(json.dumps(qs, indent=4))
    else:
        path = tmp_path / "mcq.jsonl"
        path.write_text("".join(json.dumps({"id": f"mcq-{i:05d}", "domain": "cyber" if i % 2 else "general",
                                            "question": f"Question: {_stem(i)}\nAnswer:", "options": _options(i),
                                            "answer": LETTERS.index(a), "changed": False}) + "\n" for i, a in enumerate(answers)))
    return path, answers


def _target(task, prompt: str):
    """The question a prompt asks: the one whose text comes last (SecEval prompts also hold solved examples)."""
    return max(task.questions, key=lambda q: prompt.rfind(q.question))


REPLY = {  # how each benchmark expects a model to write its answer
    "cti-mcq": lambda a: f"Option {a} matches the description best.\n{a}",
    "cybermetric": lambda a: f"ANSWER: {a}",
    "seceval": lambda a: f" {a}",
    "native": lambda a: f" {a}",
}
ALL_FORMATS = ["cti-mcq", "cybermetric", "seceval", "native"]


# ---------------------------------------------------------------------------------------------- parsers
def test_cybermetric_parser_is_the_official_regex():
    assert parse_cybermetric("ANSWER: b") == "B"
    assert parse_cybermetric("answer C because") == "C"
    assert parse_cybermetric("Sure.\nANSWER:D") == "D"
    assert parse_cybermetric("I think it is B") is None
    assert parse_cybermetric("   ") is None


def test_seceval_parser_is_the_official_letter_set():
    assert parse_seceval("Answer: C A") == "AC"
    assert parse_seceval(" ABD") == "ABD"
    assert parse_seceval("D, B, D") == "BD"
    assert parse_seceval("none") == ""


def test_cti_parser_reads_the_last_letter_line_leniently():
    assert parse_cti("The options differ in scope.\nB") == "B"
    assert parse_cti("Reasoning first.\n\n**C**\n") == "C"
    assert parse_cti("The correct answer is (d).") == "D"
    assert parse_cti("Answer: a") == "A"
    assert parse_cti("B\nQuestion: which tool dumps credentials?") == "B"  # a base model that keeps writing
    assert parse_cti("A) Linux B) Windows") is None
    assert parse_cti("") is None


def test_native_parser_takes_the_first_letter():
    assert parse_native(" B\nQuestion: next") == "B"
    assert parse_native("(c) it is") == "C"
    assert parse_native(" Because") is None


# ---------------------------------------------------------------------------------------------- scoring without a model
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_oracle_scores_one_and_constant_a_scores_the_frequency_of_a(tmp_path, fmt):
    path, answers = write_task(tmp_path, fmt)
    task = load_task(path)
    assert task.format == fmt and len(task) == len(answers)
    oracle = score_generate(task, lambda prompts: [REPLY[fmt](_target(task, p).answer) for p in prompts], shots=3)
    assert oracle.metrics["acc"] == 1.0 and oracle.metrics["parsed"] == 1.0 and oracle.n == len(answers)
    constant = score_generate(task, lambda prompts: [REPLY[fmt]("A") for _ in prompts], shots=3)
    assert constant.metrics["acc"] == pytest.approx(answers.count("A") / len(answers))
    assert 0 < constant.metrics["acc"] < 1


def test_seceval_partial_answers_score_zero_and_topics_are_counted_per_topic(tmp_path):
    path, answers = write_task(tmp_path, "seceval", n=30)
    task = load_task(path)
    assert task.multi_answer and {q.answer for q in task.questions} >= {"AB", "ABD"}

    def partial(prompts):  # a strict subset of a multi-letter answer, a superset of a single one
        out = []
        for p in prompts:
            a = _target(task, p).answer
            out.append(a[:-1] if len(a) > 1 else a + ("B" if a != "B" else "C"))
        return out

    res = score_generate(task, partial, shots=5)
    assert res.metrics["acc"] == 0.0 and all(not r["correct"] for r in res.questions)
    oracle = score_generate(task, lambda ps: [REPLY["seceval"](_target(task, p).answer) for p in ps])
    expect_n = Counter(t for q in task.questions for t in q.topics)
    assert {t: m["n"] for t, m in oracle.per_topic.items()} == dict(expect_n)
    assert all(m["acc"] == 1.0 for m in oracle.per_topic.values())
    table = format_table(oracle)
    assert all(t in table for t in TOPICS) and "overall" in table


def test_seceval_prompt_is_five_shot_from_other_questions_and_deterministic(tmp_path):
    path, _ = write_task(tmp_path, "seceval")
    task = load_task(path)
    q = task.questions[4]
    prompt = build_prompt(task, q, shots=5)
    assert prompt == build_prompt(load_task(path), q, shots=5)
    assert prompt.startswith(SECEVAL_INSTRUCTION + "\n") and prompt.endswith("D: " + q.options[3] + "\n")
    assert prompt.count("Question: ") == 6 and prompt.count("\nAnswer: ") == 5
    assert prompt.count(q.question) == 1 and prompt.rstrip().endswith(q.options[3])
    assert build_prompt(task, task.questions[5], shots=0).count("Question: ") == 1


def test_cti_and_cybermetric_prompts_follow_the_official_text(tmp_path):
    task = load_task(write_task(tmp_path, "cybermetric")[0])
    q = task.questions[0]
    assert build_prompt(task, q) == (f"Question: {q.question}\nOptions: A) {q.options[0]}, B) {q.options[1]}, C) {q.options[2]}, "
                                     f"D) {q.options[3]}\n\nChoose the correct answer (A, B, C, or D) only. "
                                     "Always return in this format: 'ANSWER: X'\n")
    cti = load_task(write_task(tmp_path, "cti-mcq")[0])
    assert build_prompt(cti, cti.questions[0]) == cti.questions[0].prompt.rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- reading and bad input
def test_cti_fields_keep_quotes_and_unicode_line_separators(tmp_path):
    question = 'The "Living off the land"\u2028technique uses which binary?'
    path = tmp_path / "q.tsv"
    path.write_text(_cti_text([["u", question, '"certutil"', "b\\x", "c", "d", "p", "a"]]), encoding="utf-8")
    q = load_task(path).questions[0]
    assert (q.question, q.options[:2], q.answer) == (question, ('"certutil"', "b\\x"), "A")


def test_format_is_detected_and_can_be_overridden(tmp_path):
    for fmt in ALL_FORMATS:
        assert load_task(write_task(tmp_path, fmt)[0]).format == fmt
    plain = tmp_path / "cti.txt"
    plain.write_text((tmp_path / "cti-mcq.tsv").read_text())
    assert load_task(plain, "cti-mcq").format == "cti-mcq"
    jsonl_named_json = tmp_path / "mcq.json"
    jsonl_named_json.write_text((tmp_path / "mcq.jsonl").read_text())
    assert load_task(jsonl_named_json).format == "native"


def _cti_text(rows: list[list[str]]) -> str:
    return "\n".join("\t".join(r) for r in [list(CTI_COLUMNS), *rows]) + "\n"


GOOD_CTI = ["https://x/1", "Q one?", "a", "b", "c", "d", "Prompt one", "B"]
GOOD_CM = {"question": "Q?", "answers": {"A": "a", "B": "b", "C": "c", "D": "d"}, "solution": "A"}
GOOD_SE = {"id": "x1", "question": "Q?", "choices": ["A: a", "B: b", "C: c", "D: d"], "answer": "AB", "topics": ["PenTest"]}
BAD_INPUT = {
    "cti missing option": ("t.tsv", _cti_text([GOOD_CTI, GOOD_CTI[:4] + [""] + GOOD_CTI[5:]]), "line 3", "Option C is empty"),
    "cti gt outside A-D": ("t.tsv", _cti_text([GOOD_CTI[:7] + ["E"]]), "line 2", "GT 'E'"),
    "cti short row": ("t.tsv", _cti_text([GOOD_CTI, GOOD_CTI, GOOD_CTI[:6]]), "line 4", "found 6"),
    "cti wrong header": ("t.tsv", "URL\tDescription\tPrompt\tGT\nu\td\tp\tCWE-79\n", "line 1", "only CTI-MCQ has options"),
    "cti header only": ("t.tsv", "\t".join(CTI_COLUMNS) + "\n", "t.tsv", "no questions"),
    "empty file": ("t.json", "\n  \n", "t.json", "empty"),
    "cybermetric missing option": ("t.json", json.dumps({"questions": [GOOD_CM, {**GOOD_CM, "answers": {"A": "a", "B": "b", "C": "c"}}]}),
                                   "record 2", "option D is missing"),
    "cybermetric bad solution": ("t.json", json.dumps({"questions": [{**GOOD_CM, "solution": "E"}]}), "record 1", "'E'"),
    "cybermetric malformed json": ("t.json", '{"questions": [\n  {"question": "Q?",\n  "answers": }\n]}', "line 3", "malformed JSON"),
    "seceval letter outside A-D": ("t.json", json.dumps([GOOD_SE, {**GOOD_SE, "id": "x2", "answer": "AE"}]), "record 2", "'AE'"),
    "seceval three choices": ("t.json", json.dumps([{**GOOD_SE, "choices": ["A: a", "B: b", "C: c"]}]), "record 1", "'choices'"),
    "seceval duplicate id": ("t.json", json.dumps([GOOD_SE, GOOD_SE]), "record 2", "already used at record 1"),
    "native malformed line": ("t.jsonl", '{"id": "q1", "question": "Q?", "options": ["a", "b"], "answer": 0}\n{"id": oops}\n',
                              "line 2", "malformed JSON"),
    "native answer out of range": ("t.jsonl", '{"id": "q1", "question": "Q?", "options": ["a", "b"], "answer": 2}\n', "line 1", "'answer'"),
}


FILE_LEVEL = {"cti wrong header", "cti header only", "empty file", "cybermetric malformed json"}  # no row to skip


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_names_the_file_and_the_row(tmp_path, case):
    """--strict: the first row that cannot be scored (or has an empty option) fails the whole file, by name."""
    name, text, where, why = BAD_INPUT[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TaskFileError) as err:
        load_task(path, strict=True)
    msg = str(err.value)
    assert str(path) in msg and where in msg and why in msg, msg


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_by_default_unscorable_rows_are_skipped_by_name_and_empty_options_scored(tmp_path, case, caplog):
    name, text, where, why = BAD_INPUT[case]
    path = tmp_path / name
    path.write_text(text)
    if case in FILE_LEVEL or case == "cti gt outside A-D" or case.startswith(("cybermetric bad", "native answer", "seceval three")):
        with pytest.raises(TaskFileError) as err:  # a file-level fault, or the only row skipped: nothing left to score
            load_task(path)
        assert str(path) in str(err.value) and where in str(err.value) and why in str(err.value), err.value
        return
    task = load_task(path)
    if case == "cti missing option":  # lm-eval scores it: the option is just empty
        assert not task.skipped and len(task) == 2 and task.questions[1].options[2] == ""
        return
    (skip,) = task.skipped
    assert where in str(skip) and why in str(skip) and len(task) >= 1
    assert f"{path}: {where} skipped: {skip.detail}" in caplog.text


def test_cli_exits_2_with_the_reason_on_bad_input(tmp_path, capsys):
    from fluxforge.cli import main

    name, text, where, why = BAD_INPUT["cti gt outside A-D"]
    (tmp_path / name).write_text(text)
    for strict in ([], ["--strict"]):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--model", str(tmp_path / "no-model"), "--task", str(tmp_path / name), *strict])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and where in err and why in err and "Traceback" not in err
    good, _ = write_task(tmp_path, "cybermetric")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tmp_path / "no-model"), "--task", str(good)])
    assert exit_.value.code == 2 and "no such model directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- quirky files from the wild
def _cti_row(i: int, **cells: str) -> str:
    o = _options(i)
    row = {"URL": f"https://x/{i}", "Question": _stem(i), **{f"Option {x}": o[k] for k, x in enumerate(LETTERS)},
           "Prompt": f"Prompt {i}", "GT": "B", **cells}
    return "\t".join(row[c] for c in CTI_COLUMNS)


def _seceval(i: int, **fields: object) -> dict:
    return {"id": f"s{i:03d}", "question": _stem(i), "choices": [f"{x}: {o}" for x, o in zip(LETTERS, _options(i))],
            "answer": "B", "topics": ["PenTest"], **fields}


# per format: rows appended after 20 good ones, each with the reason it is skipped for (None: scored)
QUIRKS = {
    "cti-mcq": [(_cti_row(20, **{"Option D": ""}), None), (_cti_row(21, Question=""), "no question"),
                (_cti_row(22, GT="E"), "bad answer"), (_cti_row(23, GT=""), "bad answer"),
                ("\t".join(_cti_row(24).split("\t")[:7]), "wrong field count"), (_cti_row(25) + "\textra", "wrong field count"),
                (_cti_row(26, GT=" c "), None)],
    "cybermetric": [({"question": _stem(20), "answers": {"A": "a", "B": "b", "C": "c", "D": ""}, "solution": "A"}, None),
                    ({"question": "", "answers": {"A": "a", "B": "b", "C": "c", "D": "d"}, "solution": "A"}, "no question"),
                    ({"question": _stem(22), "answers": {"A": "a", "B": "b", "C": "c", "D": "d"}, "solution": "E"}, "bad answer"),
                    ({"question": _stem(23), "answers": {"A": "a", "B": "b", "C": "c"}, "solution": "A"}, "bad options"),
                    ("just a string", "not an object")],
    "seceval": [(_seceval(20, choices=["A: a", "B: b", "C: c", "D: "]), None), (_seceval(21, answer="AE"), "bad answer"),
                (_seceval(22, choices=["A: a", "B: b", "C: c"]), "bad options"), (_seceval(0), "duplicate id"),
                (_seceval(24, question=None), "no question")],
    "native": [({"id": "q20", "question": _stem(20), "options": ["a", "", "c", "d"], "answer": 1}, None),
               ('{"id": "q21", "question": oops}', "malformed JSON"),
               ({"id": "q22", "question": _stem(22), "options": ["a", "b"], "answer": 7}, "bad answer"),
               ({"id": "q23", "question": "Question: \nAnswer:", "options": ["a", "b"], "answer": 0}, "no question"),
               ({"id": "q24", "question": _stem(24), "options": ["a"], "answer": 0}, "bad options")],
}


def write_quirky(tmp_path: Path, fmt: str) -> tuple[Path, int, list[tuple[int, str]]]:
    """A task file of 20 good questions plus QUIRKS[fmt]: (path, questions to score, [(row, reason)] to skip)."""
    path, _ = write_task(tmp_path, fmt)
    extra = [q for q, _ in QUIRKS[fmt]]
    if fmt == "cti-mcq":
        path.write_text(path.read_text() + "\n" + "\n".join(extra) + "\n")  # a blank line too: not a row
        first = 23
    elif fmt == "native":
        path.write_text(path.read_text() + "".join((q if isinstance(q, str) else json.dumps(q)) + "\n" for q in extra))
        first = 21
    else:
        data = json.loads(path.read_text())
        (data["questions"] if fmt == "cybermetric" else data).extend(extra)
        path.write_text(json.dumps(data, indent=2))
        first = 21
    skipped = [(first + k, why) for k, (_, why) in enumerate(QUIRKS[fmt]) if why]
    return path, 20 + sum(why is None for _, why in QUIRKS[fmt]), skipped


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_quirky_rows_are_scored_or_skipped_by_name_and_strict_fails_at_the_first(tmp_path, fmt, caplog):
    path, n, skipped = write_quirky(tmp_path, fmt)
    task = load_task(path)
    assert len(task) == n and [(s.row, s.reason) for s in task.skipped] == skipped
    assert "" in task.questions[20].options  # the empty option is a choice
    kind = "record" if fmt in ("cybermetric", "seceval") else "line"
    for row, _ in skipped:
        assert f"{path}: {kind} {row} skipped: " in caplog.text
    assert task.skip_reasons() == dict(Counter(why for _, why in skipped))
    with pytest.raises(TaskFileError, match=f"{kind} {skipped[0][0] - 1}: .*empty"):
        load_task(path, strict=True)


# ---------------------------------------------------------------------------------------------- real sample files
@pytest.mark.parametrize("name", ["cti-rcm.tsv", "cti-vsp.tsv", "cti-ate.tsv", "cti-taa.tsv"])
def test_real_cti_bench_files_without_options_are_refused_at_the_header(name):
    path = SHARED_CYBER / name
    if not path.exists():
        pytest.skip(f"{path} missing (shared real-data samples not present)")
    with pytest.raises(TaskFileError, match="line 1: header lacks column"):
        load_task(path)


def test_cti_reader_keeps_real_cti_bench_text_intact(tmp_path):
    """CTI-RCM's real rows (quotes, backslashes, odd punctuation) recast as CTI-MCQ questions read back unchanged."""
    src = SHARED_CYBER / "cti-rcm.tsv"
    if not src.exists():
        pytest.skip(f"{src} missing (shared real-data samples not present)")
    with src.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    cwes = sorted({r["GT"] for r in rows})
    out, truth = [list(CTI_COLUMNS)], []
    for i, r in enumerate(rows):
        wrong = [c for c in cwes[i % len(cwes):] + cwes if c != r["GT"]][:3]
        pos = i % 4
        opts = wrong[:pos] + [r["GT"]] + wrong[pos:]
        out.append([r["URL"], r["Description"], *opts, r["Prompt"], LETTERS[pos]])
        truth.append((r["Description"].strip(), LETTERS[pos], r["URL"]))
    path = tmp_path / "rcm-as-mcq.tsv"
    path.write_text("\n".join("\t".join(x) for x in out) + "\n")
    task = load_task(path)
    assert len(task) == len(rows) == 1000
    assert [(q.question, q.answer, q.url) for q in task.questions] == truth


# ---------------------------------------------------------------------------------------------- a real (tiny) model
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from fluxforge.config import ModelConfig
    from fluxforge.data.tokenize import train_tokenizer
    from fluxforge.train.model import build_model, save_model

    text = "Question: Which control stops intrusion number 001 on host zeta? Options: A) control a001 B) control b001 ANSWER: B"
    tok = train_tokenizer([text] * 30, 320)
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    model = build_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_model(model, tok, out, {"stage": "test"})
    return out


def test_left_padded_batches_generate_what_single_prompts_do(tiny_model_dir):
    from fluxforge.train.model import load_model

    model, tok = load_model(tiny_model_dir)
    prompts = ["Question: Which?\nAnswer:", f"Question: {_stem(3)}\nA. x\nB. y\nAnswer:", "ANSWER:", "Options: A) control"]
    one = [hf_generate(model, tok, [p], 6, batch_size=1)[0] for p in prompts]
    assert hf_generate(model, tok, prompts, 6, batch_size=4) == one


@pytest.mark.parametrize(("fmt", "method"), [("cybermetric", "generate"), ("cybermetric", "loglik"), ("seceval", "generate"),
                                             ("seceval", "loglik"), ("native", "loglik")])
def test_eval_command_end_to_end(tiny_model_dir, tmp_path, capsys, fmt, method):
    from fluxforge.cli import main

    task_file, _ = write_task(tmp_path, fmt, n=8)
    out = tmp_path / "results.json"
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tiny_model_dir), "--task", str(task_file), "--method", method, "--limit", "5",
              "--shots", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert exit_.value.code == 0 and "overall" in printed
    res = json.loads(out.read_text())
    assert res["n"] == res["n_scored"] == 5 and len(res["questions"]) == 5 and res["format"] == fmt and res["method"] == method
    assert res["n_skipped"] == 0 and res["skipped"] == [] and res["requests"]["lm_eval_version"] == "0.4.13"
    assert 0.0 <= res["metrics"]["acc"] <= 1.0
    task = load_task(task_file)
    for q, r in zip(task.questions, res["questions"]):
        assert (r["id"], r["row"], r["gold"]) == (q.id, q.row, q.answer)
    if method == "generate":
        assert all(isinstance(q["output"], str) and q["prompt"] for q in res["questions"]) and "parsed" in res["metrics"]
    elif fmt != "seceval":
        assert {"acc_norm", "acc_letter"} <= set(res["metrics"])
        for q, r in zip(task.questions, res["questions"]):  # what lm-eval's samples hold, to diff row by row
            assert r["context"] == f"Question: {q.question}\nAnswer:" and r["continuations"] == [" " + o for o in q.options]
            assert len(r["loglik"]) == len(r["is_greedy"]) == 4 and r["pred"] == LETTERS[max(range(4), key=r["loglik"].__getitem__)]
            assert len(r["letter"]["loglik"]) == 4 and r["letter"]["continuations"] == [" A", " B", " C", " D"]
    else:  # SecEval by likelihood ranks letter sets: a prediction is one of the 15 non-empty subsets
        assert all(q["pred"] and set(q["pred"]) <= set(LETTERS) and len(q["loglik"]) == 15 for q in res["questions"])
    if fmt == "seceval":
        assert set(res["per_topic"]) <= set(TOPICS) and res["per_topic"] and all(t in printed for t in res["per_topic"])


def test_eval_command_logs_to_mlflow(tiny_model_dir, tmp_path, capsys):
    import mlflow

    from fluxforge.cli import main

    task_file, _ = write_task(tmp_path, "seceval", n=8)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tiny_model_dir), "--task", str(task_file), "--method", "loglik", "--limit", "4",
              "--out", str(tmp_path / "r.json"), "--log", "cyber-evals", "--tracking-uri", uri])
    assert exit_.value.code == 0
    run_id = capsys.readouterr().out.split("MLflow run: ")[1].split()[0]
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    res = json.loads((tmp_path / "r.json").read_text())
    assert run.data.metrics["acc"] == pytest.approx(res["metrics"]["acc"])
    assert run.data.params["method"] == "loglik" and run.data.params["questions"] == "4"
    assert any(k.endswith(".acc") for k in run.data.metrics)  # per-topic metrics
    assert [a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run_id)] == ["r.json"]


def _samples_file(path: Path, records: list[dict]) -> Path:
    """Records in the layout of lm-eval's samples_<task>_<date>.jsonl (strings for the responses, as lm-eval writes them)."""
    lines = [{"doc_id": i, "doc": {"id": r["id"]}, "target": "0",
              "arguments": {f"gen_args_{k}": {"arg_0": r["context"], "arg_1": c} for k, c in enumerate(r["continuations"])},
              "filtered_resps": [[str(ll), str(g)] for ll, g in zip(r["loglik"], r["is_greedy"])]} for i, r in enumerate(records)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_quirky_cti_file_end_to_end_with_out_and_compare(tiny_model_dir, tmp_path, capsys, caplog):
    """The issue's case: a CTI-MCQ file with an empty option and broken rows scores, says what it skipped, and diffs."""
    from fluxforge.cli import main

    path, n, skipped = write_quirky(tmp_path, "cti-mcq")
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tiny_model_dir), "--task", str(path), "--out", str(out), "--lm-eval-task", str(tmp_path / "lm")])
    printed = capsys.readouterr().out
    assert exit_.value.code == 0 and f"skipped {len(skipped)} row(s)" in printed and "lm_eval --model hf" in printed
    assert all(f"line {row} skipped" in caplog.text for row, _ in skipped)
    res = json.loads(out.read_text())
    assert (res["n_scored"], res["n_skipped"]) == (n, len(skipped)) and res["skip_reasons"] == dict(Counter(w for _, w in skipped))
    assert [(s["row"], s["reason"]) for s in res["skipped"]] == skipped
    empty = next(r for r in res["questions"] if r["row"] == 23)
    assert empty["continuations"][3] == " " and empty["loglik"][3] < 0
    lm_task = [json.loads(x) for x in (tmp_path / "lm" / "questions.jsonl").read_text().splitlines()]
    assert [(t["id"], t["question"], [" " + o for o in t["options"]]) for t in lm_task] == \
        [(r["id"], r["context"], r["continuations"]) for r in res["questions"]]

    def compare(records: list[dict]) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--model", str(tiny_model_dir), "--task", str(path), "--compare",
                  str(_samples_file(tmp_path / "samples.jsonl", records))])
        return exit_.value.code, capsys.readouterr().out

    code, printed = compare(res["questions"][::-1])  # another order: questions pair by their requests
    assert code == 0 and f"{n} of {n} questions paired" in printed and "identical" in printed
    changed = [dict(r) for r in res["questions"][1:]]
    changed[0]["loglik"] = [changed[0]["loglik"][0] - 2e-4, *changed[0]["loglik"][1:]]
    loser = next(k for k in range(4) if LETTERS[k] not in (changed[1]["pred"], changed[1]["pred_norm"]))
    changed[1]["loglik"] = [v + 50 * (k == loser) for k, v in enumerate(changed[1]["loglik"])]  # now it wins both
    code, printed = compare(changed)
    assert code == 1 and "DIFFERENT" in printed and "unpaired: 1 of ours" in printed and "max |loglik ours - lm-eval| = 5.00e+01" in printed
    for metric in ("acc", "acc_norm"):
        assert f"{metric} choices differ on 1 question(s): ['{changed[1]['id']}']" in printed


def test_eval_command_refuses_what_lm_eval_refuses_with_the_reason(tiny_model_dir, tmp_path, capsys):
    """An option longer than --max-length cannot be scored by lm-eval either: exit 2 naming it, no traceback."""
    from fluxforge.cli import main

    task_file, _ = write_task(tmp_path, "cybermetric", n=4)
    for length, why in (("3", "' control a000 of the plan' has"), ("0", "--max-length must be at least 1")):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--model", str(tiny_model_dir), "--task", str(task_file), "--max-length", length])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and why in err and "Traceback" not in err, err
