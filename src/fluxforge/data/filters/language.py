"""Language id: threshold 0.65 of datatrove's ``LanguageFilter``; the model is py3langid's (Lui & Baldwin
2012, langid.py), shipped inside its wheel, so nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fluxforge.config import LanguageConfig, builds
from fluxforge.data.filters.batch import Batch
from fluxforge.data.filters.step import Step, Verdict, first_reason, no_reasons

_LANGID = None


def _langid():  # noqa: ANN202 - py3langid has no types
    """py3langid's identifier, loaded once from the model file inside the installed package."""
    global _LANGID
    if _LANGID is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LANGID = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _LANGID


def identify_languages(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ISO 639-1 code, normalised probability) per text, with py3langid's shipped 97-language model."""
    ident = _langid()
    pairs = [ident.classify(t.replace("\n", " ")) if t.strip() else ("", 0.0) for t in texts]
    return np.array([p[0] for p in pairs], dtype=object), np.array([float(p[1]) for p in pairs])


@builds(LanguageConfig)
@dataclass
class LanguageFilter(Step):
    """Tag ``language``/``language_score``; drop docs whose language is not allowed or scores <= threshold.

    As datatrove's ``LanguageFilter`` (keep when an allowed language scores above 0.65), with py3langid
    instead of the fastText lid.176 model that datatrove downloads at run time.
    """

    cfg: LanguageConfig = field(default_factory=LanguageConfig)
    name: str = "language"

    def __call__(self, b: Batch) -> Verdict:
        lang, score = identify_languages(b.texts.tolist())
        r = no_reasons(b.n)
        if not self.cfg.label_only:
            first_reason(r, ~np.isin(lang, self.cfg.languages), f"{self.name}:not_allowed")
            first_reason(r, score <= self.cfg.threshold, f"{self.name}:low_score")
        return Verdict(r, tags={"language": lang, "language_score": np.round(score, 4)})

