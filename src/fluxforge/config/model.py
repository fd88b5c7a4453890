"""``model``: the causal LM to build (or the checkpoint to adapt)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fluxforge.config.base import PosInt, Strict


class ModelConfig(Strict):
    """A causal LM (HF transformers): built from these numbers, or a base checkpoint to adapt.

    ``from_pretrained`` names a local HF directory or a hub id ("org/name", optionally "@revision")
    that is already in the local HF cache (runs never download; see fluxforge.train.model). The
    checkpoint then defines the architecture and sizes, so setting those here too is an error
    rather than a silently ignored experiment.
    """

    architecture: Literal["llama", "qwen2"] = "llama"  # Llama / Qwen2 blocks with the sizes below
    hidden_size: PosInt = 128
    num_layers: PosInt = 4
    num_heads: PosInt = 4
    intermediate_size: PosInt = 384
    max_position_embeddings: PosInt = 256
    init_seed: int = 0
    from_pretrained: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self

    @model_validator(mode="after")
    def _pretrained_sets_sizes(self) -> ModelConfig:
        shadowed = sorted(self.model_fields_set - {"from_pretrained"}) if self.from_pretrained else []
        if shadowed:
            raise ValueError(f"from_pretrained is '{self.from_pretrained}', whose checkpoint defines the architecture, "
                             f"sizes and weights; remove {shadowed} (they would be ignored)")
        return self
