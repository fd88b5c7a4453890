"""The tiny causal LM the unit tests train and load: one definition, variants by keyword.

Two layers of width 32 train a step in milliseconds on CPU, yet have every part a real model has
(embeddings, attention, MLP, norms, a head), so what passes here runs on the DAG's models too.
:func:`tiny_clip` is its image-text counterpart (HF CLIP, two towers, contrastive loss) for code shared by both
streams (continual.methods, continual.budget).
"""

from __future__ import annotations

from fluxforge.config import ModelConfig

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)


def tiny_config(**changes: object) -> ModelConfig:
    """TINY with some sizes changed (validated like a params file)."""
    return ModelConfig(**{**TINY.model_dump(), **changes})


def tiny_model(vocab: int = 64, eos: int = 0, pad: int = 1, **changes: object):  # noqa: ANN201 - a PreTrainedModel
    """A freshly initialised tiny model (deterministic: ``init_seed`` 0 unless changed)."""
    from fluxforge.train.model import build_model

    return build_model(tiny_config(**changes), vocab, eos, pad)


def tiny_clip():  # noqa: ANN201 - a CLIPModel
    """A freshly initialised two-tower CLIP, one layer of width 16 per tower (8x8 images, 8-token texts, seed 0)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 8, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 8, "patch_size": 4}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))


def clip_batch(seed: int = 0) -> dict:
    """Four image-text pairs for :func:`tiny_clip`: token ids and pixels (a dict, as a CLIP processor gives them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 64, (4, 8), generator=g), "pixel_values": torch.randn(4, 3, 8, 8, generator=g)}


def clip_loss(model, batch: dict):  # noqa: ANN001, ANN201 - a scalar tensor
    """CLIP's symmetric contrastive loss: the image-text stream's objective."""
    return model(**batch, return_loss=True).loss
