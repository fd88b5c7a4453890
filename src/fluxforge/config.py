"""Typed params for ``params.yaml``.

Every stage loads the *whole* file through :func:`load_params`, so a typo anywhere
fails the first stage that runs, before any work is done, with a message that names
the file and the dotted key. Unknown keys are errors (``extra="forbid"``): a silently
ignored key is a silently ignored experiment.
"""

from __future__ import annotations

import fnmatch
import math
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fluxforge.errors import FluxForgeError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
DOMAINS = ("general", "cyber")


class ParamsError(FluxForgeError, ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    # strict: "400" or 400.0 for an int, or true for a number, is a mistake in a params file, not a value
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


# ----------------------------------------------------------------------------- world
class GeneralWorld(_Strict):
    people: PosInt = 90
    orgs: PosInt = 20
    places: PosInt = 14
    new_people_per_year: NonNegInt = 14
    change_fraction: Fraction = 0.25  # share of mutable facts (employer, CEO) that change each year
    docs_per_new_fact_entity: PosInt = 5  # docs for an entity that is new or changed in a slice
    docs_per_known_entity: NonNegInt = 1  # re-coverage of unchanged entities in later slices


class CyberWorld(_Strict):
    products_per_year: PosInt = 30
    vendors: PosInt = 14
    docs_per_product: PosInt = 6


class DefectRates(_Strict):
    """Share of clean documents that receive each planted defect (labels kept aside)."""

    boilerplate: Fraction = 0.05
    repetition: Fraction = 0.02
    symbols: Fraction = 0.02
    short: Fraction = 0.02
    lorem: Fraction = 0.02
    toxic: Fraction = 0.02
    exact_dup: Fraction = 0.03
    near_dup: Fraction = 0.03
    foreign: Fraction = 0.02        # a document in German, Spanish or French
    blocked_url: Fraction = 0.02    # a clean paraphrase served from a blocked host
    pii: Fraction = 0.02            # emails, phone numbers and IPs inserted into a clean document


class WorldConfig(_Strict):
    seed: int = 1234
    years: list[int] = Field(default_factory=lambda: [2021, 2022, 2023, 2024], min_length=1)
    general: GeneralWorld = GeneralWorld()
    cyber: CyberWorld = CyberWorld()
    # entities whose Q/A form is in training; the others are evaluated (both groups must exist)
    qa_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    defects: DefectRates = DefectRates()

    @model_validator(mode="after")
    def _years_sorted(self) -> WorldConfig:
        if sorted(set(self.years)) != list(self.years):
            raise ValueError("years must be strictly increasing")
        return self

    def slices(self) -> list[str]:
        return [f"{d}-{y}" for d in DOMAINS for y in self.years]


# ----------------------------------------------------------------------------- data
def _check_regex(what: str, pattern: str) -> None:
    """A regex from params must compile here, at load time, not deep inside a stage."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{what} is not a valid regular expression: {err}") from None


class Source(_Strict):
    """One input of the ingest stage: where its files are, how to read them, what its fields are called.

    The readers are in :mod:`fluxforge.data.connectors`. Field names (``*_field``) are JSON keys for
    ``jsonl``/``world`` and column names for ``parquet``/``csv``/``tsv``; a column named here must exist in
    every file (``null`` means "this source has none"), so a typo stops the stage instead of silently
    giving every row a fallback. ``txt`` files have no fields: each document is a file or a block of one.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]  # becomes data/raw/<name>.parquet
    format: Literal["world", "jsonl", "parquet", "txt", "csv", "tsv"] = "world"
    # a folder (world: <path>/sources/*.jsonl), a local file, a folder, a glob, or s3://BUCKET/PREFIX
    # (every object under it whose name ends like the format's files, e.g. .jsonl / .jsonl.gz)
    path: Annotated[str, Field(min_length=1)]
    text_field: Annotated[str, Field(min_length=1)] = "text"
    url_field: str | None = "url"  # null: URLs are file://<absolute path>#<record number>
    timestamp_field: str | None = "timestamp"  # null: every document gets default_timestamp
    id_field: str | None = None  # a native id, kept in meta as "native_id" (world: doc_id)
    domain: Literal["general", "cyber", "auto"] = "auto"  # auto: each record's "domain" field/column
    licence: str = "generated"
    txt_split: Literal["file", "blank_lines", "heading"] | None = None  # txt only: what one document is
    heading_pattern: str | None = None  # txt_split heading: a line matching this regex (re.search) starts a document
    default_timestamp: str | None = None  # ISO date for records without a timestamp (txt files have none)
    # longer documents are rejected (reason too_long) before they reach filters built for prose
    max_doc_chars: PosInt = 1_000_000

    @model_validator(mode="before")
    @classmethod
    def _dates_as_text(cls, raw: Any) -> Any:
        """YAML reads an unquoted 2024-01-01 as a date; accept it as the ISO string it was written as."""
        import datetime as dt

        if isinstance(raw, dict) and isinstance(raw.get("default_timestamp"), dt.date):
            raw = {**raw, "default_timestamp": raw["default_timestamp"].isoformat()}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> Source:
        import datetime as dt

        if self.default_timestamp is not None:
            try:
                dt.datetime.fromisoformat(self.default_timestamp)
            except ValueError:
                raise ValueError(f"default_timestamp must be an ISO date such as 2024-01-01 or "
                                 f"2024-01-01T00:00:00Z, got {self.default_timestamp!r}") from None
        if self.format == "txt":
            if self.txt_split is None:
                raise ValueError("format txt needs txt_split: file (one document per file), blank_lines "
                                 "(one per blank-line separated block) or heading (one per heading_pattern line)")
            if self.domain == "auto":
                raise ValueError("format txt has no per-record domain: set domain to general or cyber")
            if self.default_timestamp is None:
                raise ValueError("format txt has no timestamps: set default_timestamp (an ISO date such as "
                                 "2024-01-01), or every document would be rejected")
        elif self.txt_split is not None:
            raise ValueError(f"txt_split applies to format txt only (this source is {self.format})")
        if self.timestamp_field is None and self.default_timestamp is None:
            raise ValueError("timestamp_field is null: set default_timestamp, or every document would be rejected")
        if (self.txt_split == "heading") != (self.heading_pattern is not None):
            raise ValueError("heading_pattern is required with txt_split: heading, and used by nothing else")
        if self.heading_pattern is not None:
            _check_regex(f"heading_pattern {self.heading_pattern!r}", self.heading_pattern)
        return self


class _Section(_Strict):
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

    reference_date: str = "2025-01-01"

    @field_validator("reference_date", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> str:
        if isinstance(v, date):  # YAML reads an unquoted 2025-01-01 as a date
            return v.isoformat()
        try:
            return date.fromisoformat(v).isoformat()
        except (TypeError, ValueError):
            raise ValueError(f"reference_date must be an ISO date YYYY-MM-DD, got {v!r}") from None


class BoilerplateConfig(_Section):
    """Strip navigation/cookie/share lines (a transform: never drops a doc)."""


class FilterConfig(_Strict):
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


class DedupConfig(_Strict):
    """MinHash-LSH near-dedup; ngram/bands/rows/seed are datatrove's MinhashConfig defaults (5-grams, 14 x 8, seed 1).

    ``confirm`` decides how an LSH candidate pair becomes a duplicate: ``"signature"`` when the
    share of agreeing MinHash values is >= ``threshold`` (an estimate with std ~0.035 at 112
    hashes), ``"jaccard"`` when the exact word n-gram Jaccard is >= ``threshold`` (NeMo Curator's
    optional false-positive check, ``jaccard_threshold=0.8``).
    """

    ngram: PosInt = 5
    bands: PosInt = 14
    rows: PosInt = 8
    threshold: Fraction = 0.8
    seed: int = 1
    confirm: Literal["signature", "jaccard"] = "jaccard"


RAW_COLUMNS = ("id", "text", "source", "url", "timestamp", "domain", "meta")


class ContractConfig(_Strict):
    """A great-expectations suite at one data boundary (fluxforge.data.contracts builds it from these keys)."""

    columns: list[str] = Field(default_factory=lambda: list(RAW_COLUMNS))  # exactly these columns
    not_null: list[str] = Field(default_factory=lambda: ["id", "text", "source", "timestamp", "domain"])
    unique: list[str] = Field(default_factory=lambda: ["id"])
    min_rows: NonNegInt = 1
    text_chars: Annotated[list[NonNegInt], Field(min_length=2, max_length=2)] = [1, 5_000_000]  # inclusive len(text)
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))
    timestamps: Annotated[list[str], Field(min_length=2, max_length=2)] = ["1990-01-01", "2100-01-01"]  # ISO, inclusive
    url_pattern: str = r"^(?:https?|s3|file)://"

    @model_validator(mode="after")
    def _check(self) -> ContractConfig:
        from pandas import Timestamp

        for key in ("not_null", "unique"):
            unknown = sorted(set(getattr(self, key)) - set(self.columns))
            if unknown:
                raise ValueError(f"{key} names columns that are not in `columns`: {unknown}")
        if self.text_chars[0] > self.text_chars[1]:
            raise ValueError(f"text_chars: minimum {self.text_chars[0]} is above maximum {self.text_chars[1]}")
        try:
            lo, hi = (Timestamp(t) for t in self.timestamps)
        except ValueError as err:
            raise ValueError(f"timestamps must be two ISO dates: {err}") from None
        if lo > hi:
            raise ValueError(f"timestamps: {self.timestamps[0]} is after {self.timestamps[1]}")
        _check_regex("url_pattern", self.url_pattern)
        return self


class ContractsConfig(_Strict):
    """One contract per boundary: raw (after ingest, before filtering) and curated (what training reads)."""

    raw: ContractConfig = ContractConfig()
    curated: ContractConfig = ContractConfig(text_chars=[50, 1_000_000])


class RunnerConfig(_Strict):
    """How a data step runs over shards (:mod:`fluxforge.data.shards`); it never changes the step's output."""

    # process: a local process pool (Prefect ProcessPoolTaskRunner), for CPU-bound steps; thread: a thread
    # pool (GIL-bound; I/O steps); serial: one shard after another in this process, no Prefect; dask / ray:
    # a cluster through the prefect-dask / prefect-ray packages (not installed by default)
    kind: Literal["process", "thread", "serial", "dask", "ray"] = "process"
    workers: PosInt | None = None  # null: os.cpu_count()
    # documents per shard. A corpus of at most this many documents is one shard, run in this process without
    # Prefect: starting Prefect costs seconds (a server) to tens of seconds (a temporary one); see shards.py
    shard_docs: PosInt = 5000
    address: str | None = None  # dask scheduler / ray head address; null: a temporary local cluster

    @model_validator(mode="after")
    def _address_for_clusters(self) -> RunnerConfig:
        if self.address is not None and self.kind not in ("dask", "ray"):
            raise ValueError(f"address is used by kind dask or ray only, not '{self.kind}'")
        return self


class DataConfig(_Strict):
    sources: list[Source] = Field(min_length=1)
    contracts: ContractsConfig = ContractsConfig()
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    runner: RunnerConfig = RunnerConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if "rejected" in names:
            raise ValueError("a source may not be named 'rejected' (data/raw/rejected.parquet holds rejected rows)")
        return self


class TokenizerConfig(_Strict):
    vocab_size: Annotated[int, Field(ge=300, le=65535)] = 2048
    min_frequency: PosInt = 2


# ----------------------------------------------------------------------------- model/train
class ModelConfig(_Strict):
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


class Replay(_Strict):
    ratio: Fraction = 0.0
    slices: list[str] = Field(default_factory=list)


class DeepSpeedSettings(_Strict):
    """Train through a DeepSpeed ZeRO engine instead of plain torch (src/fluxforge/train/engine.py).

    0 = off (plain torch AdamW). 1/2/3 = ZeRO stage; ``config`` names the JSON (default:
    infra/deepspeed/zero{stage}.json). The launcher's FLUXFORGE_DEEPSPEED_CONFIG overrides ``config``.
    """

    stage: Literal[0, 1, 2, 3] = 0
    config: str | None = None

    @model_validator(mode="after")
    def _config_needs_stage(self) -> DeepSpeedSettings:
        if self.config is not None and self.stage == 0:
            raise ValueError(f"deepspeed.config is '{self.config}' but deepspeed.stage is 0 (off); set stage 1, 2 or 3")
        return self


def wsd_decay_steps(steps: int, decay_fraction: float) -> int:
    """Steps in the WSD decay: at least one, so the last step always reaches the final LR."""
    return max(1, round(decay_fraction * steps))


class InfiniteSchedule(_Strict):
    """The infinite LR schedule (Ibrahim et al. 2024, arXiv 2403.08763; Janson et al. 2025, arXiv 2503.02844).

    Warmup -> cooldown to ``const_ratio`` -> constant -> exponential anneal to ``min_ratio``. Phase ends are
    cumulative fractions of the steps; the defaults are the Janson MAE code's (``Pauljanson002/MAE-1``:
    warmup_ratio 0.05, cooldown_ratio 0.3, constant_ratio 0.8, constant LR 0.25, min LR 0.01 of the peak).
    """

    warmup_fraction: Fraction | None = 0.05  # warmup ends here; null: use the top-level warmup_steps
    cooldown_end: Fraction = 0.3  # the cooldown to const_ratio ends here (Janson sweep: 0.3 / 0.4 / 0.5)
    constant_end: Fraction = 0.8  # the constant phase ends here; the anneal takes the rest
    const_ratio: Annotated[float, Field(gt=0, le=1)] = 0.25  # η_const / η_max (Janson sweep: 0.25 / 0.5 / 0.75)
    min_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.01  # η_min / η_max; null: use min_lr_ratio
    cooldown: Literal["cosine", "inv_sqrt", "linear"] = "cosine"  # cosine = "InfCos" (Beyond Cosine Decay)
    inv_sqrt_alpha: PosFloat = 10.0  # timescale α of the inverse-sqrt cooldown (Ibrahim et al. use 10)

    @model_validator(mode="after")
    def _increasing(self) -> InfiniteSchedule:
        w = 0.0 if self.warmup_fraction is None else self.warmup_fraction
        if not w < self.cooldown_end <= self.constant_end < 1:
            raise ValueError(
                f"phase ends must satisfy warmup_fraction < cooldown_end <= constant_end < 1, got "
                f"{self.warmup_fraction} / {self.cooldown_end} / {self.constant_end}"
            )
        return self

    def boundaries(self, steps: int, warmup_steps: int) -> tuple[int, int, int]:
        """(warmup end, cooldown end, constant end) in steps.

        Floored like the Janson code's ``int(total * r)``, but with a 1e-9 nudge so that float error
        (0.29 * 100 = 28.999...) cannot move a boundary a whole step.
        """
        def at(fraction: float) -> int:
            return math.floor(fraction * steps + 1e-9)

        w = warmup_steps if self.warmup_fraction is None else at(self.warmup_fraction)
        return w, at(self.cooldown_end), at(self.constant_end)


class MeCoSettings(_Strict):
    """Metadata conditioning then cooldown (Gao et al. 2025, arXiv 2501.01956; methods.md section 1).

    Each document is trained as ``"URL: <host>\n\n" + text`` with no loss on the metadata tokens, except over
    the last ``cooldown_fraction`` of the steps, which see plain documents (one optimizer and one LR schedule
    throughout). Conditional inference prepends the same metadata (fluxforge.train.meco.conditional_prompt).
    """

    enabled: bool = False
    cooldown_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1  # MeCo: the last 10% of tokens


class CurriculumSettings(_Strict):
    """Documents in ascending order of quality, the best last (Luo et al. 2025, arXiv 2511.18903; methods.md section 5).

    Quality is the mean unigram log-probability of a document under its own domain's word distribution
    (fluxforge.train.curriculum.unigram_quality: CCNet's criterion with a unigram), so atypical text comes
    first. Pair it with a moderate final LR (min_lr_ratio) or with averaging.
    """

    enabled: bool = False


class AveragingSettings(_Strict):
    """The stage's model is the weighted average of its last ``k`` snapshots, ``every`` steps apart (methods.md section 5)."""

    method: Literal["none", "sma", "ema", "wma"] = "none"
    k: PosInt = 6  # the summary's "last 6 checkpoints"
    every: PosInt = 10
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.2  # EMA weight of the newest snapshot (methods.md: ~0.2)


class GrowthSettings(_Strict):
    """G_stack depthwise growth (Du et al. 2024, arXiv 2405.15319; methods.md section 6), pretraining only.

    ``factor`` g > 1: a model with ``model.num_layers / g`` layers trains first, is stacked g times into the
    configured model, and the grown model trains for the remaining steps (fresh optimizer, as the prts script).
    ``fraction``: share of the steps the small model takes; null = the paper's growth-timing formula
    (capped at half the run: the formula extrapolates badly for models this small).
    """

    factor: PosInt = 1  # 1 = off; the paper's g = 4
    fraction: Annotated[float, Field(gt=0, lt=1)] | None = None


class TrainConfig(_Strict):
    slices: list[str] = Field(min_length=1)  # slice names or globs, e.g. "general-202[1-3]"
    replay: Replay = Replay()
    steps: PosInt = 300
    batch_size: PosInt = 16
    seq_len: PosInt = 128
    lr: PosFloat = 3e-3
    min_lr_ratio: Fraction = 0.1
    warmup_steps: NonNegInt = 30
    # LR schedule (fluxforge.train.schedule): min_lr_ratio is the final LR / peak for cosine and wsd (a
    # "moderate" ratio keeps the last, best data useful: Luo et al. 2025, arXiv 2511.18903)
    schedule: Literal["cosine", "wsd", "infinite", "constant"] = "cosine"
    decay_fraction: Fraction = 0.2  # WSD: share of steps in the final decay (Hägele et al. 2024 recommend ~20%)
    decay_shape: Literal["sqrt", "linear", "cosine", "exp", "square"] = "sqrt"  # WSD decay; 1-sqrt is Hägele's best
    infinite: InfiniteSchedule = InfiniteSchedule()  # read only when schedule is "infinite"
    weight_decay: float = 0.1
    grad_clip: PosFloat = 1.0
    seed: int = 0
    log_every: PosInt = 10
    # Capability probes: every N steps (and before the first), score a fixed subset of the evaluation
    # questions and held-out documents, so curves show what the model knows as it trains; 0 = off
    probe_every: NonNegInt = 0
    probe_questions: PosInt = 64  # per domain
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()  # ZeRO stage 0 (off) | 1 | 2 | 3
    # How each step runs (src/fluxforge/train/engine.py). batch_size is the global batch; grad_accum splits it
    # into that many micro-batches (per rank), so the same params train the same model on a smaller device.
    grad_accum: PosInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA (fp16 if no bf16), fp32 on CPU
    compile: bool = False  # torch.compile the model's forward (worth it on GPU; minutes of compile on CPU)
    doc_mask: bool = False  # attention and positions stop at document boundaries (src/fluxforge/train/packing.py)
    checkpoint_every: PosInt = 100  # steps between resumable checkpoints (atomic writes)
    keep_checkpoints: PosInt = 2  # how many of the newest checkpoints are kept
    # A new run that starts from another run's model (a continual task): weights | weights_optimizer (AdamW
    # moments too; the schedule warms up again) | full (and the schedule continues without re-warming:
    # needs a wsd/infinite/constant schedule). Resuming after a crash is separate and always exact.
    init_mode: Literal["weights", "weights_optimizer", "full"] = "weights"
    meco: MeCoSettings = MeCoSettings()
    curriculum: CurriculumSettings = CurriculumSettings()
    averaging: AveragingSettings = AveragingSettings()
    growth: GrowthSettings = GrowthSettings()

    @model_validator(mode="after")
    def _accumulation_fits(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if self.curriculum.enabled and (self.replay.ratio > 0 or self.meco.enabled):
            raise ValueError("curriculum orders the documents of `slices` itself; it cannot be combined with "
                             "replay.ratio > 0 or meco (set replay.ratio: 0.0 and meco.enabled: false)")
        if self.deepspeed.stage and (self.averaging.method != "none" or self.growth.factor > 1):
            raise ValueError("averaging and growth need the whole model in one process; they are not supported "
                             "with deepspeed.stage > 0")
        if self.averaging.method != "none" and self.averaging.k * self.averaging.every > self.steps:
            raise ValueError(f"averaging: k ({self.averaging.k}) x every ({self.averaging.every}) steps is more than "
                             f"the run's {self.steps} steps")
        if self.init_mode == "full" and self.schedule == "cosine":
            raise ValueError("init_mode 'full' continues the learning-rate schedule without re-warming, which a "
                             "cosine schedule cannot do (it has decayed); use schedule wsd, infinite or constant, "
                             "or init_mode weights_optimizer")
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.schedule == "infinite" and self.infinite.warmup_fraction is not None:
            return self  # its warmup is infinite.warmup_fraction; warmup_steps is not read (see _infinite_fits)
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.schedule == "wsd":
            decay_start = self.steps - wsd_decay_steps(self.steps, self.decay_fraction)
            if decay_start < self.warmup_steps:
                raise ValueError(
                    f"wsd: the decay ({self.decay_fraction} of {self.steps} steps) would start at step {decay_start}, "
                    f"inside the warmup ({self.warmup_steps} steps); lower decay_fraction or warmup_steps"
                )
            if self.decay_shape == "exp" and self.min_lr_ratio == 0:
                raise ValueError("wsd: decay_shape 'exp' decays to min_lr_ratio geometrically, so it must be above 0")
        elif self.schedule == "infinite":
            self._infinite_fits()
        return self

    def _infinite_fits(self) -> None:
        inf = self.infinite
        # the infinite schedule has its own warmup and final-LR knobs; a set top-level one would be ignored
        for own, top in (("warmup_fraction", "warmup_steps"), ("min_ratio", "min_lr_ratio")):
            if getattr(inf, own) is not None and top in self.model_fields_set:
                raise ValueError(
                    f"{top} is set, but schedule 'infinite' reads infinite.{own} ({getattr(inf, own)}) instead: "
                    f"remove {top}, or set infinite.{own}: null to use {top}"
                )
        eta_min = self.infinite_min_ratio
        if not 0 < eta_min <= inf.const_ratio:
            raise ValueError(
                f"infinite: the final LR ratio ({eta_min}) must be above 0 and at most const_ratio ({inf.const_ratio}); "
                "the anneal is geometric from const_ratio down to it"
            )
        w, cd, const = inf.boundaries(self.steps, self.warmup_steps)
        if not w < cd <= const < self.steps - 1:
            raise ValueError(
                f"infinite: with {self.steps} steps the phases end at warmup {w}, cooldown {cd}, constant {const}; "
                f"they need warmup < cooldown <= constant < {self.steps - 1} (the last step), "
                "so raise steps or spread the fractions"
            )

    @property
    def infinite_min_ratio(self) -> float:
        """η_min / η_max of the infinite schedule: ``infinite.min_ratio``, or ``min_lr_ratio`` when that is null."""
        return self.min_lr_ratio if self.infinite.min_ratio is None else self.infinite.min_ratio


class ContinualTask(TrainConfig):
    init: str  # "pretrain" or "continual/<earlier task>"
    kind: Literal["time_slice", "domain"] = "time_slice"


class ContinualConfig(_Strict):
    tasks: dict[str, ContinualTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _chain(self) -> ContinualConfig:
        seen = ["pretrain"]
        for key, task in self.tasks.items():
            if task.init not in seen:
                raise ValueError(
                    f"task '{key}' starts from '{task.init}', which is not 'pretrain' or an earlier task "
                    f"(allowed: {seen})"
                )
            seen.append(f"continual/{key}")
        return self

    @property
    def final(self) -> str:
        return f"continual/{list(self.tasks)[-1]}"


class DistillConfig(TrainConfig):
    student: ModelConfig = ModelConfig(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256)
    # Each teacher: "final" (the last continual task), "pretrain", "continual/<task>", or a registered
    # version "models:/NAME@ALIAS" / "models:/NAME/VERSION". Several teachers form a committee.
    teacher: str | list[str] = "final"
    ensemble: Literal["mean_probs", "mean_logits"] = "mean_probs"  # how a committee's outputs are combined
    # Build the student by keeping these layers of the (first) teacher instead of from `student`; [] = off
    student_layers: list[Annotated[int, Field(ge=0)]] = []
    temperature: PosFloat = 2.0
    alpha: Fraction = 0.5  # weight of the KD term; (1 - alpha) on the hard-label loss
    # Teacher outputs: computed on the fly, or cached on disk (reused while teacher and data are unchanged,
    # e.g. across student sweeps). top_k > 0 keeps each position's k most likely tokens (sparse KD).
    teacher_cache: bool = False
    top_k: Annotated[int, Field(ge=0)] = 0

    def teachers(self) -> list[str]:
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)


class StudyConfig(_Strict):
    """Technique studies on the pretraining data (stage ``study``; methods.md sections 1, 5, 6).

    Each study trains a variant of ``pretrain`` (its slices, model, batch and LR) for ``steps`` steps next to
    one shared baseline (shuffled data, cosine to min_lr_ratio, trained from scratch) and compares held-out
    loss and accuracy on the pretraining slices at equal tokens (MeCo, curriculum) or equal compute (growth).
    """

    studies: list[Literal["meco", "curriculum", "growth"]] = ["meco", "curriculum", "growth"]
    steps: PosInt = 200
    meco: MeCoSettings = MeCoSettings(enabled=True)
    curriculum_min_lr_ratio: Fraction = 0.5  # "moderate decay" (Luo et al.); the baseline keeps pretrain's ratio
    averaging: AveragingSettings = AveragingSettings(method="ema", k=6, every=10)
    growth_factor: Annotated[int, Field(ge=2)] = 2
    growth_compute_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25  # share of the compute the small model uses


class StreamTask(_Strict):
    """One task of a continual stream: a data slice (a time window, a domain or a set of sources) and its budget."""

    name: str = Field(min_length=1)
    slices: list[str] = Field(min_length=1)  # slice names or globs
    budget_tokens: PosInt  # the same for every method, so that comparisons are fair (FoMo-in-Flux)


class StreamReplay(_Strict):
    """What each task mixes in besides its new data (methods.md sections 3 and 8)."""

    ratio: Fraction | Literal["planned"] = "planned"  # share of the batches; planned: the CMR planner picks it
    slices: list[str] = Field(default_factory=list)  # the base model's pretraining data, always replayable
    buffer_tokens: NonNegInt = 0  # a capped buffer of earlier tasks' documents (0 = none)
    policy: Literal["uniform", "recent", "balanced"] = "uniform"
    buffer_share: Fraction = 0.5  # of the replay share, what the buffer supplies once it holds data


class CMRPlanner(_Strict):
    """Short pilot updates over a grid of replay ratios; the largest ratio whose general loss stays in tolerance."""

    grid: list[Fraction] = Field(default_factory=lambda: [0.1, 0.25, 0.5], min_length=2)
    pilot_steps: Annotated[int, Field(ge=3)] = 40
    points: Annotated[int, Field(ge=3)] = 4  # evaluations along each pilot (the fit needs >= 3)
    max_general_ppl_rise: NonNegFloat = 0.05  # tolerance: epsilon = ln(1 + this) in loss
    constraint: Literal["final", "max"] = "final"
    eval_docs: PosInt = 48  # held-out documents per loss evaluation


class StabilityStrategy(_Strict):
    """Stability-gap mitigation (Guo et al., methods.md section 4) for each task's new data."""

    kind: Literal["none", "subset_epochs", "top_k", "pretrain_mix"] = "none"
    epochs: PosInt = 4  # subset_epochs: the new data is a subset of budget/epochs tokens, seen ~epochs times
    top_k_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5  # top_k: the best documents by quality
    domain_share: Fraction = 0.5  # pretrain_mix: new data's share; the rest mirrors the base model's mixture


class MergeSettings(_Strict):
    """Merging across tasks (FoMo-in-Flux): the evaluated model is a merge; training continues on the trunk."""

    method: Literal["none", "ema", "interpolate"] = "none"  # ema: run = w*task + (1-w)*run; interpolate: with the init model
    weight: Fraction = 0.5


class StreamConfig(_Strict):
    """A continual stream (stage ``stream``): tasks in order from ``init``, with replay, strategies and merging."""

    enabled: bool = True
    init: str = "pretrain"
    ordering: Literal["given", "time", "random", "similarity", "difficulty"] = "given"
    seed: int = 0
    tasks: list[StreamTask] = Field(min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)  # overrides of `pretrain`'s training keys for every task
    replay: StreamReplay = StreamReplay()
    planner: CMRPlanner = CMRPlanner()
    strategy: StabilityStrategy = StabilityStrategy()
    merge: MergeSettings = MergeSettings()
    # cosine schedules only: "meta_cosine" anneals each task's peak LR across tasks (FoMo-in-Flux's autoregressive
    # cosine_with_linear_warmup_and_recovery, methods.md section 8); "constant" re-warms to the same peak every task
    task_peak: Literal["constant", "meta_cosine"] = "constant"
    gap_every: NonNegInt = 5  # evaluate general and task loss every N steps over the first quarter of each task
    compare_no_replay: bool = True  # also run the stream without replay (the report's comparison)


class EvalConfig(_Strict):
    batch_size: PosInt = 32
    seq_len: PosInt = 128


class GateConfig(_Strict):
    """Promotion gate: the challenger becomes champion only if every rule holds."""

    min_cyber_acc_gain: float = 0.05  # over the pretrained model, absolute accuracy
    max_general_ppl_increase: float = 0.25  # relative to the pretrained model
    max_significance_p: Fraction = 0.05  # one-sided binomial test of the cyber gain
    min_student_ppl_ratio: Fraction = 0.0  # teacher_ppl / student_ppl (0 disables)
    min_student_acc_fraction: Fraction = 0.0  # student's above-chance accuracy / teacher's, worst domain (0 disables)
    must_beat_champion: bool = True


class RegisterConfig(_Strict):
    model_name: str = "fluxforge-lm"
    gate: GateConfig = GateConfig()


class TrackingConfig(_Strict):
    experiment: str = "fluxforge"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides


class Params(_Strict):
    world: WorldConfig = WorldConfig()
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    pretrain: TrainConfig
    continual: ContinualConfig
    distill: DistillConfig
    evaluate: EvalConfig = EvalConfig()
    study: StudyConfig = StudyConfig()
    stream: StreamConfig | None = None
    registry: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _slices_exist(self) -> Params:
        known = self.world.slices()
        sections: list[tuple[str, TrainConfig]] = [("pretrain", self.pretrain), ("distill", self.distill)]
        sections += [(f"continual.tasks.{k}", t) for k, t in self.continual.tasks.items()]
        for where, cfg in sections:
            for field, patterns in (("slices", cfg.slices), ("replay.slices", cfg.replay.slices)):
                for pat in patterns:
                    if not fnmatch.filter(known, pat):
                        raise ValueError(f"{where}.{field}: '{pat}' matches no slice; known slices: {known}")
            if cfg.replay.ratio > 0 and not cfg.replay.slices:
                raise ValueError(f"{where}.replay: ratio {cfg.replay.ratio} > 0 but no replay slices given")
            if not self.model.from_pretrained and cfg.seq_len + 1 > self.model.max_position_embeddings and where != "distill":
                raise ValueError(f"{where}.seq_len ({cfg.seq_len}) exceeds model.max_position_embeddings")
        if self.stream is not None:
            self._check_stream(known)
        teachers = ["final", "pretrain", *[f"continual/{t}" for t in self.continual.tasks]]
        if not self.distill.teachers():
            raise ValueError("distill.teacher: give at least one teacher")
        for t in self.distill.teachers():
            if t not in teachers and not t.startswith("models:/"):
                raise ValueError(f"distill.teacher '{t}' is not one of {teachers} or a registry URI models:/NAME@ALIAS")
        return self

    def stream_train(self) -> TrainConfig:
        """Every stream task's training config: ``pretrain``'s keys with ``stream.train`` on top (slices/steps per task)."""
        assert self.stream is not None
        base = self.pretrain.model_dump(exclude_unset=False)
        if self.stream.train.get("schedule") == "infinite":  # it has its own warmup and final-ratio keys
            base = {k: v for k, v in base.items() if k not in ("warmup_steps", "min_lr_ratio")}
        merged = {**base, **self.stream.train, "slices": self.stream.tasks[0].slices, "replay": {"ratio": 0.0, "slices": []},
                  "probe_every": 0}
        return TrainConfig.model_validate(merged, strict=False)

    def _check_stream(self, known: list[str]) -> None:
        """Bad streams fail here, at start: unknown slices, a budget below one batch, bad training keys."""
        from fluxforge.continual.stream import Stream, Task, validate_stream

        s = self.stream
        for key in s.train:
            if key in ("slices", "steps", "replay", "probe_every") or key not in TrainConfig.model_fields:
                raise ValueError(f"stream.train.{key}: not a training key a stream task can set (slices, steps and "
                                 "replay come from stream.tasks and stream.replay)")
        try:
            cfg = self.stream_train()
        except ValidationError as err:
            raise ValueError(f"stream.train: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from err
        stream = Stream(tuple(Task(t.name, tuple(t.slices), t.budget_tokens) for t in s.tasks))
        validate_stream(stream, known, cfg.batch_size, cfg.seq_len)  # StreamError (a ValueError) names task and slice
        for pat in s.replay.slices:
            if not fnmatch.filter(known, pat):
                raise ValueError(f"stream.replay.slices: '{pat}' matches no slice; known slices: {known}")
        if s.replay.ratio != 0 and not s.replay.slices and not s.replay.buffer_tokens:
            raise ValueError("stream.replay: a replay ratio needs replay slices or a buffer (buffer_tokens > 0)")
        if s.strategy.kind == "pretrain_mix" and s.replay.ratio == "planned":
            raise ValueError("stream.strategy pretrain_mix sets the mixture itself (strategy.domain_share of new data, "
                             "the rest in the base model's proportions); set stream.replay.ratio to a number")
        if s.strategy.kind == "pretrain_mix" and not s.replay.slices:
            raise ValueError("stream.strategy pretrain_mix needs stream.replay.slices (the base model's pretraining data)")
        if s.task_peak == "meta_cosine" and cfg.schedule != "cosine":
            raise ValueError(f"stream.task_peak meta_cosine anneals the peak of per-task cosine schedules; "
                             f"stream.train.schedule is {cfg.schedule!r}")
        if s.init != "pretrain" and not s.init.startswith("continual/") and not s.init.startswith("models:/"):
            raise ValueError(f"stream.init '{s.init}': use pretrain, continual/<task> or a registry URI models:/NAME@ALIAS")

    def expand(self, patterns: list[str]) -> list[str]:
        """Slice names matched by globs, in world order, without repeats."""
        known = self.world.slices()
        return [s for s in known if any(fnmatch.fnmatch(s, p) for p in patterns)]

    def teacher_names(self) -> list[str]:
        """The distillation teachers with "final" resolved to the last continual task's model."""
        return [self.continual.final if t == "final" else t for t in self.distill.teachers()]


def _format_errors(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid params ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? remove it or check the spelling against params.yaml's documented keys)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], path: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, Path(path))) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return parse_params(raw, path)
