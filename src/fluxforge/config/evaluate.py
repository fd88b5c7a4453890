"""``evaluate``: how the evaluation stage batches its documents."""

from __future__ import annotations

from fluxforge.config.base import PosInt, Strict


class EvalConfig(Strict):
    batch_size: PosInt = 32
    seq_len: PosInt = 128
