"""CLIP from a config (HF ``CLIPModel(CLIPConfig(...))``) and its contrastive objective.

The loss is the symmetric InfoNCE of CLIP with FoMo-in-Flux's class-CLIP targets: two pairs whose captions are
identical are both positives of each other, so a row of the target matrix spreads its mass evenly over every
pair with the same caption (a row sums to 1) instead of pretending that only the diagonal matches.

The text tower pools at the EOS token. HF CLIP keeps a legacy path for ``eos_token_id == 2`` that pools at the
highest token id instead (in a trial zero-shot accuracy fell from 0.40 to 0.12), so :func:`clip_config` refuses
that id; the caption tokenizer (fluxforge.data.captions) writes EOS as id 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from fluxforge.config import CLIPSettings
from fluxforge.errors import FluxForgeError
from fluxforge.train.loop import Objective
from fluxforge.train.sampler import Batch

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned temperature at 100


class ClipConfigError(FluxForgeError, ValueError):
    """A CLIP text config that would train or pool wrongly; the message says which id and why."""


def clip_config(cfg: CLIPSettings, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> CLIPConfig:
    if eos_id == 2:
        raise ClipConfigError("text eos_token_id is 2: HF CLIP then pools each caption at its highest token id "
                              "(the legacy path) instead of at the EOS; give EOS another id")
    if not 0 <= eos_id < vocab_size:
        raise ClipConfigError(f"text eos_token_id {eos_id} is outside the vocabulary of {vocab_size} ids")
    v, t = cfg.vision, cfg.text
    text = dict(vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                max_position_embeddings=t.max_position_embeddings, pad_token_id=pad_id, bos_token_id=bos_id,
                eos_token_id=eos_id, dropout=0.0, attention_dropout=0.0)
    vision = dict(image_size=v.image_size, patch_size=v.patch_size, num_channels=3, hidden_size=v.hidden_size,
                  intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                  dropout=0.0, attention_dropout=0.0)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim,
                      logit_scale_init_value=cfg.logit_scale_init)


def new_clip(cfg: CLIPSettings, tok: PreTrainedTokenizerBase) -> CLIPModel:
    """A freshly initialised CLIP for captions written by ``tok`` (its special ids go into the text config)."""
    config = clip_config(cfg, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = CLIPModel(config)
    if model.text_model.eos_token_id != tok.eos_token_id:  # the pooling reads the id from the built module
        raise ClipConfigError(f"the text tower pools at id {model.text_model.eos_token_id}, the tokenizer's EOS is "
                              f"{tok.eos_token_id}")
    return model


def multi_positive_targets(keys: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` targets: 1 where two pairs share a caption key, each row normalised to sum 1."""
    same = (keys[:, None] == keys[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(logits_per_image: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets: image->text rows and text->image rows (the transpose)."""
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.t(), targets.t()))


@dataclass(frozen=True)
class ClipData:
    """Image-caption pairs: pixels ``(N, 3, S, S)``, token ids and attention ``(N, T)``, caption keys ``(N,)``."""

    pixels: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keys: torch.Tensor


def caption_keys(captions: list[str]) -> torch.Tensor:
    """An integer per distinct caption (identical captions share it)."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in captions], dtype=torch.long)


def clip_objective(data: ClipData) -> Objective:
    """The loop's objective: ``batch.tokens[:, 0]`` indexes the pairs."""

    def loss(model: CLIPModel, batch: Batch) -> torch.Tensor:
        idx = batch.tokens[:, 0]
        out = model(input_ids=data.input_ids[idx], attention_mask=data.attention_mask[idx], pixel_values=data.pixels[idx])
        return contrastive_loss(out.logits_per_image, multi_positive_targets(data.keys[idx]))

    return loss


def clamp_temperature(_step: int, model: torch.nn.Module) -> None:
    """After each step: the learned logit scale stays at or below log(100), as in CLIP."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
