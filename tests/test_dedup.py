import json
import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fluxforge.config import DedupConfig, WorldConfig
from fluxforge.data.dedup import (
    MinHashIndex,
    _permutations,
    dedup,
    find_duplicates,
    jaccard,
    minhash_signatures,
    normalise,
    normalise_many,
    pair_jaccard,
    shingle_sets,
    signatures,
)
from fluxforge.world import generate_world
from fluxforge.world.scoring import DOC_DEFECTS, score_against_labels

BASE = ("Zorvex Gateway is affected by SQL injection. The vendor of Zorvex Gateway is Quillon Systems. "
        "Security teams should review their asset inventory and patch management process. "
        "The threat actor Crimson Heron targets Zorvex Gateway. Operators are encouraged to monitor their logs. "
        "The issue was reported through the vendor security contact and tracked by the feed. Further technical "
        "details will be released once most customers have updated. Researchers found SQL injection in Zorvex Gateway.")
OTHER = ("Brindle Router suffers from buffer overflow. Support for Brindle Router is provided by its maker Tarn Labs. "
         "Indicators of compromise are shared with the members of the information sharing group today.")
VOCAB = [f"w{i}" for i in range(5000)]


def _df(rows):
    return pd.DataFrame([{"id": i, "text": t, "source": "s", "url": "u", "timestamp": pd.Timestamp(ts, tz="UTC"),
                          "domain": "cyber", "meta": "{}"} for i, t, ts in rows],
                        columns=["id", "text", "source", "url", "timestamp", "domain", "meta"])


def _doc(rng: random.Random, words: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(words)]


def _edit(words: list[str], k: int, rng: random.Random) -> str:
    """Replace k words spread evenly (each kills up to ngram shingles) with words outside VOCAB."""
    out = list(words)
    for j in range(k):
        out[(j + 1) * len(words) // (k + 1)] = f"new{rng.randrange(10**9)}"
    return " ".join(out)


def _dup_of(rejected: pd.DataFrame) -> dict:
    return {i: json.loads(m)["duplicate_of"] for i, m in zip(rejected["id"], rejected["meta"])}


def test_exact_and_near_duplicates_removed_earliest_kept():
    near = BASE.replace("monitor", "check")
    df = _df([("b-late", BASE.upper(), "2023-05-01"), ("a-early", BASE, "2021-01-01"),
              ("c-near", near, "2024-02-02"), ("d-other", OTHER, "2022-01-01")])
    kept, rejected, stats = dedup(df, DedupConfig())
    assert sorted(kept["id"]) == ["a-early", "d-other"]
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert reasons == {"b-late": "exact_duplicate", "c-near": "near_duplicate"}
    assert set(_dup_of(rejected).values()) == {"a-early"}
    assert stats["exact_duplicates"] == 1 and stats["near_duplicates"] == 1
    assert set(rejected["stage"]) == {"dedup"}


def test_exact_duplicates_under_case_punctuation_and_whitespace_changes():
    variants = [BASE.upper(), BASE.replace(".", " !"), "  " + BASE.replace(" ", " \n\t ") + "  ",
                BASE.replace(" ", "\u00a0"), BASE.replace("SQL", "S.Q.L").replace("S.Q.L", "sql")]
    assert len({normalise(v) for v in variants + [BASE]}) == 1
    df = _df([("orig", BASE, "2020-01-01")] + [(f"v{i}", v, "2021-01-01") for i, v in enumerate(variants)])
    kept, rejected, _ = dedup(df, DedupConfig())
    assert list(kept["id"]) == ["orig"]
    assert set(rejected["reason"]) == {"exact_duplicate"} and set(_dup_of(rejected).values()) == {"orig"}


def test_vectorised_normalisation_equals_the_python_rule():
    texts = [BASE, "Café naïve ÉLAN 3½ x² ß ﬁ\u00a0nbsp\u2003em  tab\tx_y \u0301a ٣ \u200b z \u2028 \x1c|\x1f|\x85|ǅ ʰ 〇 Ⅻ",
             "", "   ", "!!!", " a ", "C'est-à-dire: l'été, 2024/05/01 -- 'quoted' (paren) [brack] {brace}"]
    assert normalise_many(texts) == [normalise(t) for t in texts]


@pytest.mark.parametrize("confirm", ["jaccard", "signature"])
def test_near_duplicates_above_085_found_and_below_05_not(confirm):
    rng = random.Random(3)
    rows, near, far = [], {}, set()
    for i in range(20):
        base = _doc(rng, rng.randint(160, 240))
        rows.append((f"o{i}", " ".join(base), "2021-01-01"))
        close = _edit(base, 1 + i % 2, rng)
        distant = _edit(base, len(base) // 12, rng)
        assert jaccard(close, " ".join(base)) >= 0.85 and jaccard(distant, " ".join(base)) <= 0.5
        rows += [(f"n{i}", close, "2022-01-01"), (f"f{i}", distant, "2022-01-01")]
        near[f"n{i}"], far = f"o{i}", far | {f"f{i}"}
    kept, rejected, _ = dedup(_df(rows), DedupConfig(confirm=confirm))
    # P(LSH misses a pair) = (1 - J^8)^14: 0.012 at J = 0.85, 4e-4 at 0.9; these pairs are 0.86-0.95
    assert _dup_of(rejected) == near
    assert far <= set(kept["id"])


def test_pair_jaccard_equals_the_reference():
    rng = random.Random(5)
    loop = "spam eggs ham spam eggs ham spam eggs ham spam eggs ham spam"  # repeated 5-grams: sets, not lists
    texts = [" ".join(_doc(rng, rng.randint(1, 60))) for _ in range(30)] + ["", "one two", loop, loop + " eggs toast"]
    texts += [_edit(t.split(), 2, rng) for t in texts[:10] if len(t.split()) > 4]
    pairs = np.array([(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)) if (i + j) % 3 == 0])
    got = pair_jaccard(shingle_sets(texts, DedupConfig()), pairs)
    want = [jaccard(texts[i], texts[j]) for i, j in pairs]
    np.testing.assert_allclose(got, want)


def test_signature_agreement_estimates_jaccard():
    cfg = DedupConfig(bands=32, rows=8)
    sig = minhash_signatures([BASE, BASE.replace("monitor", "check"), OTHER], cfg)
    same = (sig[0] == sig[1]).mean()
    assert 0.6 < same < 0.95
    assert (sig[0] == sig[2]).mean() < 0.1


def test_threshold_controls_near_duplicate_detection():
    near = BASE.replace("monitor", "check")
    df = _df([("a", BASE, "2021-01-01"), ("b", near, "2022-01-01")])
    for confirm in ("jaccard", "signature"):
        kept_strict, _, _ = dedup(df, DedupConfig(threshold=0.99, confirm=confirm))
        kept_loose, _, _ = dedup(df, DedupConfig(threshold=0.7, confirm=confirm))
        assert len(kept_strict) == 2 and list(kept_loose["id"]) == ["a"]


def test_representative_is_earliest_then_smallest_id():
    df = _df([("m", BASE, "2022-03-01"), ("z", BASE.lower(), "2021-06-01"), ("b", BASE + " ", "2021-06-01"),
              ("a", BASE.replace("monitor", "check"), "2023-01-01")])
    kept, rejected, _ = dedup(df, DedupConfig())
    assert list(kept["id"]) == ["b"]  # 2021-06-01 ties between b and z; b < z; a has the smaller id but is later
    assert _dup_of(rejected) == {"z": "b", "m": "b", "a": "b"}


def test_cross_slice_keeps_the_2021_copy_over_2023():
    later_first = _df([("slice2023", BASE.replace("monitor", "watch"), "2023-02-01"), ("slice2021", BASE, "2021-02-01")])
    kept, rejected, _ = dedup(later_first, DedupConfig())
    assert list(kept["id"]) == ["slice2021"] and _dup_of(rejected) == {"slice2023": "slice2021"}


def test_incremental_index_rejects_duplicates_of_earlier_keepers(tmp_path):
    cfg = DedupConfig()
    rng = random.Random(11)
    a, b, c = (_doc(rng, 150) for _ in range(3))
    index = MinHashIndex(cfg)
    kept1, rej1, _ = dedup(_df([("A", " ".join(a), "2021-01-01"), ("B", " ".join(b), "2022-01-01"),
                                ("A-near", _edit(a, 1, rng), "2022-01-01")]), cfg, index=index, update_index=True)
    assert sorted(kept1["id"]) == ["A", "B"] and sorted(index.ids) == ["A", "B"]
    index.save(tmp_path / "idx")

    loaded = MinHashIndex.load(tmp_path / "idx", cfg)
    np.testing.assert_array_equal(loaded.signatures, index.signatures)
    batch2 = _df([("A-near2", _edit(a, 2, rng), "2019-01-01"),  # earlier than A, but A is already published
                  ("B-copy", " ".join(b).upper() + "!", "2024-01-01"),
                  ("C", " ".join(c), "2024-01-01"), ("C-near", _edit(c, 1, rng), "2024-02-01")])
    kept2, rej2, stats = dedup(batch2, cfg, index=loaded, update_index=True)
    assert list(kept2["id"]) == ["C"]
    assert _dup_of(rej2) == {"A-near2": "A", "B-copy": "B", "C-near": "C"}
    assert dict(zip(rej2["id"], rej2["reason"])) == {"A-near2": "near_duplicate", "B-copy": "exact_duplicate",
                                                      "C-near": "near_duplicate"}
    assert stats["duplicates_of_index"] == 2 and sorted(loaded.ids) == ["A", "B", "C"]
    loaded.save(tmp_path / "idx")

    kept3, rej3, _ = dedup(_df([("C-again", _edit(c, 1, rng), "2025-01-01"), ("D", OTHER, "2025-01-01")]),
                           cfg, index=MinHashIndex.load(tmp_path / "idx", cfg))
    assert list(kept3["id"]) == ["D"] and _dup_of(rej3) == {"C-again": "C"}


def test_index_refuses_a_different_config(tmp_path):
    MinHashIndex(DedupConfig()).save(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"index\.json.*bands"):
        MinHashIndex.load(tmp_path / "idx", DedupConfig(bands=20))
    with pytest.raises(FileNotFoundError, match="index.json"):
        MinHashIndex.load(tmp_path / "nothing", DedupConfig())


def test_signatures_do_not_depend_on_the_batch():
    rng = random.Random(2)
    texts = [" ".join(_doc(rng, n)) for n in (0, 1, 4, 5, 6, 300)] + [" ".join(_doc(rng, 20_000))] + [BASE, OTHER]
    cfg = DedupConfig()
    whole = signatures(texts, cfg)
    np.testing.assert_array_equal(whole, np.concatenate([signatures(texts[:4], cfg), signatures(texts[4:], cfg)]))
    # the 20k-word document spans several MinHash batches: compare with an unbatched minimum
    sh = shingle_sets([texts[6]], cfg)
    a, b = _permutations(cfg)
    ref = (a[:, None] * (sh.values >> np.uint64(32))[None, :] + b[:, None]).min(axis=1)
    np.testing.assert_array_equal(whole[6], ref)


def test_signatures_are_stable_across_processes():
    code = ("import sys; from fluxforge.config import DedupConfig; from fluxforge.data.dedup import signatures; "
            "sys.stdout.write(signatures([sys.argv[1]], DedupConfig()).tobytes().hex())")
    outs = {subprocess.run([sys.executable, "-c", code, BASE], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {signatures([BASE], DedupConfig()).tobytes().hex()}


def test_find_duplicates_on_precomputed_signatures():
    cfg = DedupConfig(confirm="signature")
    texts = [BASE, OTHER, BASE.replace("monitor", "check"), OTHER.upper()]
    rep, pairs = find_duplicates(signatures(texts, cfg), cfg)
    assert list(rep) == [0, 1, 0, 1] and len(pairs) == 2


def test_every_row_is_kept_or_rejected_once():
    rng = random.Random(7)
    for trial in range(15):
        bases = [_doc(rng, rng.randint(0, 80)) for _ in range(rng.randint(1, 12))]
        rows = []
        for i in range(rng.randint(1, 40)):
            w = rng.choice(bases)
            text = rng.choice([" ".join(w), " ".join(w).upper() + ".", _edit(w, 1, rng) if len(w) > 8 else "x",
                               " ".join(_doc(rng, 30))])
            rows.append((f"d{rng.randrange(10**6)}-{i}", text, f"20{rng.randint(20, 23)}-0{rng.randint(1, 3)}-01"))
        df = _df(rows)
        kept, rejected, stats = dedup(df, DedupConfig(confirm=rng.choice(["jaccard", "signature"])))
        assert sorted([*kept["id"], *rejected["id"]]) == sorted(df["id"]), trial
        assert len(set(kept["id"])) == len(kept)
        assert len({normalise(t) for t in kept["text"]}) == len(kept)
        order = {i: (ts, i) for i, ts in zip(df["id"], df["timestamp"])}
        for row, rep in _dup_of(rejected).items():
            assert rep in set(kept["id"]) and order[rep] < order[row]
        assert stats["exact_duplicates"] + stats["near_duplicates"] == len(rejected)


def test_null_text_is_an_error_naming_the_row():
    df = _df([("fine", BASE, "2021-01-01"), ("broken", None, "2021-01-01")])
    with pytest.raises(ValueError, match="broken"):
        dedup(df, DedupConfig())


def test_empty_input_is_fine():
    kept, rejected, stats = dedup(_df([]), DedupConfig())
    assert kept.empty and rejected.empty and stats["exact_duplicates"] == 0


def test_planted_world_duplicates_are_found(tmp_path):
    """The world's planted exact and near (Jaccard 0.81-0.89) duplicates, with the filter's defects removed first."""
    generate_world(WorldConfig(), tmp_path / "w")
    labels = pd.read_parquet(tmp_path / "w" / "labels.parquet")
    rows = [json.loads(line) for f in sorted((tmp_path / "w" / "sources").glob("*.jsonl")) for line in f.read_text().splitlines()]
    df = pd.DataFrame(rows).rename(columns={"doc_id": "id"})
    df = df[df["id"].isin(labels.loc[~labels["defect"].isin(DOC_DEFECTS), "doc_id"])]
    df = df.assign(timestamp=pd.to_datetime(df["timestamp"], utc=True), meta=[json.dumps({"native_id": i}) for i in df["id"]])
    kept, rejected, _ = dedup(df, DedupConfig())
    q = score_against_labels(kept, rejected, labels)
    assert q["recall.exact_dup"] == 1.0 and q["recall.near_dup"] >= 0.95 and q["precision.dedup"] >= 0.95, q
