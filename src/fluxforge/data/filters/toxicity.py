"""Toxicity: C4's bad-words rule (any hit drops) over a shipped lexicon, or a pluggable classifier;
``inverse`` mode removes the LEAST toxic share (Longpre et al. 2023, "A Pretrainer's Guide to Training
Data", arXiv 2305.13169, section 5).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fluxforge.config import ToxicityConfig, builds
from fluxforge.data.filters.batch import Batch
from fluxforge.data.filters.step import FilterError, Step, Verdict, first_reason, no_reasons

LEXICON = Path(__file__).parents[1] / "assets" / "toxic_lexicon.txt"


def load_lexicon(path: Path | str | None = None, extra: Sequence[str] = ()) -> frozenset[str]:
    """Lowercase words of a lexicon file (one a line, ``#`` comments), plus ``extra``."""
    p = Path(path) if path else LEXICON
    if not p.is_file():
        raise FilterError(f"toxicity lexicon {p} does not exist (data.filters.toxicity.lexicon_path)")
    words = (w.strip().lower() for w in p.read_text().splitlines())
    return frozenset([w for w in words if w and not w.startswith("#")] + [w.lower() for w in extra])


def lexicon_hits(b: Batch, lexicon: frozenset[str]) -> np.ndarray:
    """Words of each document that are in ``lexicon`` (case-insensitive)."""
    w = b.words
    hit = b.word_feature(f"lexicon:{hash(lexicon)}", lambda v: v.str.lower().isin(lexicon).to_numpy(dtype=bool))
    return w.per_doc(hit.astype(bool))


def lexicon_scores(texts: Sequence[str]) -> np.ndarray:
    """A classifier-shaped toxicity score in [0, 1): ``1 - exp(-hits)`` over the shipped lexicon.

    Usable as ``toxicity.classifier: fluxforge.data.filters:lexicon_scores``; one hit scores 0.63.
    """
    return 1.0 - np.exp(-lexicon_hits(Batch(pd.Series(list(texts), dtype=object)), load_lexicon()))


def load_classifier(path: str) -> Callable[[Sequence[str]], Sequence[float]]:
    """Import ``package.module:callable`` (a function or class instance mapping texts to scores)."""
    module, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise FilterError(f"toxicity.classifier {path!r} cannot be imported: {err}") from None
    if not callable(obj):
        raise FilterError(f"toxicity.classifier {path!r} is not callable")
    return obj


@builds(ToxicityConfig)
@dataclass
class Toxicity(Step):
    """Drop toxic docs (lexicon: more than ``max_hits`` hits; classifier: score > threshold), or in
    ``inverse`` mode drop the ``inverse_fraction`` LEAST toxic docs of the batch (Longpre et al. 2023;
    lexicon score = hits per word; ties broken by a hash of the text so the choice is reproducible).
    """

    cfg: ToxicityConfig = field(default_factory=ToxicityConfig)
    name: str = "toxicity"

    def __post_init__(self) -> None:
        self.lexicon = load_lexicon(self.cfg.lexicon_path, self.cfg.extra_words)
        self.classifier = load_classifier(self.cfg.classifier) if self.cfg.method == "classifier" else None

    def scores(self, b: Batch) -> np.ndarray:
        """Lexicon hits, or the classifier's score, of each document (checked: one finite score each)."""
        if self.classifier is None:
            return lexicon_hits(b, self.lexicon)
        try:
            got = np.asarray(self.classifier(b.texts.tolist()), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise FilterError(f"toxicity.classifier {self.cfg.classifier!r} failed on {b.n} texts: {err}") from err
        if got.shape != (b.n,) or not np.all(np.isfinite(got)):
            raise FilterError(f"toxicity.classifier {self.cfg.classifier!r} returned shape {got.shape} "
                              f"(want ({b.n},), finite) for {b.n} texts")
        return got

    def __call__(self, b: Batch) -> Verdict:
        c, r = self.cfg, no_reasons(b.n)
        s = self.scores(b)
        if c.mode == "inverse":
            density = s / np.maximum(b.words.per_doc(), 1) if self.classifier is None else s
            tie = pd.util.hash_pandas_object(b.texts, index=False).to_numpy()
            k = int(np.floor(c.inverse_fraction * b.n))
            drop = np.zeros(b.n, bool)
            drop[np.lexsort((tie, density))[:k]] = True
            first_reason(r, drop, f"{self.name}:inverse")
        elif self.classifier is None:
            first_reason(r, s > c.max_hits, f"{self.name}:lexicon")
        else:
            first_reason(r, s > c.threshold, f"{self.name}:classifier")
        return Verdict(r)

