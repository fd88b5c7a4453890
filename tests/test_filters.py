import pandas as pd

from fluxforge.config import FilterConfig
from fluxforge.data.filters import GopherQuality, GopherRepetition, LexiconToxicity, apply_filters, strip_boilerplate

CLEAN = ("The history of the harbour town is told in the archive of the local library. " * 6).strip()


def _df(texts):
    return pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "s",
                         "url": "https://x.org/a", "timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
                         "domain": "general", "meta": "{}"})


def test_each_rule_drops_its_defect_and_keeps_clean_text():
    texts = {
        "clean": CLEAN,
        "short": "Click here for more.",
        "lorem": CLEAN + " Lorem ipsum dolor sit amet.",
        "repeat": "\n".join(["Great post, thanks for sharing!"] * 10),
        "hashes": CLEAN + " " + " ".join(["###"] * 40),
        "toxic": CLEAN + " Only an idiot would say that.",
    }
    kept, rejected, _ = apply_filters(_df(list(texts.values())), FilterConfig())
    reasons = dict(zip(rejected["text"].map(lambda t: next(k for k, v in texts.items() if v == t)), rejected["reason"]))
    assert list(kept["text"]) == [CLEAN]
    assert reasons == {
        "short": "gopher_quality:min_doc_words",
        "lorem": "c4_lorem_ipsum",
        "repeat": "gopher_repetition:dup_line_frac",
        "hashes": "gopher_quality:hash_ratio",
        "toxic": "toxicity_lexicon",
    }
    assert set(rejected["stage"]) == {"filter"}


def test_boilerplate_lines_are_removed_not_the_document():
    text = "Title\nHome | News | About us | Contact\n" + CLEAN + "\nWe use cookies. Privacy policy"
    new, removed = strip_boilerplate(pd.Series([text]))
    assert removed[0] == 2 and new[0] == "Title\n" + CLEAN


def test_thresholds_are_configurable():
    few_words = " ".join(["the river flows past the old stone bridge with ease"] * 3)
    assert GopherQuality()._one(few_words) == "min_doc_words"
    assert GopherQuality(min_doc_words=10)._one(few_words) == ""
    assert LexiconToxicity(max_hits=1)(pd.Series(["an idiot"]))[0] == ""
    assert GopherRepetition(dup_line_frac=0.99, dup_line_char_frac=0.99)(pd.Series(["a\na\nb"]))[0] == ""
