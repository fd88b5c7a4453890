import json

import pandas as pd

from fluxforge.config import DedupConfig
from fluxforge.data.dedup import dedup, minhash_signatures

BASE = ("Zorvex Gateway is affected by SQL injection. The vendor of Zorvex Gateway is Quillon Systems. "
        "Security teams should review their asset inventory and patch management process. "
        "The threat actor Crimson Heron targets Zorvex Gateway. Operators are encouraged to monitor their logs. "
        "The issue was reported through the vendor security contact and tracked by the feed. Further technical "
        "details will be released once most customers have updated. Researchers found SQL injection in Zorvex Gateway.")
OTHER = ("Brindle Router suffers from buffer overflow. Support for Brindle Router is provided by its maker Tarn Labs. "
         "Indicators of compromise are shared with the members of the information sharing group today.")


def _df(rows):
    return pd.DataFrame([{"id": i, "text": t, "source": "s", "url": "u", "timestamp": pd.Timestamp(ts, tz="UTC"),
                          "domain": "cyber", "meta": "{}"} for i, t, ts in rows])


def test_exact_and_near_duplicates_removed_earliest_kept():
    near = BASE.replace("monitor", "check")
    df = _df([("b-late", BASE.upper(), "2023-05-01"), ("a-early", BASE, "2021-01-01"),
              ("c-near", near, "2024-02-02"), ("d-other", OTHER, "2022-01-01")])
    kept, rejected, stats = dedup(df, DedupConfig())
    assert sorted(kept["id"]) == ["a-early", "d-other"]
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert reasons == {"b-late": "exact_duplicate", "c-near": "near_duplicate"}
    assert all(json.loads(m)["duplicate_of"] == "a-early" for m in rejected["meta"])
    assert stats["exact_duplicates"] == 1 and stats["near_duplicates"] == 1


def test_signature_agreement_estimates_jaccard():
    cfg = DedupConfig(bands=32, rows=8)
    sig = minhash_signatures([BASE, BASE.replace("monitor", "check"), OTHER], cfg)
    same = (sig[0] == sig[1]).mean()
    assert 0.6 < same < 0.95
    assert (sig[0] == sig[2]).mean() < 0.1


def test_threshold_controls_near_duplicate_detection():
    near = BASE.replace("monitor", "check")
    df = _df([("a", BASE, "2021-01-01"), ("b", near, "2022-01-01")])
    kept_strict, _, _ = dedup(df, DedupConfig(threshold=0.99))
    assert len(kept_strict) == 2


def test_empty_input_is_fine():
    kept, rejected, stats = dedup(_df([]).reindex(columns=["id", "text", "source", "url", "timestamp", "domain", "meta"]), DedupConfig())
    assert kept.empty and rejected.empty and stats["exact_duplicates"] == 0
