"""Our multiple-choice scoring equals lm-evaluation-harness 0.4.13's, request by request, for any tokenizer.

Why: the pipeline's accuracies (and the promotion gate) come from ``score_mcq``, and ``fluxforge eval``
scores the checkpoints users bring; those numbers are only comparable with published ones if they
are lm-eval's numbers. lm-eval chooses what goes in front of a context from the tokenizer (BOS when
the tokenizer adds one, nothing otherwise), so one tokenizer proves little: the test builds three
families from the project's own world text with ``tokenizers`` and saves each as such checkpoints
ship (tokenizer class, special tokens, post-processor), next to a tiny briefly trained model of the
matching architecture:

* Llama-style: ``<s>`` = 0 is BOS, ``</s>`` = 1 is EOS, the post-processor adds ``<s>`` (Llama 3's layout);
* GPT-2-style: ``<|endoftext|>`` is BOS and EOS, nothing added (also this project's own tokenizer);
* Qwen2-style: no BOS at all, ``<|endoftext|>`` is EOS, Qwen2's pre-tokenizer regex.

lm-eval runs in-process (``HFLM`` on the saved directory, default model arguments, a local task over
the same questions, no network); we load the directory as ``fluxforge eval`` does. Every option's
log-likelihood must be within 1e-4 of lm-eval's, and is_greedy, the acc / acc_norm choices and
verdicts identical. The questions hold the corners of request building: empty options, contexts
that need left truncation (the models have 64 positions), long options, whitespace at the ends of
contexts and options (spaces, tabs, newlines, NBSP, ideographic space), contexts that start with the
prefix token's text, empty contexts, and options of very different lengths (acc and acc_norm differ).
lm-eval's ``add_bos_token`` and ``max_length`` are checked too, on a subset of the questions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from fluxforge.config import load_params
from fluxforge.eval.lm_eval_samples import compare_samples, read_lm_eval_samples
from fluxforge.eval.lm_eval_task import write_lm_eval_task
from fluxforge.eval.scoring import TARGET_DELIMITER, mcq_predictions, request_tokens, resolve_max_length, score_mcq
from fluxforge.train.model import build_model, load_model
from fluxforge.world.generate import WorldBuilder
from tiny import tiny_config

pytestmark = pytest.mark.slow  # about a minute on 2 shared cores: three tokenizers, models and lm-eval runs

TASK = "fluxforge_mcq_parity"
TOL = 1e-4
POSITIONS = 64
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
FAMILIES = {  # special tokens, the names transformers gets, the tokenizer class checkpoints name, the architecture
    "llama": {"special": ["<s>", "</s>"], "names": {"bos_token": "<s>", "eos_token": "</s>"},
              "class": "PreTrainedTokenizerFast", "arch": "llama"},
    "gpt2": {"special": ["<|endoftext|>"],
             "names": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
             "class": "GPT2Tokenizer", "arch": "gpt2"},
    "qwen2": {"special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "names": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, "class": "Qwen2Tokenizer", "arch": "qwen2"},
}
# lm-eval model arguments other than the defaults, each checked on one family and the first questions
SETTINGS = [("llama", {"add_bos_token": False}), ("gpt2", {"add_bos_token": True, "max_length": 56}),
            ("qwen2", {"add_bos_token": True})]
WHITESPACE = [lambda o: o + " ", lambda o: "  " + o, lambda o: o.replace(" ", "  ") + "\t", lambda o: "\u00a0" + o,
              lambda o: o + "\n", lambda o: " ", lambda o: o + "\u3000", lambda o: "\n" + o]
CONTEXT_TAILS = ["", " ", "  ", "\n", "\t\n ", "\u00a0", " \u3000"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the models are tiny, and on 2 shared cores a second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world() -> WorldBuilder:
    w = WorldBuilder(load_params(Path(__file__).parents[1] / "params.yaml", profile="tiny").world)
    w.build_facts()
    w.build_docs()
    return w


def _tokenizer(family: str, texts: list[str], folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``family`` trained on ``texts``, saved into ``folder`` as such checkpoints ship."""
    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family != "qwen2")
    tok.pre_tokenizer = byte_level if family != "qwen2" else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=spec["special"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if family == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **spec["names"])
    wrapped.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": spec["class"]}))
    return wrapped


def _model(family: str, vocab: int, eos: int) -> torch.nn.Module:
    if family == "gpt2":
        cfg = tiny_config()
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=POSITIONS, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
                                          n_head=cfg.num_heads, bos_token_id=eos, eos_token_id=eos))
    return build_model(tiny_config(architecture=FAMILIES[family]["arch"], max_position_embeddings=POSITIONS), vocab, eos, eos)


def _train(model: torch.nn.Module, tok: PreTrainedTokenizerFast, texts: list[str]) -> None:
    """A few steps on EOS-separated documents: distinct, non-uniform option scores (ties would make choices arbitrary)."""
    ids = [t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in [*ids, tok.eos_token_id]]
    stream = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        starts = torch.randint(0, len(stream) - POSITIONS - 1, (8,), generator=gen).tolist()
        batch = torch.stack([stream[s : s + POSITIONS + 1] for s in starts])
        loss = F.cross_entropy(model(input_ids=batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _questions(world: WorldBuilder, prefix_text: str) -> list[dict]:
    """Five variants of each world question (300 in all) covering the corners listed in the module docstring."""
    docs = [d.text for d in world.docs]
    rng = random.Random(7)
    out = []
    for i, q in enumerate(world.build_mcq()):
        ctx, opts, ans = q["question"], list(q["options"]), q["answer"]
        wrong = [j for j in range(len(opts)) if j != ans]
        out.append({"id": f"plain-{i}", "question": ctx, "options": opts, "answer": ans})
        empty = list(opts)
        empty[wrong[i % 3]] = ""
        if i % 5 == 0:  # the right option empty too: its acc_norm score is -inf, as in lm-eval
            empty[ans] = ""
        elif i % 5 == 1:
            empty[wrong[(i + 1) % 3]] = ""
        out.append({"id": f"empty-{i}", "question": ctx, "options": empty, "answer": ans})
        spaced = [WHITESPACE[(i + k) % len(WHITESPACE)](o) for k, o in enumerate(opts)]
        out.append({"id": f"space-{i}", "question": ["", "  ", "\n"][i % 3] + ctx + CONTEXT_TAILS[i % len(CONTEXT_TAILS)],
                    "options": spaced, "answer": ans})
        story = " ".join(docs[(i + k) % len(docs)] for k in range(1 + i % 3))  # about 60 to 400 tokens: most need truncation
        long_opts = list(opts)
        if i % 3 == 0:
            long_opts[wrong[0]] = f"{opts[wrong[0]]}, {docs[i % len(docs)][:60]}"
        out.append({"id": f"long-{i}", "question": f"{story}\n{ctx}", "options": long_opts, "answer": ans})
        if i % 4 == 0:  # options of very different lengths: acc and acc_norm choose differently
            misc = [opts[ans], "X", "no", f"{opts[wrong[0]]} and {opts[wrong[1]]}"]
            rng.shuffle(misc)
            out.append({"id": f"lengths-{i}", "question": ctx, "options": misc, "answer": misc.index(opts[ans])})
        elif i % 4 == 1:  # the context starts with the prefix token's text: lm-eval then adds no special tokens
            out.append({"id": f"prefixed-{i}", "question": prefix_text + ctx, "options": opts, "answer": ans})
        elif i % 4 == 2:
            uni = [f"{opts[0]} \u00fcber", f"\u65e5\u672c {opts[1]}", f"{opts[2]} \U0001f512", f"\u00ab{opts[3]}\u00bb"]
            out.append({"id": f"unicode-{i}", "question": ctx, "options": uni, "answer": ans})
        else:  # an empty context is lm-eval's prefix token
            out.append({"id": f"no-context-{i}", "question": "" if i % 8 == 3 else ctx.removeprefix("Question: "),
                        "options": opts, "answer": ans})
    return out


@pytest.fixture(scope="module")
def checkpoints(world: WorldBuilder, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a function
    """``family -> (model directory, questions)``: a tokenizer and a trained tiny model saved as one HF directory, made once."""
    made: dict[str, tuple[Path, list[dict]]] = {}

    def get(name: str) -> tuple[Path, list[dict]]:
        if name not in made:
            folder = tmp_path_factory.mktemp(name) / "model"
            texts = [d.text for d in world.docs]
            tok = _tokenizer(name, texts, folder)
            model = _model(name, len(tok), tok.eos_token_id)
            _train(model, tok, texts)
            model.save_pretrained(folder, safe_serialization=True)
            prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            made[name] = folder, _questions(world, tok.decode(prefix))
        return made[name]

    return get


def _lm_eval(folder: Path, questions: list[dict], tmp: Path, task_dir: Path | None = None, task: str = TASK,
             **model_args: object) -> tuple[dict, dict]:
    """lm-eval's samples by question id, and its aggregate results, for ``HFLM(folder, **model_args)``.

    The task is ``questions`` written with ``write_lm_eval_task``, or ``task`` found in ``task_dir`` when given.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if task_dir is None:
        task_dir = write_lm_eval_task(questions, tmp / "task", task)
    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=64, **model_args)
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    samples = {s["doc"]["id"]: s for s in res["samples"][task]}
    assert len(samples) == len(questions) or not questions
    return samples, res


def _assert_same(questions: list[dict], ours: list[dict], samples: dict) -> float:
    """Every option within TOL, is_greedy, choices and verdicts identical; returns the largest difference."""
    worst = 0.0
    for q, r in zip(questions, ours, strict=True):
        s = samples[q["id"]]
        theirs = np.array([float(ll) for ll, _ in s["filtered_resps"]])
        worst = max(worst, float(np.abs(theirs - np.array(r["loglik"])).max()))
        np.testing.assert_allclose(r["loglik"], theirs, rtol=0, atol=TOL, err_msg=q["id"])
        assert r["is_greedy"] == [bool(g) for _, g in s["filtered_resps"]], q["id"]
        assert (r["pred"], r["pred_norm"]) == mcq_predictions(theirs, q["options"]), q["id"]
        assert (r["correct"], r["correct_norm"]) == (bool(s["acc"]), bool(s["acc_norm"])), q["id"]
    return worst


@pytest.mark.parametrize("name", list(FAMILIES))
def test_scores_equal_lm_eval_for_each_tokenizer_family(name: str, checkpoints, tmp_path: Path,  # noqa: ANN001
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # nothing may download (conftest sets HF_HUB_OFFLINE)
    from lm_eval.loggers import EvaluationTracker

    folder, questions = checkpoints(name)
    samples, res = _lm_eval(folder, questions, tmp_path)
    model, tok = load_model(folder)  # as `fluxforge eval` loads it
    ours = score_mcq(model, tok, questions, batch_size=16)
    worst = _assert_same(questions, ours, samples)
    agg = res["results"][TASK]
    assert np.mean([r["correct"] for r in ours]) == pytest.approx(agg["acc,none"])
    assert np.mean([r["correct_norm"] for r in ours]) == pytest.approx(agg["acc_norm,none"])
    print(f"{name}: {len(questions)} questions, {sum(len(q['options']) for q in questions)} options: max |lm-eval - ours| = "
          f"{worst:.1e} nats; acc {agg['acc,none']:.3f}, acc_norm {agg['acc_norm,none']:.3f}")

    # the questions reach every corner: the family's prefix, truncation, empty options, acc_norm choosing otherwise
    reqs = request_tokens(tok, [q["question"] for q in questions if q["id"].startswith("plain")], [" x"] * 60)
    assert all((ctx[0] == tok.bos_token_id) == (name == "llama") for ctx, _ in reqs)
    max_len = resolve_max_length(model, tok)
    every = request_tokens(tok, [q["question"] for q in questions for _ in q["options"]],
                           [TARGET_DELIMITER + o for q in questions for o in q["options"]])
    assert sum(len(c) + len(x) > max_len + 1 for c, x in every) > 50
    assert sum(o == "" for q in questions for o in q["options"]) > 60
    assert any(r["pred"] != r["pred_norm"] for r in ours)
    # and the prefix matters: putting EOS in front (our old rule) moves the scores far beyond the tolerance
    eos_first = score_mcq(model, tok, [{**q, "question": tok.eos_token + q["question"]} for q in questions[:40]], batch_size=16)
    moved = [abs(a - b) for r, f in zip(ours, eos_first) for a, b in zip(r["loglik"], f["loglik"])]
    assert np.median(moved) > 10 * TOL

    # lm-eval's own --log_samples file against our per-question records: what `fluxforge eval --compare` reports
    tracker, samples_by_task = EvaluationTracker(output_path=str(tmp_path / "out" / "results.json")), res.pop("samples")
    tracker.save_results_aggregated(results=res, samples=samples_by_task)  # as `lm_eval --log_samples` does
    tracker.save_results_samples(task_name=TASK, samples=samples_by_task[TASK])
    (path,) = (tmp_path / "out").glob(f"samples_{TASK}_*.jsonl")
    records = [{**r, "context": q["question"], "continuations": [TARGET_DELIMITER + o for o in q["options"]]}
               for q, r in zip(questions, ours, strict=True)]
    diff = compare_samples(records, read_lm_eval_samples(path))
    assert diff["identical"] and diff["matched"] == len(questions) and diff["max_abs_loglik_diff"] == pytest.approx(worst, abs=1e-9)


@pytest.mark.parametrize(("name", "args"), SETTINGS, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in a.items())}" for n, a in SETTINGS])
def test_lm_eval_model_arguments_are_ours(name: str, args: dict, checkpoints, tmp_path: Path,  # noqa: ANN001
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``add_bos_token`` and ``max_length`` mean what they mean to ``HFLM``."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, questions = checkpoints(name)
    questions = questions[:100]
    samples, _ = _lm_eval(folder, questions, tmp_path, **args)
    model, tok = load_model(folder)
    _assert_same(questions, score_mcq(model, tok, questions, batch_size=16, **args), samples)


def test_fluxforge_eval_on_a_quirky_cti_file_equals_lm_eval(checkpoints, world: WorldBuilder, tmp_path: Path,  # noqa: ANN001
                                                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case end to end: a Llama-style checkpoint, a CTI-MCQ file with empty options and broken rows.

    ``fluxforge eval --lm-eval-task`` writes what it scored as an lm-eval task, lm-eval scores that task and
    writes its samples file as ``lm_eval --log_samples`` does, and ``fluxforge eval --compare`` finds no difference.
    """
    from lm_eval.loggers import EvaluationTracker

    from fluxforge.cli import main
    from fluxforge.eval.tasks import CTI_COLUMNS, LETTERS

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, _ = checkpoints("llama")
    rows = []
    for i, q in enumerate(world.build_mcq()[:40]):
        options = list(q["options"])
        if i % 5 == 0:
            options[(q["answer"] + 1) % 4] = ""  # as on some lines of the published file
        stem = q["question"].removeprefix("Question: ").removesuffix("\nAnswer:")
        rows.append([f"https://x/{i}", "" if i == 7 else stem, *options, "Prompt", "E" if i == 9 else LETTERS[q["answer"]]])
    rows.append(rows[0][:5])  # a short row
    tsv = tmp_path / "cti-mcq.tsv"
    tsv.write_text("\n".join("\t".join(r) for r in [list(CTI_COLUMNS), *rows]) + "\n")

    def fluxforge_eval(*extra: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--model", str(folder), "--task", str(tsv), "--out", str(tmp_path / "ours.json"), *extra])
        return exit_.value.code, capsys.readouterr().out

    code, printed = fluxforge_eval("--lm-eval-task", str(tmp_path / "lm"))
    assert code == 0 and "skipped 3 row(s)" in printed
    samples, res = _lm_eval(folder, [], tmp_path, task_dir=tmp_path / "lm", task="fluxforge_cti_mcq")
    tracker, by_task = EvaluationTracker(output_path=str(tmp_path / "out" / "results.json")), res.pop("samples")
    tracker.save_results_aggregated(results=res, samples=by_task)
    tracker.save_results_samples(task_name="fluxforge_cti_mcq", samples=by_task["fluxforge_cti_mcq"])
    (path,) = (tmp_path / "out").glob("samples_fluxforge_cti_mcq_*.jsonl")
    code, printed = fluxforge_eval("--compare", str(path))
    assert code == 0 and "38 of 38 questions paired" in printed and "identical" in printed, printed
    ours = json.loads((tmp_path / "ours.json").read_text())
    assert ours["compare"]["identical"] and ours["metrics"]["acc"] == pytest.approx(res["results"]["fluxforge_cti_mcq"]["acc,none"])
