"""``data.filters``: one section per filter, each switchable with ``enabled``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from fluxforge.config.base import Fraction, IsoDate, NonNegFloat, NonNegInt, PosFloat, PosInt, Strict


class _Section(Strict):
    enabled: bool = True


class GopherQualityConfig(_Section):
    """Gopher quality rules (Rae et al. 2021, App. A; datatrove GopherQualityFilter defaults)."""

    min_doc_words: NonNegInt = 50
    max_doc_words: PosInt = 100_000
    min_avg_word_length: NonNegFloat = 3.0
    max_avg_word_length: PosFloat = 10.0
    max_symbol_word_ratio: NonNegFloat = 0.1
    max_bullet_lines_ratio: Fraction = 0.9
    max_ellipsis_lines_ratio: Fraction = 0.3
    min_alpha_words_ratio: Fraction = 0.8
    min_stop_words: NonNegInt = 2
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])

    @model_validator(mode="after")
    def _bounds(self) -> GopherQualityConfig:
        if self.min_doc_words > self.max_doc_words:
            raise ValueError(f"min_doc_words ({self.min_doc_words}) is above max_doc_words ({self.max_doc_words})")
        if self.min_avg_word_length > self.max_avg_word_length:
            raise ValueError(f"min_avg_word_length ({self.min_avg_word_length}) is above max_avg_word_length ({self.max_avg_word_length})")
        if self.min_stop_words > len(set(self.stop_words)):
            raise ValueError(f"min_stop_words ({self.min_stop_words}) exceeds the {len(set(self.stop_words))} distinct stop_words")
        return self


def _ngram_table(v: dict[int, float], lo: int, hi: int, key: str) -> dict[int, float]:
    for n, frac in v.items():
        if not lo <= n <= hi or not 0 <= frac <= 1:
            raise ValueError(f"{key}: entry {n}: {frac} must have {lo} <= n <= {hi} and 0 <= fraction <= 1")
    return v


class GopherRepetitionConfig(_Section):
    """Gopher repetition rules (Rae et al. 2021, Table A1; datatrove GopherRepetitionFilter defaults)."""

    dup_line_frac: Fraction = 0.3
    dup_para_frac: Fraction = 0.3
    dup_line_char_frac: Fraction = 0.2
    dup_para_char_frac: Fraction = 0.2
    top_n_grams: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = Field(default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})

    @model_validator(mode="after")
    def _tables(self) -> GopherRepetitionConfig:
        _ngram_table(self.top_n_grams, 1, 20, "top_n_grams")
        _ngram_table(self.dup_n_grams, 1, 50, "dup_n_grams")
        return self


class C4Config(_Section):
    """C4 rules (Raffel et al. 2020; datatrove C4QualityFilter), terminal punctuation off as in FineWeb's recipe."""

    filter_no_terminal_punct: bool = False
    min_words_per_line: NonNegInt = 3
    max_word_length: PosInt = 1000
    remove_citations: bool = True
    filter_javascript: bool = True
    filter_policy: bool = True
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    min_num_sentences: NonNegInt = 5


class FineWebConfig(_Section):
    """FineWeb quality rules (Penedo et al. 2024; datatrove FineWebQualityFilter defaults)."""

    line_punct_thr: Fraction = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: Fraction = 0.67
    short_line_length: NonNegInt = 30
    char_duplicates_ratio: Fraction = 0.01
    new_line_ratio: NonNegFloat = 0.3


class LanguageConfig(_Section):
    """Language id with py3langid (model inside the wheel); threshold as datatrove's LanguageFilter."""

    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]] = Field(default_factory=lambda: ["en"], min_length=1)
    threshold: Fraction = 0.65
    label_only: bool = False  # tag language/language_score into meta but drop nothing


class ToxicityConfig(_Section):
    """Toxicity: drop the toxic docs, or (``inverse``, Longpre et al. 2023) drop the LEAST toxic fraction."""

    mode: Literal["drop", "inverse"] = "drop"
    method: Literal["lexicon", "classifier"] = "lexicon"
    lexicon_path: str | None = None  # default: the shipped src/fluxforge/data/assets/toxic_lexicon.txt
    extra_words: list[str] = Field(default_factory=list)
    max_hits: NonNegInt = 0  # lexicon/drop: more hits than this drops the doc (C4's bad-words rule: any hit)
    classifier: str | None = None  # "package.module:callable", texts -> scores in [0, 1]
    threshold: Fraction = 0.5  # classifier/drop: a score above this drops the doc
    inverse_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1  # inverse: share of least toxic docs to drop

    @model_validator(mode="after")
    def _classifier_given(self) -> ToxicityConfig:
        if self.method == "classifier" and not (self.classifier and re.fullmatch(r"[\w.]+:[\w.]+", self.classifier)):
            raise ValueError(f"method 'classifier' needs classifier: 'package.module:callable' (got {self.classifier!r})")
        return self


class PIIConfig(_Section):
    """Regex PII redaction (a transform: never drops a doc); placeholders as dolma's span replacement."""

    emails: bool = True
    ips: bool = True
    phones: bool = True
    ip_public_only: bool = False  # datatrove redacts only global IPv4; a CTI corpus leaks internal ranges too
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE>"


class URLBlocklistConfig(_Section):
    """Block by URL (datatrove URLFilter): domains, hard banned words, >= soft_word_threshold soft words."""

    use_shipped_list: bool = True  # src/fluxforge/data/assets/url_blocklist.txt
    domains: list[str] = Field(default_factory=list)
    banned_words: list[str] = Field(default_factory=list)
    soft_banned_words: list[str] = Field(default_factory=list)
    soft_word_threshold: PosInt = 2


class AgeConfig(_Section):
    """Tag ``age_days`` = reference_date - timestamp into meta; never drops."""

    reference_date: IsoDate = "2025-01-01"  # quoted in params.yaml: "2025-01-01"


class BoilerplateConfig(_Section):
    """Strip navigation/cookie/share lines (a transform: never drops a doc)."""


class FilterConfig(Strict):
    """One section per filter, each switchable with ``enabled``; defaults are the published values.

    Sources per section are cited in :mod:`fluxforge.data.filters`.
    """

    boilerplate: BoilerplateConfig = BoilerplateConfig()
    url_blocklist: URLBlocklistConfig = URLBlocklistConfig()
    language: LanguageConfig = LanguageConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    toxicity: ToxicityConfig = ToxicityConfig()
    pii: PIIConfig = PIIConfig()
    age: AgeConfig = AgeConfig()
