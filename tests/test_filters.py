import json

import numpy as np
import pandas as pd
import pytest

from fluxforge.config import (
    C4Config,
    FilterConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    ParamsError,
    PIIConfig,
    ToxicityConfig,
    URLBlocklistConfig,
    parse_params,
)
from fluxforge.data.filters import (
    C4,
    Batch,
    FilterError,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    PIIRedactor,
    Toxicity,
    URLBlocklist,
    apply_filters,
    identify_languages,
    lexicon_scores,
    sentences_per_line,
    strip_boilerplate,
)

SENT = "The history of the harbour town is told in the archive of the local library."
CLEAN = "\n".join(
    [
        "The harbour town grew around a small fishing port in the north of the region.",
        "Its first stone quay was built with money raised by the merchants of the town.",
        "During the long winters the boats stayed in the harbour and the crews repaired their nets.",
        "A railway line reached the town later and brought visitors from the capital every summer.",
        "Today the old warehouses hold a museum, a library and several small shops near the water.",
        "Local historians keep the records of the port in the archive of the town hall.",
    ]
)
OFF = {"enabled": False}


def _df(texts, urls=None):
    n = len(texts)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "text": texts, "source": "s",
                         "url": urls or ["https://x.org/a"] * n,
                         "timestamp": pd.Timestamp("2024-01-01", tz="UTC"), "domain": "general", "meta": "{}"})


def _only(**sections) -> FilterConfig:
    """A config with every section off except the given ones (dicts of their settings)."""
    names = ["boilerplate", "url_blocklist", "language", "gopher_repetition", "gopher_quality", "c4", "fineweb",
             "toxicity", "pii", "age"]
    return FilterConfig.model_validate({k: sections.get(k, OFF) for k in names})


def _r(step, texts):
    return list(step(Batch(pd.Series(texts))).reasons)


def _texts(step, texts):
    """(new texts, stats) of a transform step."""
    v = step(Batch(pd.Series(texts)))
    return v.texts, v.stats


def _urls(urls):
    """A batch whose url column is ``urls`` (the URL filter reads nothing else)."""
    return Batch(pd.Series([""] * len(urls)), pd.DataFrame({"url": urls}))


# ----------------------------------------------------------------------------- the default chain
def test_default_chain_keeps_clean_text_and_names_the_first_failing_rule():
    texts = {
        "clean": CLEAN,
        "short": "Click here for more.",
        "lorem": CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit, and so on for the rest.",
        "repeat": CLEAN.split("\n")[0] + "\n" + "\n".join(["Great post, thanks for sharing this with the group!"] * 10),
        "hashes": CLEAN + "\n" + " ".join(f"#topic{i}" for i in range(40)),
        "toxic": CLEAN + "\nOnly an idiot would say that about the town.",
        "german": "Die Geschichte der kleinen Hafenstadt wird im Archiv der örtlichen Bibliothek erzählt. " * 6,
    }
    kept, rejected, stats = apply_filters(_df(list(texts.values())), FilterConfig())
    by_id = dict(zip(rejected["id"], rejected["reason"]))
    names = list(texts)
    reasons = {names[int(i)]: r for i, r in by_id.items()}
    assert list(kept["id"]) == ["0"]
    # a 4-word text is too short for reliable language id: the language filter (first in the chain) or Gopher drops it
    assert reasons.pop("short") in {"language:low_score", "language:not_allowed", "gopher_quality:min_doc_words"}
    assert reasons == {
        "lorem": "c4:lorem_ipsum",
        "repeat": "gopher_repetition:dup_line_frac",
        "hashes": "gopher_quality:hash_ratio",
        "toxic": "toxicity:lexicon",
        "german": "language:not_allowed",
    }
    assert set(rejected["stage"]) == {"filter"}
    assert len(kept) + len(rejected) == len(texts)
    meta = json.loads(kept["meta"][0])
    assert meta["language"] == "en" and meta["language_score"] > 0.65 and meta["age_days"] == 366  # 2024-01-01 -> 2025-01-01
    assert json.loads(rejected.set_index("id").loc["6", "meta"])["language"] == "de"


def test_every_document_is_kept_or_rejected_with_a_reason():
    rng = np.random.default_rng(0)
    pieces = [SENT, "Lorem ipsum dolor.", "{ x }", "###", "idiot", "", "a b", "Home | News | About | Login", "..."]
    texts = ["\n".join(rng.choice(pieces, size=rng.integers(1, 12))) for _ in range(120)]
    df = _df(texts)
    kept, rejected, _ = apply_filters(df, FilterConfig())
    assert len(kept) + len(rejected) == len(df)
    assert sorted(kept["id"].tolist() + rejected["id"].tolist()) == sorted(df["id"])
    assert (rejected["reason"].str.len() > 0).all()
    assert rejected["reason"].str.fullmatch(r"[a-z0-9_]+:[a-z0-9_]+").all()
    assert set(rejected.columns) == set(df.columns) | {"reason", "stage"}


# ----------------------------------------------------------------------------- Gopher quality
@pytest.mark.parametrize(("n", "want"), [(49, "gopher_quality:min_doc_words"), (50, "")])
def test_min_doc_words_at_the_threshold(n, want):
    words = (["the", "and", "river"] * 40)[:n]
    assert _r(GopherQuality(), [" ".join(words) + " ."]) == [want]


def test_gopher_quality_rules_each_fire_across_their_threshold():
    base = " ".join(["the river flows past the old stone bridge and with"] * 10)  # 100 words
    gq = GopherQuality()
    assert _r(gq, [base]) == [""]
    assert _r(gq, [base + " #" * 10]) == [""]  # 10 hashes / 110 words <= 0.1
    assert _r(gq, [base + " #" * 12]) == ["gopher_quality:hash_ratio"]
    assert _r(gq, [base + " ..." * 12]) == ["gopher_quality:ellipsis_ratio"]
    assert _r(gq, [" ".join(["a"] * 60)]) == ["gopher_quality:min_avg_word_length"]
    assert _r(gq, [" ".join(["internationalisation"] * 60)]) == ["gopher_quality:max_avg_word_length"]
    bullets = "\n".join(["- the river and the bridge with stone"] * 10)
    assert _r(gq, [bullets]) == ["gopher_quality:bullet_lines_ratio"]
    ell = "\n".join(["the river and the bridge with stone walls go on and on" for _ in range(6)] + ["and then ..."] * 3)
    assert _r(GopherQuality(GopherQualityConfig(max_symbol_word_ratio=1)), [ell]) == ["gopher_quality:ellipsis_lines_ratio"]
    numbers = base + " " + " ".join(["1234"] * 30)  # 100 alpha words of 130 = 0.77
    assert _r(gq, [numbers]) == ["gopher_quality:alpha_words_ratio"]
    assert _r(gq, [" ".join(["river flows past old stone bridge"] * 10)]) == ["gopher_quality:stop_words"]
    assert _r(gq, [" ".join(["The river flows past old stone bridge"] * 10)]) == ["gopher_quality:stop_words"]  # case-sensitive


def test_bullet_rule_threshold_is_strict():
    line = "- the river and the bridge with stone walls and more words here"
    nine_of_ten = "\n".join([line] * 9 + ["the plain line with the river and the bridge"])
    ten_of_ten = "\n".join([line] * 10)
    gq = GopherQuality()
    assert _r(gq, [nine_of_ten]) == [""]  # 0.9 is not > 0.9
    assert _r(gq, [ten_of_ten]) == ["gopher_quality:bullet_lines_ratio"]


# ----------------------------------------------------------------------------- Gopher repetition
def test_duplicate_lines_and_paragraphs():
    rep = GopherRepetition()
    lines = [f"line number {w} of the text with some words" for w in "abcdefghij"]
    three = "\n".join(lines[:7] + lines[:3])  # 3 duplicates of 10 lines = 0.3: not > 0.3
    four = "\n".join(lines[:6] + lines[:4])
    assert _r(GopherRepetition(GopherRepetitionConfig(dup_line_char_frac=1, top_n_grams={}, dup_n_grams={})), [three]) == [""]
    assert _r(GopherRepetition(GopherRepetitionConfig(dup_line_char_frac=1, top_n_grams={}, dup_n_grams={})), [four]) == [
        "gopher_repetition:dup_line_frac"]
    paras = "\n\n".join(lines[:2] + lines[:2])
    assert _r(rep, [paras]) == ["gopher_repetition:dup_para_frac"]
    assert _r(rep, [""]) == ["gopher_repetition:empty"]


def test_top_ngram_uses_the_most_frequent_ngram_times_its_length():
    # "blue whale" x4: 4 * 10 chars over 100-ish chars; the other words are all distinct
    filler = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"
    text = f"blue whale {filler} blue whale mike blue whale november blue whale"
    cfg = GopherRepetitionConfig(top_n_grams={2: 0.2}, dup_n_grams={})
    share = 4 * len("blue whale") / len(text)
    assert share > 0.2
    assert _r(GopherRepetition(cfg), [text]) == ["gopher_repetition:top_2_gram"]
    looser = GopherRepetitionConfig(top_n_grams={2: share + 0.01}, dup_n_grams={})
    assert _r(GopherRepetition(looser), [text]) == [""]


def test_duplicated_ngrams_follow_datatrove_greedy_scan():
    words = "one two three four five".split()
    text = " ".join(words + ["six"] + words + ["seven", "eight", "nine", "ten", "eleven", "twelve"])
    b = Batch(pd.Series([text]))
    cum = np.concatenate([[0], np.cumsum(b.word_lengths)])
    got = GopherRepetition._dup(b, 5, cum, np.array([0.0]))[0][0]
    assert got == len("onetwothreefourfive")  # the second copy, chars without spaces
    # overlapping copies: a a a a a a a (7 words) -> 5-grams at 0,1,2: 1 and 2 are dups; the scan jumps 5 after 1
    b2 = Batch(pd.Series(["a a a a a a a"]))
    cum2 = np.concatenate([[0], np.cumsum(b2.word_lengths)])
    assert GopherRepetition._dup(b2, 5, cum2, np.array([0.0]))[0][0] == 5  # the bound would say 10


# ----------------------------------------------------------------------------- C4
def test_c4_removes_bad_lines_and_keeps_the_rest():
    text = "\n".join([
        "Menu",  # < 3 words
        SENT + " [1]",
        "Please enable JavaScript to view the comments.",
        "We use cookies to improve your experience on this site.",
        "This line has no terminal punctuation but three words or more",
        SENT, SENT, SENT,
    ])
    v = C4()(Batch(pd.Series([text])))
    r, new, stats = v.reasons, v.texts, v.stats
    assert list(r) == [""]
    # the citation goes, the space before it stays (datatrove strips the line before removing citations)
    assert new[0].split("\n") == [SENT + " ", "This line has no terminal punctuation but three words or more", SENT, SENT, SENT]
    assert stats == {"c4_lines_removed": 3, "c4_docs_modified": 1}
    new2 = C4(C4Config(filter_no_terminal_punct=True))(Batch(pd.Series([text]))).texts
    assert "no terminal punctuation" not in new2[0]


def test_c4_document_rules():
    c4 = C4()
    five = " ".join([SENT] * 5)
    four = " ".join([SENT] * 4)
    assert _r(c4, [five]) == [""]
    assert _r(c4, [four]) == ["c4:min_num_sentences"]
    assert _r(c4, [five + "\nfunction x() { return 1; } is here."]) == ["c4:curly_bracket"]
    assert _r(c4, ["Lorem ipsum dolor sit amet.\n{ x y z }\n" + five]) == ["c4:lorem_ipsum"]
    assert _r(c4, ["{ x y z }\nLorem ipsum dolor sit amet.\n" + five]) == ["c4:curly_bracket"]  # first line decides
    assert _r(c4, ["lorem ipsum\n" + five]) == [""]  # a 2-word line is dropped before the lorem check (datatrove order)
    assert _r(C4(C4Config(min_num_sentences=0, filter_lorem_ipsum=False)), ["Lorem ipsum dolor sit amet."]) == [""]


def test_sentence_count_follows_spacy_sentencizer_cases():
    lines = ["It was 3.5 m long. The U.S. team won.", "See e.g. the index.php file. Then stop", "One? Two! Three."]
    assert list(sentences_per_line(Batch(pd.Series(["\n".join(lines)])))) == [2, 2, 3]


# ----------------------------------------------------------------------------- FineWeb
def test_fineweb_rules():
    fw = FineWebQuality()
    good = "\n".join(f"{SENT[:-1]} number {i}." for i in range(8))
    assert _r(fw, [good]) == [""]
    no_punct = "\n".join(f"{SENT[:-1]} number {i}" for i in range(8))
    assert _r(fw, [no_punct]) == ["fineweb:line_punct_ratio"]
    one_of_eight = no_punct + "\nThe end of the story about the town."  # 1/9 = 0.111 < 0.12
    assert _r(fw, [one_of_eight]) == ["fineweb:line_punct_ratio"]
    assert _r(FineWebQuality(FineWebConfig(line_punct_thr=0.11)), [one_of_eight]) == [""]
    short = "\n".join(["Short line here."] * 3 + [f"A different short one {i}." for i in range(4)] + [SENT])
    assert _r(FineWebQuality(FineWebConfig(char_duplicates_ratio=1)), [short]) == ["fineweb:short_line_ratio"]
    dup = good + "\n" + good.split("\n")[0]
    assert _r(fw, [dup]) == ["fineweb:char_dup_ratio"]
    listy = "\n".join(f"Point{i}." for i in range(20)) + "\n" + SENT  # 20 newlines / 56 words = 0.36
    assert _r(FineWebQuality(FineWebConfig(short_line_thr=1)), [listy]) == ["fineweb:list_ratio"]


# ----------------------------------------------------------------------------- language
def test_language_id_english_vs_german_and_spanish():
    de = ("Die Stadt liegt am Ufer des Flusses und ist bekannt für ihre alte Brücke, die im Mittelalter "
          "gebaut wurde. Jedes Jahr kommen viele Besucher, um den Markt und das Museum zu sehen.")
    es = ("La ciudad se encuentra a orillas del río y es conocida por su antiguo puente, construido en la "
          "Edad Media. Cada año llegan muchos visitantes para ver el mercado y el museo.")
    lang, score = identify_languages([CLEAN, de, es])
    assert list(lang) == ["en", "de", "es"]
    assert (score > 0.65).all()
    kept, rej, _ = apply_filters(_df([CLEAN, de, es]), _only(language={"languages": ["en", "es"]}))
    assert list(kept["id"]) == ["0", "2"] and list(rej["reason"]) == ["language:not_allowed"]
    kept, rej, _ = apply_filters(_df([CLEAN, de]), _only(language={"label_only": True}))
    assert len(rej) == 0 and [json.loads(m)["language"] for m in kept["meta"]] == ["en", "de"]


# ----------------------------------------------------------------------------- toxicity
def test_lexicon_toxicity_and_threshold():
    texts = [CLEAN, CLEAN + " What an idiot.", CLEAN + " What an idiot and a moron."]
    assert _r(Toxicity(), texts) == ["", "toxicity:lexicon", "toxicity:lexicon"]
    assert _r(Toxicity(ToxicityConfig(max_hits=1)), texts) == ["", "", "toxicity:lexicon"]
    assert _r(Toxicity(ToxicityConfig(extra_words=["harbour"])), [CLEAN]) == ["toxicity:lexicon"]


def test_inverse_toxicity_drops_the_least_toxic_share():
    texts = [CLEAN + " idiot" * k for k in range(10)]  # toxicity rises with k
    got = _r(Toxicity(ToxicityConfig(mode="inverse", inverse_fraction=0.3)), texts)
    assert got == ["toxicity:inverse"] * 3 + [""] * 7


def test_classifier_is_loaded_by_import_path_and_checked():
    cfg = ToxicityConfig(method="classifier", classifier="fluxforge.data.filters:lexicon_scores", threshold=0.5)
    assert _r(Toxicity(cfg), [CLEAN, CLEAN + " moron"]) == ["", "toxicity:classifier"]
    assert lexicon_scores(["a moron"])[0] == pytest.approx(1 - np.exp(-1))
    inv = ToxicityConfig(method="classifier", classifier="fluxforge.data.filters:lexicon_scores", mode="inverse",
                         inverse_fraction=0.5)
    assert _r(Toxicity(inv), [CLEAN + " moron", CLEAN]) == ["", "toxicity:inverse"]
    with pytest.raises(FilterError, match="cannot be imported"):
        Toxicity(ToxicityConfig(method="classifier", classifier="fluxforge.nope:f"))
    with pytest.raises(FilterError, match="returned shape"):
        Toxicity(ToxicityConfig(method="classifier", classifier="builtins:len"))(Batch(pd.Series(["a", "b"])))


# ----------------------------------------------------------------------------- URL block list
def test_url_blocklist_domains_and_words():
    ub = URLBlocklist(URLBlocklistConfig(domains=["bad.example"], banned_words=["spamword"], soft_banned_words=["cheap"]))
    urls = ["https://news.example.org/a", "https://www.bad.example/x", "http://sub.BAD.example:8080/y",
            "https://ok.example/free-porn-videos", "https://ok.example/spamword", "https://ok.example/cheap-casino",
            "https://ok.example/cheap", "", None, "https://notbad.example/"]
    assert list(ub(_urls(urls)).reasons) == ["", "url_blocklist:domain", "url_blocklist:domain", "url_blocklist:banned_word",
                                         "url_blocklist:banned_word", "url_blocklist:soft_banned_words", "", "", "", ""]
    assert list(URLBlocklist(URLBlocklistConfig(use_shipped_list=False))(_urls(urls[3:4])).reasons) == [""]


def test_url_blocklist_needs_the_url_column():
    df = _df([CLEAN]).drop(columns="url")
    with pytest.raises(FilterError, match=r"lacks column\(s\) \['url'\]"):
        apply_filters(df, FilterConfig())
    kept, _, _ = apply_filters(df, _only())
    assert len(kept) == 1


# ----------------------------------------------------------------------------- transforms
def test_pii_redaction_never_drops_and_counts():
    text = ("Mail jane.doe@example.com or call +1 415 555 0134 / (415) 555-0134 / 415-555-0134. "
            "Hosts 8.8.8.8, 10.0.0.5 and 2001:db8::1 were seen. CVE-2021-1234 on 2021-02-26, version 1.2.3, "
            "at 12:30:45 with 1,000 users.")
    new, stats = _texts(PIIRedactor(), [text, CLEAN])
    assert "<EMAIL>" in new[0] and "jane.doe" not in new[0]
    assert new[0].count("<PHONE>") == 3 and new[0].count("<IP_ADDRESS>") == 3
    assert "CVE-2021-1234 on 2021-02-26, version 1.2.3, at 12:30:45 with 1,000 users." in new[0]
    assert stats == {"pii_emails": 1, "pii_ips": 3, "pii_phones": 3, "pii_docs_redacted": 1}
    assert new[1] == CLEAN
    public, s2 = _texts(PIIRedactor(PIIConfig(ip_public_only=True)), [text])
    assert "10.0.0.5" in public[0] and "8.8.8.8" not in public[0] and s2["pii_ips"] == 1
    kept, rejected, st = apply_filters(_df([CLEAN + "\nWrite to a.b@example.org for the records."]), _only(pii={}))
    assert len(rejected) == 0 and "<EMAIL>" in kept["text"][0] and st["pii_emails"] == 1


def test_boilerplate_lines_are_removed_not_the_document():
    text = "Title\nHome | News | About us | Contact\n" + SENT + "\nWe use cookies. Privacy policy"
    new, removed = strip_boilerplate(pd.Series([text]))
    assert removed[0] == 2 and new[0] == "Title\n" + SENT


def test_age_is_tagged_and_missing_timestamps_counted():
    df = _df([CLEAN, CLEAN])
    df["timestamp"] = [pd.Timestamp("2024-12-01", tz="UTC"), pd.NaT]
    kept, _, stats = apply_filters(df, _only(age={"reference_date": "2025-01-01"}))
    metas = [json.loads(m) for m in kept["meta"]]
    assert metas[0]["age_days"] == 31 and "age_days" not in metas[1] and stats["age_missing"] == 1


def test_bad_meta_json_names_the_document():
    df = _df([CLEAN])
    df["meta"] = "{not json"
    with pytest.raises(FilterError, match="meta of doc '0'"):
        apply_filters(df, _only(age={}))


# ----------------------------------------------------------------------------- config
def test_sections_switch_off_and_thresholds_are_configurable():
    short = " ".join(["the river flows past the old stone bridge with ease"] * 3)
    assert _r(GopherQuality(), [short]) == ["gopher_quality:min_doc_words"]
    assert _r(GopherQuality(GopherQualityConfig(min_doc_words=10)), [short]) == [""]
    kept, rejected, _ = apply_filters(_df(["Click here."]), _only())
    assert len(kept) == 1 and len(rejected) == 0


def test_config_errors_are_readable(tiny_raw):
    bad = [
        ({"gopher_quality": {"min_doc_words": 10, "max_doc_words": 5}}, r"min_doc_words \(10\) is above max_doc_words"),
        ({"gopher_repetition": {"top_n_grams": {2: 1.5}}}, "top_n_grams: entry 2"),
        ({"toxicity": {"method": "classifier"}}, "needs classifier"),
        ({"toxicity": {"mode": "reverse"}}, "data.filters.toxicity.mode"),
        ({"age": {"reference_date": "soon"}}, "reference_date must be an ISO date"),
        ({"language": {"languages": ["English"]}}, "data.filters.language.languages.0"),
        ({"fineweb": {"line_punct_thr": "0.1"}}, "data.filters.fineweb.line_punct_thr"),
        ({"min_doc_words": 50}, r"data.filters.min_doc_words: unknown key"),
    ]
    for section, msg in bad:
        raw = json.loads(json.dumps(tiny_raw))
        raw["data"]["filters"] = section
        with pytest.raises(ParamsError, match=msg):
            parse_params(raw)
    assert C4Config().filter_no_terminal_punct is False  # FineWeb's recipe


def test_params_yaml_filters_section_parses():
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    cfg = FilterConfig.model_validate(raw["data"]["filters"])
    assert cfg.language.languages == ["en"] and cfg.toxicity.mode == "drop"


def test_pii_leaves_software_versions_and_redacts_addresses():
    text = ("Fixed in version 4.1.1.24 and in 8.11.1 and 8.12.0.1; Tenda W9 1.0.0.7(4456) and IBM 7.6.1.3 through 7.6.1.5 "
            "are affected. The implant connects to 81.2.69.160 to exfiltrate, scanning from 10.0.0.1 to 10.0.0.2.")
    new, stats = _texts(PIIRedactor(), [text])
    for version in ("4.1.1.24", "8.12.0.1", "1.0.0.7(4456)", "7.6.1.3 through 7.6.1.5"):
        assert version in new[0]
    for address in ("81.2.69.160", "10.0.0.1", "10.0.0.2"):
        assert address not in new[0]
    assert stats["pii_ips"] == 3


def test_line_cleaning_never_empties_content_and_rejected_rows_keep_the_original_text():
    from fluxforge.data.filters import strip_boilerplate

    advisory = "The login page of Acme Portal 2.1 lets a remote attacker run JavaScript in the admin session."
    nav = "Home | News | About us | Contact | Login"
    new, removed = strip_boilerplate(pd.Series([advisory, nav + "\n" + advisory, "Please enable JavaScript."]))
    assert list(new) == [advisory, advisory, ""] and list(removed) == [0, 1, 1]
    df = pd.DataFrame({"id": ["a", "b"], "text": [advisory * 6, "Please enable JavaScript."], "url": "https://a.org/",
                       "timestamp": pd.Timestamp("2024-01-01", tz="UTC"), "source": "s", "domain": "cyber", "meta": "{}"})
    kept, rejected, _ = apply_filters(df, FilterConfig())
    row = rejected.set_index("id").loc["b"]
    assert row["reason"] == "boilerplate:empty_after_cleaning" and row["text"] == "Please enable JavaScript."
    assert len(kept) + len(rejected) == 2


def test_each_filter_section_builds_its_step_and_the_section_set_builds_the_chain():
    """config/ stays below data/: the steps register as builders of their sections (config.builds)."""
    from fluxforge.config import DedupConfig, FilterConfig, ParamsError
    from fluxforge.data.filters.chain import STEPS, Chain

    cfg = FilterConfig()
    for name, step in STEPS.items():
        built = getattr(cfg, name).build()
        assert type(built) is step and built.cfg is getattr(cfg, name)
    chain = cfg.build()
    assert isinstance(chain, Chain) and [type(s) for s in chain.steps] == [s for n, s in STEPS.items() if getattr(cfg, n).enabled]
    with pytest.raises(ParamsError, match="DedupConfig builds nothing"):
        DedupConfig().build()
