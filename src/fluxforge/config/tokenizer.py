"""``tokenizer``: the byte-level BPE trained on the curated corpus."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fluxforge.config.base import PosInt, Strict


class TokenizerConfig(Strict):
    vocab_size: Annotated[int, Field(ge=300, le=65535)] = 2048
    min_frequency: PosInt = 2
