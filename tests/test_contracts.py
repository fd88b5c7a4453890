import json

import pandas as pd
import pytest

from fluxforge.data.contracts import ContractError, raw_expectations, validate


def _df(n=4):
    return pd.DataFrame({"id": [f"d{i}" for i in range(n)], "text": ["some text"] * n, "source": "s",
                         "url": "https://a.org/x", "timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
                         "domain": "general", "meta": "{}"})


def test_good_data_passes_and_result_is_saved(tmp_path):
    out = tmp_path / "raw.json"
    summary = validate(_df(), raw_expectations(), "raw", out)
    assert summary["success"] and summary["failed"] == 0
    assert json.loads(out.read_text())["success"] is True


def test_broken_contract_names_expectation_column_and_examples(tmp_path):
    df = _df()
    df.loc[2, "id"] = "d0"
    df.loc[3, "domain"] = "gossip"
    out = tmp_path / "raw.json"
    with pytest.raises(ContractError) as err:
        validate(df, raw_expectations(), "raw", out)
    msg = str(err.value)
    assert "expect_column_values_to_be_unique on column 'id'" in msg
    assert "expect_column_values_to_be_in_set on column 'domain'" in msg and "gossip" in msg
    assert str(out) in msg and out.exists()


def test_contract_comes_from_params_and_names_each_broken_bound(tmp_path):
    from fluxforge.config import ContractConfig
    from fluxforge.data.contracts import expectations

    cfg = ContractConfig(text_chars=[5, 20], timestamps=["2020-01-01", "2024-12-31"], domains=["general"])
    df = _df(5)
    df.loc[1, "text"] = "x" * 50                                    # too long
    df.loc[2, "timestamp"] = pd.Timestamp("2031-06-01", tz="UTC")   # after the range
    df.loc[3, "domain"] = "cyber"                                   # allowed elsewhere, not here
    with pytest.raises(ContractError) as err:
        validate(df, expectations(cfg), "curated", tmp_path / "c.json")
    msg = str(err.value)
    assert "expect_column_value_lengths_to_be_between on column 'text': 1 of 5 rows" in msg
    assert "expect_column_values_to_be_between on column 'timestamp': 1 of 5 rows" in msg and "2031" in msg
    assert "expect_column_values_to_be_in_set on column 'domain': 1 of 5 rows" in msg
    assert validate(_df(5), expectations(cfg), "curated", tmp_path / "ok.json")["success"]


def test_missing_column_and_empty_table_are_reported_not_crashed(tmp_path):
    with pytest.raises(ContractError) as err:
        validate(_df().drop(columns=["url"]), raw_expectations(), "raw", tmp_path / "r.json")
    assert "expect_table_columns_to_match_set" in str(err.value) and "url" in str(err.value)
    with pytest.raises(ContractError, match="expect_table_row_count_to_be_between"):
        validate(_df(0), raw_expectations(), "raw", tmp_path / "e.json")


def test_bad_contract_params_are_named():
    from pydantic import ValidationError

    from fluxforge.config import ContractConfig

    with pytest.raises(ValidationError, match="unique names columns that are not in `columns`"):
        ContractConfig(unique=["doc_id"])
    with pytest.raises(ValidationError, match="timestamps: 2025-01-01 is after 2020-01-01"):
        ContractConfig(timestamps=["2025-01-01", "2020-01-01"])
