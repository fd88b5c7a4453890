"""MeCo (metadata conditioning then cooldown): methods.md section 1, tests 1, 2, 3 and 5.

A real byte-level BPE tokenizer (trained here on a few texts) and the real tokenize stage;
the reference conditioned stream is built document by document, independently of the
vectorised ``condition_stream``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fluxforge.data.tokenize import encode_stream, short_url, short_urls, train_tokenizer
from fluxforge.errors import DataError
from fluxforge.train.meco import (
    IGNORE_INDEX,
    KEEP_LAST_LABELS,
    METADATA_PREFIX,
    METADATA_SUFFIX,
    condition_stream,
    conditional_prompt,
    cooldown_start,
    load_conditioned,
    masked_causal_lm_loss,
    meco_labels,
    metadata_prefix,
)
from fluxforge.train.sampler import MixtureSampler

TEXTS = [
    "The cat sat on the mat and looked at the garden.",
    "Quarterly revenue rose as the company shipped new routers.",
    "A buffer overflow in the parser lets an attacker run code.",
    "Wikipedia is a free online encyclopedia written by volunteers.",
    "Patch the server before the weekend, the advisory says.",
    "Rain is expected in the north; the south stays dry and warm.",
]
HOSTS = ["en.wikipedia.org", "", "nvd.nist.gov", "en.wikipedia.org", "www.factcheckfun.com", "news.example.co.uk"]


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return train_tokenizer(TEXTS * 3 + [metadata_prefix(h) for h in HOSTS], vocab_size=300)


def encoder(tok):  # noqa: ANN001, ANN201
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def reference(tok, texts: list[str], hosts: list[str]) -> tuple[list[int], list[bool]]:  # noqa: ANN001
    """MeCo's packer, one document at a time: meta = encode(prefix+host+suffix), mask False on it."""
    ids, mask = [], []
    for text, host in zip(texts, hosts, strict=True):
        meta = encoder(tok)(METADATA_PREFIX + host + METADATA_SUFFIX) if host else []
        doc = encoder(tok)(text) + [tok.eos_token_id]
        ids += meta + doc
        mask += [False] * len(meta) + [True] * len(doc)
    return ids, mask


# ----------------------------------------------------------------------------- test 5: short URL
@pytest.mark.parametrize("url,host", [
    ("https://en.wikipedia.org/wiki/X", "en.wikipedia.org"),
    ("http://www.factcheckfun.com", "www.factcheckfun.com"),
    ("https://nvd.nist.gov/vuln/detail/CVE-2024-1?x=1", "nvd.nist.gov"),
    ("HTTPS://Example.com?q=1#frag", "Example.com"),
    ("en.wikipedia.org/wiki/Y", "en.wikipedia.org"),
    ("s3://bucket/key.jsonl#3", "bucket"),
    ("file:///data/x.jsonl#3", ""),  # a local file has no host: no metadata
    ("", ""),
    (None, ""),
])
def test_short_url_keeps_the_host(url, host):  # noqa: ANN001
    assert short_url(url) == host
    assert short_urls([url]) == [host]  # the stage's vectorised version agrees


def test_metadata_template_and_conditional_prompt():
    assert metadata_prefix("en.wikipedia.org") == "URL: en.wikipedia.org\n\n"
    assert conditional_prompt("The capital", "https://en.wikipedia.org/wiki/X") == "URL: en.wikipedia.org\n\nThe capital"
    with pytest.raises(ValueError, match="no host"):
        conditional_prompt("The capital", "")


# ----------------------------------------------------------------------------- conditioning the stream
def test_condition_stream_equals_the_per_document_packer(tok):
    stream = encode_stream(tok, TEXTS)
    tokens, mask = condition_stream(stream, HOSTS, tok.eos_token_id, encoder(tok))
    ref_ids, ref_mask = reference(tok, TEXTS, HOSTS)
    assert tokens.tolist() == ref_ids and mask.tolist() == ref_mask
    assert tokens.dtype == stream.dtype and mask.dtype == bool
    # the metadata reads back as the template, the documents as themselves
    docs = tok.decode(tokens.tolist()).split("<|endoftext|>")[:-1]
    assert docs == [(metadata_prefix(h) if h else "") + t for t, h in zip(TEXTS, HOSTS)]
    assert tok.decode(tokens[mask].tolist()) == tok.decode(stream.tolist())  # trained tokens = the plain stream


def test_metadata_is_encoded_in_one_call(tok):
    """Each prefix is encode(prefix+host+suffix); e.g. the '\\n\\n' may merge with the host's last bytes."""
    stream = encode_stream(tok, TEXTS[:1])
    tokens, mask = condition_stream(stream, HOSTS[:1], tok.eos_token_id, encoder(tok))
    assert tokens[~mask].tolist() == encoder(tok)("URL: en.wikipedia.org\n\n")


def test_eos_and_hosts_counts_must_match(tok):
    stream = encode_stream(tok, TEXTS)
    with pytest.raises(DataError, match=rf"holds {len(TEXTS)} documents .* {len(TEXTS) - 1} hosts"):
        condition_stream(stream, HOSTS[:-1], tok.eos_token_id, encoder(tok))
    with pytest.raises(DataError, match="not EOS"):  # a truncated stream: the last document has no EOS
        condition_stream(stream[:-1], HOSTS[:-1], tok.eos_token_id, encoder(tok))


# ----------------------------------------------------------------------------- test 1: labels over batches
def windows(tokens: np.ndarray, mask: np.ndarray, seq_len: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of seq_len+1 tokens and their masks at the same random starts (what the sampler must do)."""
    starts = np.random.default_rng(seed).integers(0, len(tokens) - seq_len, size=n)
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    masks = np.stack([mask[s : s + seq_len + 1] for s in starts])
    return torch.from_numpy(rows), torch.from_numpy(masks)


def test_labels_ignore_exactly_the_metadata_of_each_document(tok):
    """methods.md test 1. The previous EOS plays MeCo's BOS: it stays a target (it ends the previous document)."""
    tokens, mask = condition_stream(encode_stream(tok, TEXTS), HOSTS, tok.eos_token_id, encoder(tok))
    is_meta = np.zeros(len(tokens), dtype=bool)
    start = 0
    for text, host in zip(TEXTS, HOSTS):  # [start, start + len(meta)) of each document, from the packer's layout
        n_meta = len(encoder(tok)(metadata_prefix(host))) if host else 0
        is_meta[start : start + n_meta] = True
        start += n_meta + len(encoder(tok)(text)) + 1
    assert start == len(tokens) and is_meta.sum() > 0

    rows, masks = windows(tokens, mask, seq_len=12, n=64, seed=0)
    labels = meco_labels(rows[:, 1:], masks[:, 1:])
    starts = np.random.default_rng(0).integers(0, len(tokens) - 12, size=64)
    meta_targets = torch.from_numpy(np.stack([is_meta[s + 1 : s + 13] for s in starts]))
    normal = ~meta_targets.all(dim=1)  # rows not entirely inside a URL prefix
    assert normal.sum() > 0 and meta_targets[normal].any()
    assert torch.equal(labels[normal] == IGNORE_INDEX, meta_targets[normal])
    assert torch.equal(labels[normal][~meta_targets[normal]], rows[:, 1:][normal][~meta_targets[normal]])
    eos_targets = rows[:, 1:] == tok.eos_token_id
    assert eos_targets.any() and (labels[eos_targets] == tok.eos_token_id).all()  # separators are trained


def test_a_row_of_metadata_only_keeps_its_last_labels():
    """MeCo data.py: an all-masked sequence keeps its last 10 labels so the loss is never NaN."""
    targets = torch.arange(30).reshape(2, 15)
    mask = torch.zeros(2, 15, dtype=torch.bool)
    mask[1, 3] = True
    labels = meco_labels(targets, mask)
    assert labels[0, :-KEEP_LAST_LABELS].eq(IGNORE_INDEX).all() and torch.equal(labels[0, -KEEP_LAST_LABELS:], targets[0, -KEEP_LAST_LABELS:])
    assert (labels[1] != IGNORE_INDEX).sum() == 1 and labels[1, 3] == targets[1, 3]  # other rows untouched
    logits = torch.randn(2, 15, 7)
    assert torch.isfinite(masked_causal_lm_loss(logits, targets % 7, torch.zeros(2, 15, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"mask\[:, 1:\]"):
        meco_labels(targets, mask[:, 1:])


# ----------------------------------------------------------------------------- test 2: the masked loss
def test_masked_loss_is_cross_entropy_over_document_tokens_only(tok):
    tokens, mask = condition_stream(encode_stream(tok, TEXTS), HOSTS, tok.eos_token_id, encoder(tok))
    rows, masks = windows(tokens, mask, seq_len=16, n=8, seed=1)
    targets, tmask = rows[:, 1:], masks[:, 1:]
    assert tmask.any(dim=1).all() and not tmask.all()
    logits = torch.randn(*targets.shape, len(tok), generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[..., None])[..., 0]
    expected = -logp[tmask].mean()
    got = masked_causal_lm_loss(logits, targets, tmask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # the metadata really is left out: making its targets very unlikely moves the plain loss, not this one
    worse = logits.clone()
    worse[~tmask] = worse[~tmask].scatter(-1, targets[~tmask][:, None], -30.0)
    assert masked_causal_lm_loss(worse, targets, tmask).item() == pytest.approx(got.item(), rel=1e-6)
    plain = [F.cross_entropy(x.reshape(-1, len(tok)), targets.reshape(-1)).item() for x in (logits, worse)]
    assert plain[1] > plain[0] + 1.0


def test_changing_the_url_does_not_change_the_targets(tok):
    stream = encode_stream(tok, TEXTS)
    other = ["www.factcheckfun.com", "", "factquizmaster.com", "x.org", "en.wikipedia.org", "nvd.nist.gov"]
    a_tok, a_mask = condition_stream(stream, HOSTS, tok.eos_token_id, encoder(tok))
    b_tok, b_mask = condition_stream(stream, other, tok.eos_token_id, encoder(tok))
    assert not np.array_equal(a_tok, b_tok)  # the inputs differ ...
    assert np.array_equal(a_tok[a_mask], b_tok[b_mask])  # ... the trained targets do not
    assert np.array_equal(a_tok[a_mask], stream)


# ----------------------------------------------------------------------------- test 3: the cooldown
def test_cooldown_start():
    assert cooldown_start(40000, 0.1) == 36000  # MeCo: stage 2 resumes from checkpoint-36000 of 40000
    assert cooldown_start(40000) == 36000
    assert cooldown_start(100, 0.2) == 80
    assert cooldown_start(5, 0.1) == 4  # 0.5 step rounds to one cooldown step, never to none
    assert cooldown_start(10, 0.0) == 10  # no cooldown
    for steps, frac in ((0, 0.1), (10, 1.0), (10, -0.1), (1, 0.1)):
        with pytest.raises(ValueError):
            cooldown_start(steps, frac)


def test_no_batch_after_the_switch_contains_the_url_prefix(tok):
    """methods.md test 3: conditioned windows (with their masks) before cooldown_start, plain ones after."""
    from fluxforge.train.sampler import PhasedSampler

    plain = encode_stream(tok, TEXTS * 4)
    cond, mask = condition_stream(plain, HOSTS * 4, tok.eos_token_id, encoder(tok))
    steps = 50
    switch = cooldown_start(steps, 0.1)
    assert switch == 45
    sampler = PhasedSampler(MixtureSampler({"s": cond}, {"s": 1.0}, seq_len=24, batch_size=4, seed=0, masks={"s": mask}),
                            MixtureSampler({"s": plain}, {"s": 1.0}, seq_len=24, batch_size=4, seed=0), switch)
    batches = [sampler.batch(step) for step in range(steps)]
    texts = [tok.decode(b.tokens.flatten().tolist()) for b in batches]
    assert not any("URL:" in t for t in texts[switch:])
    assert all(b.loss_mask is None for b in batches[switch:])  # cooldown: every token is a target again
    assert sum("URL:" in t for t in texts[:switch]) > switch // 2  # and the metadata phase does show it
    assert all(not b.loss_mask.all() for b, t in zip(batches[:switch], texts) if "URL:" in t)


# ----------------------------------------------------------------------------- the tokenize stage's hosts file
def curated(n: int = 30) -> pd.DataFrame:
    urls = [f"https://{h}/page/{i}" if h else "" for i, h in enumerate((HOSTS * n)[:n])]
    urls[7] = None  # a source without URLs
    return pd.DataFrame({
        "id": [f"d{i:03d}" for i in range(n)],
        "text": [f"Document {i}: {TEXTS[i % len(TEXTS)]}" for i in range(n)],
        "source": "test", "url": urls,
        "timestamp": pd.to_datetime([f"{2021 + i % 2}-0{1 + (n - i) % 9}-01" for i in range(n)], utc=True),
        "domain": "general", "meta": "{}",
    })


def test_tokenize_stage_writes_aligned_hosts(in_tmp, tiny_params):  # noqa: ANN001
    from stages.tokenize import main as tokenize

    from fluxforge import paths as P
    from fluxforge.data.documents import write_docs
    from fluxforge.data.tokenize import load_tokenizer

    docs = curated()
    P.CURATED.mkdir(parents=True)
    write_docs(docs, P.CURATED / "curated.parquet")
    tokenize.run(tiny_params)

    index = json.loads((P.TOKENS / "index.json").read_text())
    host_of = {t: short_url(u) for t, u in zip(docs["text"], docs["url"])}
    assert set(index["slices"]) == {"general-2021", "general-2022"}
    stage_tok = load_tokenizer(P.TOKENS)
    tokens, masks = load_conditioned(P.TOKENS, sorted(index["slices"]), stage_tok)
    for name, meta in index["slices"].items():
        hosts = json.loads((P.TOKENS / meta["hosts"]).read_text())
        assert meta["hosts"] == f"{name}.hosts.json" and len(hosts) == meta["docs"]
        plain = np.fromfile(P.TOKENS / meta["file"], dtype=meta["dtype"])
        texts = stage_tok.decode(plain.tolist()).split("<|endoftext|>")[:-1]
        assert hosts == [host_of[t] for t in texts]  # aligned with the stream's documents, in order
        conditioned = stage_tok.decode(tokens[name].tolist()).split("<|endoftext|>")[:-1]
        assert conditioned == [(metadata_prefix(host_of[t]) if host_of[t] else "") + t for t in texts]
        assert np.array_equal(tokens[name][masks[name]], plain)
    assert "" in sum((json.loads((P.TOKENS / m["hosts"]).read_text()) for m in index["slices"].values()), [])

    # an older tokens directory without hosts files: a clear error naming the slice and the fix
    del index["slices"]["general-2021"]["hosts"]
    (P.TOKENS / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="general-2021.*re-run the tokenize stage"):
        load_conditioned(P.TOKENS, ["general-2021"], stage_tok)
