"""The one shape every filter step has: a batch in, a :class:`Verdict` out.

WHY one shape: the chain (:mod:`fluxforge.data.filters.chain`) treats every step alike (a filter
that drops documents, a transform that rewrites them, a tagger that labels them), so adding a step
is writing a class, not another branch in the chain. A step is built from its own section of
``data.filters`` (``GopherQuality(cfg.gopher_quality)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import pandas as pd

from fluxforge.errors import FluxForgeError

if TYPE_CHECKING:
    from fluxforge.data.filters.batch import Batch


class FilterError(FluxForgeError, ValueError):
    """Input the filters cannot use (missing column, bad meta JSON, a broken classifier); the message says which."""


@dataclass
class Verdict:
    """What a step says about each document of its batch, in batch order.

    ``reasons``: why the step drops the document (``"step:rule"``; "" keeps it). ``texts``: the new
    texts of a transform (applied to the documents it keeps). ``tags``: values written into each
    document's ``meta`` JSON (NaN: none). ``stats``: integer counts for the stage's metrics.
    """

    reasons: np.ndarray
    texts: pd.Series | None = None
    tags: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        return self.reasons == ""


class Step(Protocol):
    """A filter, transform or tagger of the chain (the steps subclass it for the defaults below).

    ``needs``: columns it reads besides the text. ``every_document``: it sees every document of the
    batch, rejected ones included (a tagger), instead of only those still kept.
    """

    name: str
    needs: ClassVar[tuple[str, ...]] = ()
    every_document: ClassVar[bool] = False

    def __call__(self, batch: Batch) -> Verdict: ...


def no_reasons(n: int) -> np.ndarray:
    """A verdict's reasons that keep all ``n`` documents (rules then fill in with :func:`first_reason`)."""
    return np.full(n, "", dtype=object)


def first_reason(reason: np.ndarray, mask: np.ndarray, label: str) -> None:
    """Set ``label`` where ``mask`` and no earlier rule has fired (the first failing rule is the reason)."""
    reason[(reason == "") & mask] = label
