"""``data``: the sources ingest reads, the contracts at each boundary, dedup, and how data steps run over shards."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from fluxforge.config.base import DOMAINS, Fraction, IsoTimestamp, NonNegInt, PosInt, Strict
from fluxforge.config.filters import FilterConfig


def _check_regex(what: str, pattern: str) -> None:
    """A regex from params must compile here, at load time, not deep inside a stage."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{what} is not a valid regular expression: {err}") from None


class Source(Strict):
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
    default_timestamp: IsoTimestamp | None = None  # "2024-06-01" (quoted) for records without a timestamp (txt has none)
    # longer documents are rejected (reason too_long) before they reach filters built for prose
    max_doc_chars: PosInt = 1_000_000

    @model_validator(mode="after")
    def _consistent(self) -> Source:
        if self.format == "txt":
            if self.txt_split is None:
                raise ValueError("format txt needs txt_split: file (one document per file), blank_lines "
                                 "(one per blank-line separated block) or heading (one per heading_pattern line)")
            if self.domain == "auto":
                raise ValueError("format txt has no per-record domain: set domain to general or cyber")
            if self.default_timestamp is None:
                raise ValueError('format txt has no timestamps: set default_timestamp (an ISO date, quoted: '
                                 'default_timestamp: "2024-01-01"), or every document would be rejected')
        elif self.txt_split is not None:
            raise ValueError(f"txt_split applies to format txt only (this source is {self.format})")
        if self.timestamp_field is None and self.default_timestamp is None:
            raise ValueError('timestamp_field is null: set default_timestamp (quoted: default_timestamp: "2024-01-01"), '
                             'or every document would be rejected')
        if (self.txt_split == "heading") != (self.heading_pattern is not None):
            raise ValueError("heading_pattern is required with txt_split: heading, and used by nothing else")
        if self.heading_pattern is not None:
            _check_regex(f"heading_pattern {self.heading_pattern!r}", self.heading_pattern)
        return self



class DedupConfig(Strict):
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


class ContractConfig(Strict):
    """A great-expectations suite at one data boundary (fluxforge.data.contracts builds it from these keys)."""

    columns: list[str] = Field(default_factory=lambda: list(RAW_COLUMNS))  # exactly these columns
    not_null: list[str] = Field(default_factory=lambda: ["id", "text", "source", "timestamp", "domain"])
    unique: list[str] = Field(default_factory=lambda: ["id"])
    min_rows: NonNegInt = 1
    text_chars: Annotated[list[NonNegInt], Field(min_length=2, max_length=2)] = [1, 5_000_000]  # inclusive len(text)
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))
    timestamps: Annotated[list[IsoTimestamp], Field(min_length=2, max_length=2)] = ["1990-01-01", "2100-01-01"]  # inclusive
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
            raise ValueError(f'timestamps must be two ISO dates, quoted: ["1990-01-01", "2100-01-01"]: {err}') from None
        if lo > hi:
            raise ValueError(f"timestamps: {self.timestamps[0]} is after {self.timestamps[1]}")
        _check_regex("url_pattern", self.url_pattern)
        return self


class ContractsConfig(Strict):
    """One contract per boundary: raw (after ingest, before filtering) and curated (what training reads)."""

    raw: ContractConfig = ContractConfig()
    curated: ContractConfig = ContractConfig(text_chars=[50, 1_000_000])


class RunnerConfig(Strict):
    """How the filter and dedup steps run (:mod:`fluxforge.data.shards`); it never changes their output."""

    # process: a local process pool (Prefect ProcessPoolTaskRunner), for CPU-bound steps; thread: a thread
    # pool (GIL-bound; I/O steps); serial: one shard after another in this process, no Prefect; ray: the
    # filter's shards and dedup's sketches and LSH buckets on a Ray cluster (fluxforge.orchestrate.ray_cluster)
    kind: Literal["process", "thread", "serial", "ray"] = "process"
    workers: PosInt | None = None  # null: os.cpu_count() (ray: CPUs of the local cluster; unused with an address)
    # documents per shard. A corpus of at most this many documents is one filter shard, run in this process
    # without Prefect: starting Prefect costs seconds (a server) to tens of seconds (a temporary one); see shards.py
    shard_docs: PosInt = 5000
    # ray only: null starts a local cluster for the run; "auto" (a node of the cluster), "HOST:PORT" (the
    # head's GCS) or "ray://HOST:10001" (Ray Client) joins an existing one
    address: str | None = None

    @model_validator(mode="after")
    def _address_for_clusters(self) -> RunnerConfig:
        if self.address is not None and self.kind != "ray":
            raise ValueError(f"address is used by kind ray only, not '{self.kind}'")
        return self


class DataConfig(Strict):
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
