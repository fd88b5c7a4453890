"""Our multiple-choice scoring equals lm-evaluation-harness's, question by question.

Why: the pipeline's accuracies (and the promotion gate) come from ``score_mcq``; they are
only comparable with published numbers if they are lm-eval's numbers. The test trains a tiny
model and tokenizer with our code, saves it with ``save_model``, runs lm-eval in-process
(``HFLM`` on the saved directory, a local task over the same questions) and compares every
option's log-likelihood and every acc / acc_norm choice.

lm-eval is run with ``add_bos_token=True``: our tokenizer adds no BOS by itself and its BOS
is the EOS, the document boundary our models train after, so that is the setting in which
lm-eval scores a context the way the model saw documents start (plain ``HFLM`` scores the
context with nothing before it, and its log-likelihoods differ from ours by up to 0.24 nats here).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxforge.config import ModelConfig, load_params
from fluxforge.data.tokenize import encode_stream, train_tokenizer
from fluxforge.eval.lm_eval_task import write_lm_eval_task
from fluxforge.eval.scoring import option_loglikelihoods, score_mcq
from fluxforge.train.model import build_model, load_model, save_model
from fluxforge.world.generate import WorldBuilder

TASK = "fluxforge_mcq_parity"
MODEL = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=64)
TOL = 1e-4


def _questions(world: WorldBuilder) -> list[dict]:
    """World questions plus crafted ones for the request-building corners lm-eval has.

    * options of very different lengths ("X" against two options joined), where acc and acc_norm
      disagree and where counting the delimiter in acc_norm's length changes the choice;
    * contexts that end in a space (lm-eval moves it into the continuation);
    * contexts longer than the model's positions (lm-eval cuts tokens on the left).
    """
    base = world.build_mcq()
    rng = random.Random(7)
    out = [{k: q[k] for k in ("id", "question", "options", "answer")} for q in base[:42]]
    for i, q in enumerate(base[42:52]):
        right = q["options"][q["answer"]]
        others = [o for o in q["options"] if o != right]
        options = [right, "X", "no", f"{others[0]} and {others[1]}"]
        rng.shuffle(options)
        out.append({"id": f"short-long-{i}", "question": q["question"], "options": options, "answer": options.index(right)})
    for i, q in enumerate(base[52:56]):
        out.append({**{k: q[k] for k in ("options", "answer")}, "id": f"trailing-space-{i}", "question": q["question"] + " "})
    for i, q in enumerate(base[56:58]):
        story = " ".join(d.text for d in world.docs[i * 3 : i * 3 + 3])
        out.append({**{k: q[k] for k in ("options", "answer")}, "id": f"too-long-{i}", "question": f"{story}\n{q['question']}"})
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the model is tiny, and on 2 shared cores a second thread mostly waits (10x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A briefly trained tiny model saved with ``save_model``, and the questions."""
    tmp = tmp_path_factory.mktemp("lmeval")
    world = WorldBuilder(load_params(Path(__file__).parents[1] / "params.yaml", profile="tiny").world)
    world.build_facts()
    world.build_docs()
    texts = [d.text for d in world.docs]
    tok = train_tokenizer(texts, 512)
    model = build_model(MODEL, len(tok), tok.eos_token_id, tok.pad_token_id)
    stream = torch.from_numpy(encode_stream(tok, texts).astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):  # enough for distinct, non-uniform option scores and better-than-chance acc
        starts = torch.randint(0, len(stream) - MODEL.max_position_embeddings - 1, (8,), generator=gen).tolist()
        batch = torch.stack([stream[s : s + MODEL.max_position_embeddings + 1] for s in starts])
        loss = F.cross_entropy(model(input_ids=batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model.eval(), tok, tmp / "model", {"note": "lm-eval parity test"})
    return tmp, _questions(world)


def test_scores_equal_lm_eval_question_by_question(setup: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing may download: datasets reads this when lm_eval first imports it (conftest sets HF_HUB_OFFLINE)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tmp, questions = setup
    write_lm_eval_task(questions, tmp / "task", TASK)
    lm = HFLM(pretrained=str(tmp / "model"), device="cpu", batch_size=16, add_bos_token=True)
    res = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(tmp / "task"), include_defaults=False),
                                  log_samples=True, bootstrap_iters=0)
    samples = {s["doc"]["id"]: s for s in res["samples"][TASK]}
    assert len(samples) == len(questions)

    model, tok = load_model(tmp / "model")
    ours = score_mcq(model, tok, questions, batch_size=16)
    ll = option_loglikelihoods(model, tok, [q["question"] for q in questions for _ in q["options"]],
                               [" " + o for q in questions for o in q["options"]], batch_size=16)
    worst, k = 0.0, 0
    for q, r in zip(questions, ours, strict=True):
        s = samples[q["id"]]
        theirs = np.array([resp[0] for resp in s["filtered_resps"]])
        mine = ll[k : k + len(q["options"])]
        k += len(q["options"])
        worst = max(worst, float(np.abs(theirs - mine).max()))
        assert mine == pytest.approx(theirs, abs=TOL), q["id"]
        # lm-eval's own verdicts, and its choices by its rules (api/task.py, process_results)
        assert (r["correct"], r["correct_norm"]) == (bool(s["acc"]), bool(s["acc_norm"])), q["id"]
        assert r["pred"] == int(np.argmax(theirs)), q["id"]
        assert r["pred_norm"] == int(np.argmax(theirs / np.array([len(o) for o in q["options"]]))), q["id"]
    agg = res["results"][TASK]
    assert np.mean([r["correct"] for r in ours]) == pytest.approx(agg["acc,none"])
    assert np.mean([r["correct_norm"] for r in ours]) == pytest.approx(agg["acc_norm,none"])
    print(f"{len(questions)} questions, {len(ll)} options: max |lm-eval - ours| = {worst:.2e} nats; "
          f"acc {agg['acc,none']:.3f}, acc_norm {agg['acc_norm,none']:.3f}")

    # the questions exercise what can go wrong: distinct scores, acc_norm choosing otherwise than acc,
    # and the delimiter counted in acc_norm's length (our old mistake) choosing otherwise than lm-eval
    per_q = ll.reshape(len(questions), 4)
    assert np.ptp(per_q, axis=1).min() > 1e-3
    assert any(r["pred"] != r["pred_norm"] for r in ours)
    with_delim = [int(np.argmax(v / np.array([len(" " + o) for o in q["options"]]))) for q, v in zip(questions, per_q, strict=True)]
    assert any(a != r["pred_norm"] for a, r in zip(with_delim, ours, strict=True))
