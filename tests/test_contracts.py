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
