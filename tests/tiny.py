"""The tiny causal LM the unit tests train and load: one definition, variants by keyword.

Two layers of width 32 train a step in milliseconds on CPU, yet have every part a real model has
(embeddings, attention, MLP, norms, a head), so what passes here runs on the DAG's models too.
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
