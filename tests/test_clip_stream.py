"""The image-text stream (``mm_stream``, fluxforge.continual.clip_stream): FoMo's items, ordering files and chunks,
the reservoir, the replay / update / buffer batches, its params, and every method run end to end on a tiny CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import CLIPModel

from fluxforge.config import CLIPSettings, CLIPText, CLIPVision, MMConfig, MMStream, MMTrain
from fluxforge.continual.clip_stream import (
    ClipStreamError,
    MixtureSampler,
    Reservoir,
    Scorer,
    StreamData,
    item_name,
    measure_budget,
    order_items,
    parse_item,
    read_order_file,
    run_method,
    stream_claims,
    stream_tasks,
    summarize,
)
from fluxforge.data.captions import caption_tokenizer, encode_captions
from fluxforge.data.images import ImageSet
from fluxforge.train.clip import ClipData, caption_keys, new_clip
from fluxforge.world.images import vocabulary

ITEMS = [item_name(2, c) for c in ("red star", "green star", "blue star", "orange circle")] + \
        [item_name(3, c) for c in ("yellow ring", "cyan cross", "blue square")]
HELD_OUT = ["red cross", "green triangle"]


# ----------------------------------------------------------------------------- items, orderings, tasks
def test_items_are_fomo_strings_and_anything_else_is_refused():
    assert item_name(2, "red star") == "shapes-s2+++red star" and parse_item("shapes-s3+++blue square") == (3, "blue square")
    for bad in ("shapes-s2red star", "digits-s2+++red star", "shapes-sx+++red star", "shapes-s2+++"):
        with pytest.raises(ValueError, match="is not 'shapes-s<slice>"):
            parse_item(bad)


def test_the_tasks_are_fomos_chunks_disjoint_and_covering_the_first_ones_longer():
    tasks = stream_tasks(ITEMS, 3, HELD_OUT)
    assert [len(t) for t in tasks] == [3, 2, 2]  # 7 % 3 = 1: the first task gets one more
    assert [i for t in tasks for i in t] == ITEMS
    assert stream_tasks(ITEMS, 1, HELD_OUT) == [ITEMS]


@pytest.mark.parametrize("items, num_tasks, error", [
    (ITEMS, 8, r"mm.stream.num_tasks: cannot cut a stream of 7 items into 8 tasks"),  # a task would be empty
    (ITEMS[:3] + [item_name(3, "red star")], 2, r"concept 'red star' is in task 1 and task 2"),
    (ITEMS[:3] + [item_name(2, "red cross")], 2, r"task 2 holds 'red cross', a held-out concept"),
])
def test_an_empty_task_a_concept_in_two_tasks_or_a_held_out_concept_is_refused(items, num_tasks, error):
    with pytest.raises(ClipStreamError, match=error):
        stream_tasks(items, num_tasks, HELD_OUT)


def test_orderings_given_reverse_random_and_a_fomo_ordering_file(tmp_path):
    cfg = MMStream()
    assert order_items(ITEMS, cfg, HELD_OUT) == ITEMS
    assert order_items(ITEMS, cfg.model_copy(update={"ordering": "reverse"}), HELD_OUT) == ITEMS[::-1]
    shuffled = order_items(ITEMS, cfg.model_copy(update={"ordering": "random"}), HELD_OUT)
    assert sorted(shuffled) == sorted(ITEMS) and shuffled != ITEMS
    assert shuffled == order_items(ITEMS, cfg.model_copy(update={"ordering": "random"}), HELD_OUT)  # seeded
    assert shuffled != order_items(ITEMS, cfg.model_copy(update={"ordering": "random", "seed": 1}), HELD_OUT)
    path = tmp_path / "order.json"
    path.write_text(json.dumps([ITEMS[4], ITEMS[0], ITEMS[2]]))  # FoMo's format; a subset is a shorter stream
    assert order_items(ITEMS, cfg.model_copy(update={"order_file": str(path)}), HELD_OUT) == [ITEMS[4], ITEMS[0], ITEMS[2]]


@pytest.mark.parametrize("content, error", [
    (None, "no such file"),
    ("[not json", "not valid JSON"),
    ('{"a": 1}', "must be a non-empty JSON list"),
    ("[]", "must be a non-empty JSON list"),
    (json.dumps([ITEMS[0], 3]), "item 1: 3 is not a string"),
    (json.dumps([ITEMS[0], "shapes-s2:red star"]), "item 1: 'shapes-s2:red star' is not 'shapes-s<slice>"),
    (json.dumps([ITEMS[0], ITEMS[1], ITEMS[0]]), "item 2: 'shapes-s2\\+\\+\\+red star' is listed twice"),
    (json.dumps([item_name(1, "red cross")]), "item 0: 'red cross' is a held-out concept"),
    (json.dumps([ITEMS[0], item_name(2, "cyan star")]), "item 1: 'shapes-s2\\+\\+\\+cyan star' is not in the stream's curated data"),
])
def test_a_bad_ordering_file_names_the_key_the_file_and_the_item(tmp_path, content, error):
    path = tmp_path / "order.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClipStreamError, match=f"mm.stream.order_file: {path}.*{error}"):
        read_order_file(path, ITEMS, HELD_OUT)


# ----------------------------------------------------------------------------- buffer and batches
def test_the_reservoir_keeps_capacity_items_a_uniform_sample_of_all_it_saw():
    r = Reservoir(10, seed=0)
    r.add(range(5))
    assert r.items == [0, 1, 2, 3, 4] and r.seen == 5
    r.add(range(5, 1000))
    assert len(r.items) == 10 and len(set(r.items)) == 10 and r.seen == 1000
    # uniform: over many seeds every offered item is kept with probability capacity / seen
    kept = np.zeros(100)
    for seed in range(400):
        res = Reservoir(10, seed)
        res.add(range(100))
        kept[res.items] += 1
    assert abs(kept[:50].mean() - kept[50:].mean()) < 4 and kept.mean() == pytest.approx(40)  # 400 x 10 / 100


def test_a_batch_mixes_replay_update_and_buffer_and_the_empty_buffer_share_goes_to_the_update():
    pools = {"replay": np.arange(0, 100), "update": np.arange(100, 150), "buffer": np.arange(150, 170)}
    shares = {"replay": 0.33, "update": 0.34, "buffer": 0.33}
    s = MixtureSampler(pools, shares, 64, 16, seed=0, task=1)
    assert s.counts == {"replay": 21, "buffer": 21, "update": 22}
    idx = s.batch(5).tokens[:, 0].numpy()
    assert len(idx) == 64 and ((idx < 100).sum(), ((idx >= 100) & (idx < 150)).sum(), (idx >= 150).sum()) == (21, 22, 21)
    assert torch.equal(s.batch(5).tokens, MixtureSampler(pools, shares, 64, 16, 0, 1).batch(5).tokens)  # pure in step
    assert not torch.equal(s.batch(5).tokens, s.batch(6).tokens)
    first = MixtureSampler({**pools, "buffer": np.array([], dtype=np.int64)}, shares, 64, 16, 0, 0)
    assert first.counts == {"replay": 21, "update": 43}
    alone = MixtureSampler({"update": pools["update"]}, {"update": 1.0}, 64, 16, 0, 0)
    assert alone.counts == {"update": 64} and alone.signature() != s.signature()


# ----------------------------------------------------------------------------- params
@pytest.mark.parametrize("stream, error", [
    ({"mixture": {"replay": 0.5, "update": 0.5, "buffer": 0.2}}, r"mm.stream.mixture: replay \+ update \+ buffer = .* must sum to 1"),
    ({"mixture": {"replay": 0.5, "update": 0.0, "buffer": 0.5}}, "mm.stream.mixture.update is 0"),
    ({"methods": ["finetune", "sgd"]}, r"mm.stream.methods\[1\]: unknown method 'sgd'"),
    ({"methods": ["finetune", "finetune"]}, "lists a method twice"),
    ({"deploy": "lora", "methods": ["finetune"]}, "mm.stream.deploy: 'lora' is not one of"),
    ({"methods": ["ema_merge"], "deploy": "ema_merge", "merge": {"method": "ema"}}, "merges as part of training"),
    ({"slices": [1, 2]}, r"mm.stream.slices \[1, 2\] repeat slice\(s\) \[1\] of mm.clip.slices"),
])
def test_bad_stream_params_fail_naming_the_key(stream, error):
    with pytest.raises(ValidationError, match=error):
        MMConfig.model_validate({"stream": stream})


# ----------------------------------------------------------------------------- the runs, on a tiny CLIP
CLIP = CLIPSettings(vision=CLIPVision(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                    text=CLIPText(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=24),
                    projection_dim=8)


def _set(concepts: list[str], per: int, rng: np.random.Generator, digits: bool = False) -> ImageSet:
    names = [c for c in concepts for _ in range(per)]
    caps = [f"a handwritten digit {c.split()[1]}" if digits else f"a {c}" for c in names]
    return ImageSet([f"i{k}" for k in range(len(names))], rng.standard_normal((len(names), 3, 8, 8)).astype(np.float32),
                    caps, names, np.zeros(len(names), dtype=int), ["test"] * len(names))


@pytest.fixture(scope="module")
def tiny():  # noqa: ANN201
    tok = caption_tokenizer(vocabulary(), 24)
    rng = np.random.default_rng(0)
    replay = _set(["red circle", "blue square"], 8, rng)
    train = {i: _set([parse_item(i)[1]], 8, rng) for i in ITEMS[:4]}
    captions = replay.captions + [c for s in train.values() for c in s.captions]
    ids, att = encode_captions(tok, captions)
    pixels = np.concatenate([replay.pixels, *(s.pixels for s in train.values())])
    pairs = ClipData(torch.from_numpy(pixels), torch.from_numpy(ids), torch.from_numpy(att), caption_keys(captions))
    items, start = {}, len(replay)
    for i, s in train.items():
        items[i], start = np.arange(start, start + len(s)), start + len(s)
    data = StreamData(pairs, np.arange(len(replay)), items, {i: _set([parse_item(i)[1]], 3, rng) for i in ITEMS[:4]},
                      _set(["red circle", "blue square"], 3, rng), _set(["digit one", "digit two"], 3, rng, digits=True))
    tasks = stream_tasks(ITEMS[:4], 2, HELD_OUT)
    cfg = MMStream(train=MMTrain(steps=4, batch_size=8, warmup_steps=1, log_every=2, checkpoint_every=2), buffer_size=6)
    return tok, data, tasks, cfg, new_clip(CLIP, tok), Scorer(data, tasks, tok, 64)


def test_the_budget_gives_lora_more_steps_and_a_merge_full_finetunings(tiny):
    tok, data, tasks, cfg, base, _ = tiny
    rows = {r.method: r for r in measure_budget(cfg, base, data, tasks, 4)}
    assert set(rows) == {"finetune", "lora", "ema_merge"}  # no_replay is full finetuning: not measured twice
    assert rows["finetune"].steps == {"task1": 4, "task2": 4} and rows["ema_merge"].steps == rows["finetune"].steps
    assert rows["lora"].memory_multiplier < 1 and rows["lora"].flops < rows["finetune"].flops
    assert all(n > 4 for n in rows["lora"].steps.values())
    tokens = {r.method: r for r in measure_budget(cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"kind": "tokens"})}),
                                                  base, data, tasks, 4)}
    assert tokens["lora"].steps == {"task1": 4, "task2": 4}


@pytest.mark.parametrize("run", ["finetune", "no_replay", "lora", "ema_merge"])
def test_each_method_runs_the_stream_and_gives_a_finite_matrix_and_a_plain_clip(tiny, in_tmp, run):
    tok, data, tasks, cfg, base, scorer = tiny
    before = {k: v.clone() for k, v in base.state_dict().items()}
    budget = {r.method: r for r in measure_budget(cfg, base, data, tasks, 4)}
    result = run_method(run, cfg, base, data, tasks, scorer, budget, 4)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the base model is never trained
    assert type(result.final) is CLIPModel  # adapters merged in: a plain HF CLIP
    s = summarize(result, scorer.columns)
    assert scorer.columns == ["task1", "task2", "base", "digits"]
    assert np.array(s["matrix"]).shape == (3, 4) and np.isfinite(s["matrix"]).all()
    assert s["steps"] == {t: budget[cfg.settings_for(run).method].steps[t] for t in ("task1", "task2")}
    assert s["method"]["replay"] == (run != "no_replay") and len(s["retrieval"]) == 3
    if run == "no_replay":  # the task alone
        assert all(b == {"update": 8} for b in s["batches"].values())
    else:  # the first task has no buffer yet; the second replays the first's pairs from it
        assert s["batches"] == {"task1": {"replay": 2, "update": 6}, "task2": {"replay": 2, "buffer": 2, "update": 4}}
    assert not any(torch.equal(v, result.final.state_dict()[k]) for k, v in before.items() if k.endswith("q_proj.weight"))


def test_ema_merge_deploys_the_half_merge_of_the_run_and_the_task_model(tiny, in_tmp):
    tok, data, tasks, cfg, base, scorer = tiny
    one = cfg.model_copy(update={"methods": ["ema_merge"], "deploy": "ema_merge"})
    budget = {r.method: r for r in measure_budget(one, base, data, tasks[:1], 4)}
    merged = run_method("ema_merge", one, base, data, tasks[:1], scorer, budget, 4).final
    plain = run_method("finetune", one, base, data, tasks[:1], scorer, budget, 4).final  # the same task model
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, 0.5 * base.state_dict()[k] + 0.5 * plain.state_dict()[k], atol=1e-6), k


def test_the_claims_hold_or_fail_on_their_numbers():
    def run(ka0: float, ka: float, zs: float, geo: float) -> dict:
        return {"metrics": {"a_ka_curve": [ka0, ka], "a_zs": zs, "geometric_mean": geo}}

    ok = stream_claims({"finetune": run(0.05, 0.3, 0.40, 0.34), "no_replay": run(0.05, 0.4, 0.1, 0.2),
                        "ema_merge": run(0.05, 0.2, 0.395, 0.28)})
    assert all(c["holds"] for c in ok.values()) and ok["replay_raises_a_ka"]["rise"] == pytest.approx(0.25)
    bad = stream_claims({"finetune": run(0.05, 0.1, 0.40, 0.2), "no_replay": run(0.05, 0.4, 0.1, 0.21),
                         "ema_merge": run(0.05, 0.2, 0.38, 0.28)})
    assert not any(c["holds"] for c in bad.values())
    assert stream_claims({"lora": run(0, 1, 1, 1)}) == {}


def test_a_nan_loss_stops_the_stream_naming_the_run_task_and_step(tiny, in_tmp):
    from fluxforge.train.image_job import TrainingError

    tok, data, tasks, cfg, base, scorer = tiny
    broken = ClipData(torch.full_like(data.pairs.pixels, float("nan")), data.pairs.input_ids, data.pairs.attention_mask,
                      data.pairs.keys)
    bad = StreamData(broken, data.replay, data.items, data.tests, data.base, data.digits)
    budget = {r.method: r for r in measure_budget(cfg, base, data, tasks, 4)}
    with pytest.raises(TrainingError, match=r"mm_stream: finetune, task1: .*loss became nan at step 0"):
        run_method("finetune", cfg, base, bad, tasks, scorer, budget, 4)

