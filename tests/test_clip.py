"""CLIP from a config: the caption tokenizer, EOS pooling (never the legacy id 2), the projected features of
transformers 5, class-CLIP targets, zero-shot and retrieval scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fluxforge.config import CLIPSettings, CLIPText, CLIPVision
from fluxforge.data.captions import caption_tokenizer, encode_captions
from fluxforge.errors import DataError
from fluxforge.eval.zero_shot import class_embeddings, projected, recall_at, retrieval, text_embeddings, zero_shot
from fluxforge.train.clip import ClipConfigError, clip_config, contrastive_loss, multi_positive_targets, new_clip

VOCAB = ["a", "red", "blue", "green", "circle", "square", "small", "large"]
CFG = CLIPSettings(vision=CLIPVision(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                   text=CLIPText(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=8),
                   projection_dim=8)


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return caption_tokenizer(VOCAB, 8)


def test_captions_become_bos_words_eos_padded_to_the_limit(tok):
    ids, att = encode_captions(tok, ["a red circle", "A LARGE blue square"])
    assert tok.bos_token_id == 2 and tok.eos_token_id == 3 and tok.pad_token_id == 0
    assert ids[0].tolist() == [2, 4, 5, 8, 3, 0, 0, 0] and att[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert ids[1, 5] == 3 and att[1].sum() == 6


@pytest.mark.parametrize("caption, error", [("", "empty"), ("a purple circle", r"outside the vocabulary \['purple'\]"),
                                            ("a small red circle a small red", "needs 9 positions, over the text limit 8")])
def test_a_caption_that_cannot_be_encoded_is_an_error_naming_it(tok, caption, error):
    with pytest.raises(DataError, match=error):
        encode_captions(tok, ["a red circle", caption])


def test_eos_id_2_is_refused(tok):
    with pytest.raises(ClipConfigError, match="eos_token_id is 2: HF CLIP then pools"):
        clip_config(CFG, len(tok), 0, 3, 2)
    assert clip_config(CFG, len(tok), 0, 2, 3).text_config.eos_token_id == 3


def test_text_features_pool_at_the_eos_not_at_the_highest_id(tok):
    """The pitfall: with eos_token_id 2, HF pools at argmax(ids) = the highest word id, not at the EOS."""
    model = new_clip(CFG, tok).eval()
    ids, att = (torch.from_numpy(a) for a in encode_captions(tok, ["a small red circle"]))
    eos = int((ids[0] == tok.eos_token_id).nonzero()[0])
    assert int(ids[0].argmax()) != eos  # "small" has a higher id than EOS: the legacy path would pick it
    with torch.no_grad():
        feats = projected(model.get_text_features(input_ids=ids, attention_mask=att))
        hidden = model.text_model(input_ids=ids, attention_mask=att).last_hidden_state
        assert torch.allclose(feats[0], model.text_projection(hidden[0, eos]), atol=1e-6)
        model.text_model.eos_token_id = 2  # what a config with id 2 builds: the scores change
        legacy = projected(model.get_text_features(input_ids=ids, attention_mask=att))
    assert not torch.allclose(feats, legacy)


def test_projected_reads_pooler_output_and_refuses_other_results():
    emb = torch.randn(2, 4)
    out = BaseModelOutputWithPooling(last_hidden_state=torch.randn(2, 5, 4), pooler_output=emb)
    assert projected(out) is emb and projected(emb) is emb
    with pytest.raises(TypeError, match="no tensor pooler_output"):
        projected(BaseModelOutputWithPooling(last_hidden_state=torch.randn(2, 5, 4)))


def test_multi_positive_targets_rows_sum_to_one_over_identical_captions():
    keys = torch.tensor([0, 1, 0, 2, 0])
    t = multi_positive_targets(keys)
    assert torch.allclose(t.sum(dim=1), torch.ones(5))
    assert torch.allclose(t[0], torch.tensor([1 / 3, 0, 1 / 3, 0, 1 / 3])) and t[1, 1] == 1 and torch.equal(t, t.t())


def test_with_distinct_captions_the_loss_is_clips():
    logits = torch.randn(4, 4)
    targets = multi_positive_targets(torch.arange(4))
    plain = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4)) +
                   torch.nn.functional.cross_entropy(logits.t(), torch.arange(4)))
    assert torch.allclose(contrastive_loss(logits, targets), plain)
    same = multi_positive_targets(torch.tensor([0, 0, 1, 2]))
    assert contrastive_loss(torch.eye(4) * 10 + torch.tensor([[0, 10.0, 0, 0], [10.0, 0, 0, 0], [0] * 4, [0] * 4]), same) < \
        contrastive_loss(torch.eye(4) * 10, same)  # a duplicate caption is rewarded, not punished


def test_zero_shot_and_its_prompt_ensemble(tok):
    model = new_clip(CFG, tok)
    concepts = ["red circle", "blue square"]
    classes = class_embeddings(model, tok, concepts, lambda c: [f"a {c}", f"a small {c}"])
    texts = text_embeddings(model, tok, ["a red circle", "a small red circle"])
    mean = texts.mean(axis=0)
    assert np.allclose(classes[0], mean / np.linalg.norm(mean), atol=1e-6)
    images = np.stack([classes[1], classes[0], classes[1]])  # image embeddings equal to the class embeddings
    zs = zero_shot(images, classes, ["blue square", "red circle", "red circle"], concepts)
    assert zs.accuracy == pytest.approx(2 / 3) and zs.chance == 0.5 and zs.per_concept == {"blue square": 1.0, "red circle": 0.5}
    conf = zs.confusion(["blue square", "red circle", "red circle"], concepts)
    assert conf["counts"] == [[0, 1], [1, 1]] and conf["rows"] == ["blue square", "red circle"]
    with pytest.raises(ValueError, match="outside the label space"):
        zero_shot(images, classes, ["green circle"] * 3, concepts)


def test_retrieval_counts_identical_captions_and_knows_its_chance():
    sim = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.0], [0.0, 0.0, 1.0]])
    r1, chance = recall_at(sim, ["x", "x", "y"], ["x", "x", "y"], 1)
    assert r1 == 1.0 and chance == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)  # a duplicate caption is a hit
    r1, _ = recall_at(sim, ["x", "y", "y"], ["x", "y", "y"], 1)
    assert r1 == pytest.approx(1 / 3)
    out = retrieval(np.eye(6), np.eye(6), [str(i) for i in range(6)])
    assert out["image_to_text.R1"] == 1.0 and out["text_to_image.R5_chance"] == pytest.approx(5 / 6)
