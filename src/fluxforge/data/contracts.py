"""Data contracts with great-expectations 1.x, run in an ephemeral context (nothing written to disk by GX).

A failing contract stops the DAG with a summary a person can act on (which
expectation, how many rows, a few example values); the full validation result is
saved next to it as JSON.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fluxforge.config import ContractConfig
from fluxforge.errors import FluxForgeError
from fluxforge.io import write_json

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


class ContractError(FluxForgeError):
    """The data broke its contract; the message lists each failed expectation."""


def expectations(cfg: ContractConfig) -> list:
    """The suite a boundary's params declare: schema, nulls, uniqueness, text length, domains, time range, URLs."""
    import great_expectations.expectations as gxe

    lo, hi = (pd.Timestamp(t, tz="UTC") if pd.Timestamp(t).tzinfo is None else pd.Timestamp(t) for t in cfg.timestamps)
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(cfg.columns), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in cfg.not_null],
        *[gxe.ExpectColumnValuesToBeUnique(column=c) for c in cfg.unique],
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=cfg.text_chars[0], max_value=cfg.text_chars[1]),
        gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(cfg.domains)),
        gxe.ExpectColumnValuesToBeBetween(column="timestamp", min_value=lo, max_value=hi),
        gxe.ExpectColumnValuesToMatchRegex(column="url", regex=cfg.url_pattern),
    ]


def raw_expectations() -> list:
    """The default raw-boundary suite (tests and callers without params)."""
    return expectations(ContractConfig())


def run_suite(df: pd.DataFrame, expectations: list, name: str, result_format: str | dict = "SUMMARY"):  # noqa: ANN201
    """Validate ``df`` against ``expectations`` in an ephemeral GX context; the GX validation result."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (ctx.data_sources.add_pandas(name=f"{name}_source")
                 .add_dataframe_asset(name=name)
                 .add_batch_definition_whole_dataframe(name=f"{name}_batch"))
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_contract"))
    for e in expectations:
        suite.add_expectation(e)
    return batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format=result_format)


def validate(df: pd.DataFrame, expectations: list, name: str, result_path: Path) -> dict:
    """Validate ``df``; write the full result to ``result_path``; raise ContractError on failure."""
    frame = df.copy()
    if "timestamp" in frame:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce")
    result = run_suite(frame, expectations, name)
    full = result.to_json_dict()
    write_json(result_path, full)
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        examples = res.get("partial_unexpected_list") or res.get("observed_value")
        failures.append(
            f"  - {cfg.type} on column '{cfg.kwargs.get('column', '(table)')}': "
            f"{res.get('unexpected_count', '?')} of {res.get('element_count', len(df))} rows fail; "
            f"examples: {str(examples)[:300]}"
        )
    summary = {"contract": name, "success": bool(result.success), "rows": int(len(df)),
               "expectations": len(result.results), "failed": len(failures)}
    if failures:
        raise ContractError(
            f"data contract '{name}' failed ({len(failures)} of {len(result.results)} expectations); "
            f"full result: {result_path}\n" + "\n".join(failures)
        )
    return summary
